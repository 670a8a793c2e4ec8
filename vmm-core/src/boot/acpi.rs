//! ACPI tables: RSDP, XSDT, FADT, FACS, MADT and a DSDT with the platform's devices.
//!
//! The platform is full (not hardware-reduced) ACPI: the PM1a event and control blocks
//! and the PM timer sit on I/O ports, the SCI is ISA IRQ 9, power-off is S5 through
//! PM1a_CNT, the power button is the fixed-feature one, and reset goes through the FADT
//! reset register (port 0xCF9). That is the model Linux and every other ACPI OS handle
//! without any AML interpreter help, and the one our test guest drives.
//!
//! PCI hotplug of bus 0 is QEMU's pc machine's, so that Linux's acpiphp takes it as it
//! does there: GPE0 at QEMU's ports, whose event 1 runs \_GPE._E01, which reads the
//! hotplug controller (devices/pci/hotplug.rs) and notifies the slots' devices.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::gpe;
use crate::devices::pci::FIXED_SLOTS;
use crate::devices::pci::SLOTS;
use crate::layout::{
    ports, ACPI_TABLES, ACPI_TABLES_END, IOAPIC, LAPIC, PCI_ECAM, PCI_ECAM_SIZE, PCI_MMIO_END,
    PCI_MMIO_START,
};

const OEM_ID: [u8; 6] = *b"FLOTIL";
const OEM_TABLE_ID: [u8; 8] = *b"FLOTILLA";
const OEM_REVISION: u32 = 1;

/// The most vCPUs the MADT can describe with xAPIC ids (0xff is broadcast).
pub const MAX_XAPIC_CPUS: usize = 255;

/// SLP_TYP value the DSDT's \_S5 announces and PM1a_CNT recognises as "power off".
pub const SLP_TYP_S5: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes, only {available} are reserved for them")]
    TooLarge { needed: u64, available: u64 },
    #[error("writing ACPI tables to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
    #[error("{0} vCPUs cannot be described with xAPIC ids (at most {MAX_XAPIC_CPUS})")]
    TooManyCpus(usize),
}

/// Serialised tables, each with the guest address it was laid out for.
pub struct AcpiTables {
    pub rsdp: GuestAddress,
    pub tables: Vec<(GuestAddress, Vec<u8>)>,
}

impl AcpiTables {
    /// Lays out every table for `cpus` vCPUs starting at `ACPI_TABLES`.
    pub fn build(cpus: usize) -> Result<Self, AcpiError> {
        if cpus > MAX_XAPIC_CPUS {
            return Err(AcpiError::TooManyCpus(cpus));
        }
        let mut layout = Layout::new(ACPI_TABLES);
        let rsdp_addr = layout.take(Rsdp::len() as u64, 16);
        let facs_addr = layout.take(acpi_tables::facs::FACS::len() as u64, 64);
        let dsdt = dsdt();
        let dsdt_addr = layout.take(dsdt.len() as u64, 16);
        let fadt = to_bytes(&fadt(facs_addr, dsdt_addr));
        let fadt_addr = layout.take(fadt.len() as u64, 16);
        let madt = madt(cpus);
        let madt_addr = layout.take(madt.len() as u64, 16);
        let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        // Bus 0 only: the ECAM window holds exactly one bus.
        mcfg.add_ecam(PCI_ECAM, 0, 0, 0);
        let mcfg = to_bytes(&mcfg);
        let mcfg_addr = layout.take(mcfg.len() as u64, 16);
        let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        xsdt.add_entry(fadt_addr);
        xsdt.add_entry(madt_addr);
        xsdt.add_entry(mcfg_addr);
        let xsdt = to_bytes(&xsdt);
        let xsdt_addr = layout.take(xsdt.len() as u64, 16);
        if layout.next > ACPI_TABLES_END {
            return Err(AcpiError::TooLarge {
                needed: layout.next - ACPI_TABLES,
                available: ACPI_TABLES_END - ACPI_TABLES,
            });
        }
        let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
        let facs = to_bytes(&acpi_tables::facs::FACS::new());
        let tables = vec![
            (GuestAddress(rsdp_addr), rsdp),
            (GuestAddress(facs_addr), facs),
            (GuestAddress(dsdt_addr), dsdt.as_slice().to_vec()),
            (GuestAddress(fadt_addr), fadt),
            (GuestAddress(madt_addr), madt.as_slice().to_vec()),
            (GuestAddress(mcfg_addr), mcfg),
            (GuestAddress(xsdt_addr), xsdt),
        ];
        Ok(AcpiTables {
            rsdp: GuestAddress(rsdp_addr),
            tables,
        })
    }

    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<(), AcpiError> {
        for (addr, bytes) in &self.tables {
            mem.write_slice(bytes, *addr)?;
        }
        Ok(())
    }
}

struct Layout {
    next: u64,
}

impl Layout {
    fn new(start: u64) -> Self {
        Layout { next: start }
    }

    fn take(&mut self, len: u64, align: u64) -> u64 {
        let addr = self.next.next_multiple_of(align);
        self.next = addr + len;
        addr
    }
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn io_gas(port: u16, len: u8) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        len * 8,
        0,
        AccessSize::Undefined,
        port.into(),
    )
}

fn fadt(facs: u64, dsdt: u64) -> acpi_tables::fadt::FADT {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        // Fixed-feature power button (PWR_BUTTON clear), no sleep button.
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::TmrValExt)
        .flag(Flags::ResetRegSup);
    // Both DSDT pointers, equal, so 32-bit-only readers work too.
    f.dsdt = (dsdt as u32).into();
    f.x_dsdt = dsdt.into();
    f.firmware_ctrl = (facs as u32).into();
    f.sci_int = (ports::SCI_IRQ as u16).into();
    // SMI_CMD = 0: ACPI mode is always on (SCI_EN reads as set).
    f.pm1a_evt_blk = u32::from(ports::PM1A_EVT).into();
    f.pm1a_cnt_blk = u32::from(ports::PM1A_CNT).into();
    f.pm_tmr_blk = u32::from(ports::PM_TMR).into();
    f.pm1_evt_len = ports::PM1_EVT_LEN;
    f.pm1_cnt_len = ports::PM1_CNT_LEN;
    f.pm_tmr_len = ports::PM_TMR_LEN;
    f.x_pm1a_evt_blk = io_gas(ports::PM1A_EVT, ports::PM1_EVT_LEN);
    f.x_pm1a_cnt_blk = io_gas(ports::PM1A_CNT, ports::PM1_CNT_LEN);
    f.x_pm_tmr_blk = io_gas(ports::PM_TMR, ports::PM_TMR_LEN);
    // GPE0: PCI hotplug's event (bit 1), at QEMU's pc machine's ports.
    f.gpe0_blk = u32::from(ports::GPE0_BLK).into();
    f.gpe0_blk_len = ports::GPE0_BLK_LEN;
    f.x_gpe0_blk = io_gas(ports::GPE0_BLK, ports::GPE0_BLK_LEN);
    // C2/C3 not supported (latencies above the spec's limits).
    f.p_lvl2_lat = 101.into();
    f.p_lvl3_lat = 1001.into();
    // IA-PC boot architecture: legacy (ISA) devices present (COM1); no 8042 to probe
    // (only its reset line exists), no VGA, no CMOS RTC.
    const LEGACY_DEVICES: u16 = 1 << 0;
    const VGA_NOT_PRESENT: u16 = 1 << 2;
    const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
    f.iapc_boot_arch = (LEGACY_DEVICES | VGA_NOT_PRESENT | CMOS_RTC_NOT_PRESENT).into();
    f.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        ports::RESET_CONTROL.into(),
    );
    f.reset_value = crate::devices::reset_control::FULL_RESET;
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"FLOTILLA").into();
    f.finalize()
}

const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: active high (01), level triggered (11 << 2).
const INTI_ACTIVE_HIGH_LEVEL: u16 = 0b1101;

fn madt(cpus: usize) -> Sdt {
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, LAPIC as u32);
    t.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..cpus {
        // Processor UID and APIC id are both the vCPU index; flags: enabled.
        t.append_slice(&[MADT_LOCAL_APIC, 8, id as u8, id as u8, 1, 0, 0, 0]);
    }
    let mut ioapic = vec![MADT_IO_APIC, 12, 0, 0];
    ioapic.extend_from_slice(&(IOAPIC as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    t.append_slice(&ioapic);
    // The SCI is level triggered, active high (ISA default would be edge).
    let mut iso = vec![MADT_INTERRUPT_OVERRIDE, 10, 0, ports::SCI_IRQ as u8];
    iso.extend_from_slice(&ports::SCI_IRQ.to_le_bytes());
    iso.extend_from_slice(&INTI_ACTIVE_HIGH_LEVEL.to_le_bytes());
    t.append_slice(&iso);
    // LINT1 of every processor is wired to NMI.
    t.append_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    t
}

/// A device with a PNP id, a unique id and its current resources, as AML bytes.
fn pnp_device(name: &str, hid: &str, uid: u8, resources: Vec<&dyn Aml>) -> Vec<u8> {
    to_bytes(&aml::Device::new(
        name.into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new(hid)),
            &aml::Name::new("_UID".into(), &uid),
            &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(resources)),
        ],
    ))
}

/// The PCI host bridge: bus 0, the configuration ports, and the windows BARs live in.
fn pci_root() -> Vec<u8> {
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let config_ports = aml::IO::new(
        ports::PCI_CONFIG_ADDRESS,
        ports::PCI_CONFIG_ADDRESS,
        1,
        ports::PCI_CONFIG_LEN as u8,
    );
    let io_low = aml::AddressSpace::new_io(0u16, ports::PCI_CONFIG_ADDRESS - 1, None);
    let io_high = aml::AddressSpace::new_io(
        ports::PCI_CONFIG_ADDRESS + ports::PCI_CONFIG_LEN,
        0xffffu16,
        None,
    );
    let mmio = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (PCI_MMIO_END - 1) as u32,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &config_ports, &io_low, &io_high, &mmio]);
    to_bytes(&aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &crs),
            &Raw(pci_hotplug()),
        ],
    ))
}

/// AML already serialised, as a child of another object.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// The name QEMU gives the device of a bus-0 slot: S, then its devfn in hex ("S08" for
/// slot 1; AML pads names to 4 characters).
fn slot_name(slot: usize) -> String {
    format!("S{:02X}_", slot << 3)
}

fn slot_hotpluggable(slot: usize) -> bool {
    FIXED_SLOTS & (1 << slot) == 0
}

/// ACPI PCI hotplug of bus 0, as QEMU's pc machine describes it (inside PCI0): the
/// controller's registers (devices/pci/hotplug.rs), a device per slot that ejects
/// through PCEJ, and PCNT, which \_GPE._E01 runs: it notifies each slot PCIU names
/// with "device check" (1) and each PCID names with "eject request" (3).
fn pci_hotplug() -> Vec<u8> {
    use aml::{FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, OpRegionSpace};
    let mut out = Vec::new();
    let base = u32::from(ports::PCI_HOTPLUG);
    let len = u32::from(ports::PCI_HOTPLUG_LEN);
    aml::OpRegion::new("PCHP".into(), OpRegionSpace::SystemIO, &base, &len).to_aml_bytes(&mut out);
    let fields = [*b"PCIU", *b"PCID", *b"B0EJ", *b"PCRM", *b"BNUM"];
    aml::Field::new(
        "PCHP".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        fields.iter().map(|f| FieldEntry::Named(*f, 32)).collect(),
    )
    .to_aml_bytes(&mut out);
    // BNUM then B0EJ is one eject: the lock keeps two apart.
    aml::Mutex::new("BLCK".into(), 0).to_aml_bytes(&mut out);
    // PCEJ(bus, slot): eject `slot` of `bus`.
    let b0ej = aml::Path::new("B0EJ");
    let bnum = aml::Path::new("BNUM");
    let slot_mask = aml::ShiftLeft::new(&b0ej, &aml::ONE, &aml::Arg(1));
    let select = aml::Store::new(&bnum, &aml::Arg(0));
    aml::Method::new(
        "PCEJ".into(),
        2,
        false,
        vec![
            &aml::Acquire::new("BLCK".into(), 0xffff),
            &select,
            &slot_mask,
            &aml::Release::new("BLCK".into()),
            &aml::Return::new(&aml::ZERO),
        ],
    )
    .to_aml_bytes(&mut out);
    let sun_path = aml::Path::new("_SUN");
    for slot in 0..SLOTS {
        let adr = (slot as u32) << 16;
        let sun = slot as u8;
        let adr = aml::Name::new("_ADR".into(), &adr);
        let sun = aml::Name::new("_SUN".into(), &sun);
        let eject_call = aml::MethodCall::new("PCEJ".into(), vec![&aml::ZERO, &sun_path]);
        let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&eject_call]);
        let children: Vec<&dyn Aml> = match slot_hotpluggable(slot) {
            true => vec![&adr, &sun, &ej0],
            // Part of the machine: described, never ejected.
            false => vec![&adr],
        };
        aml::Device::new(slot_name(slot).as_str().into(), children).to_aml_bytes(&mut out);
    }
    // DVNT(slots, event): Notify(Sxx, event) for each slot in the bitmap.
    let slots: Vec<(u32, aml::Path)> = (0..SLOTS)
        .filter(|&s| slot_hotpluggable(s))
        .map(|s| (1u32 << s, aml::Path::new(&slot_name(s))))
        .collect();
    let tests: Vec<(aml::And, aml::Notify)> = slots
        .iter()
        .map(|(mask, name)| {
            (
                aml::And::new(&aml::ZERO, &aml::Arg(0), mask),
                aml::Notify::new(name, &aml::Arg(1)),
            )
        })
        .collect();
    let ifs: Vec<aml::If> = tests
        .iter()
        .map(|(and, notify)| aml::If::new(and, vec![notify]))
        .collect();
    aml::Method::new(
        "DVNT".into(),
        2,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    )
    .to_aml_bytes(&mut out);
    const DEVICE_CHECK: u8 = 1;
    const EJECT_REQUEST: u8 = 3;
    let (pciu, pcid) = (aml::Path::new("PCIU"), aml::Path::new("PCID"));
    let up = aml::MethodCall::new("DVNT".into(), vec![&pciu, &DEVICE_CHECK]);
    let down = aml::MethodCall::new("DVNT".into(), vec![&pcid, &EJECT_REQUEST]);
    let bus0 = aml::Store::new(&bnum, &aml::ZERO);
    aml::Method::new("PCNT".into(), 0, false, vec![&bus0, &up, &down]).to_aml_bytes(&mut out);
    out
}

/// \_GPE: the methods ACPICA runs for general-purpose events, \_E01 for PCI hotplug
/// (the event the controller raises).
fn gpe_scope() -> Vec<u8> {
    let name = format!("_E{:02X}", gpe::PCI_HOTPLUG);
    let pcnt = aml::MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    to_bytes(&aml::Scope::new(
        "\\_GPE".into(),
        vec![&aml::Method::new(
            name.as_str().into(),
            0,
            false,
            vec![
                &aml::Acquire::new("\\_SB_.PCI0.BLCK".into(), 0xffff),
                &pcnt,
                &aml::Release::new("\\_SB_.PCI0.BLCK".into()),
            ],
        )],
    ))
}

fn dsdt() -> Sdt {
    let mut t = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut devices = pnp_device(
        "COM1",
        "PNP0501",
        1,
        vec![
            &aml::IO::new(ports::COM1, ports::COM1, 1, 8),
            &aml::Interrupt::new(true, true, false, false, ports::COM1_IRQ),
        ],
    );
    // Claims the ports of the PM block and the reset register, and the ECAM window
    // (Linux trusts MMCONFIG only when firmware reserves it), so no OS hands them out.
    devices.extend(pnp_device(
        "MBRD",
        "PNP0C02",
        0,
        vec![
            &aml::IO::new(ports::PM_BASE, ports::PM_BASE, 1, ports::PM_BLOCK_LEN as u8),
            &aml::IO::new(ports::RESET_CONTROL, ports::RESET_CONTROL, 1, 1),
            &aml::IO::new(ports::GPE0_BLK, ports::GPE0_BLK, 1, ports::GPE0_BLK_LEN),
            &aml::IO::new(
                ports::PCI_HOTPLUG,
                ports::PCI_HOTPLUG,
                1,
                ports::PCI_HOTPLUG_LEN as u8,
            ),
            &aml::Memory32Fixed::new(false, PCI_ECAM as u32, PCI_ECAM_SIZE as u32),
        ],
    ));
    devices.extend(pci_root());
    t.append_slice(&aml::Scope::raw("\\_SB_".into(), devices));
    t.append_slice(&gpe_scope());
    // \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved.
    aml::Name::new(
        "\\_S5_".into(),
        &aml::Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut t);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn every_table_checksums_and_fits() {
        let t = AcpiTables::build(2).unwrap();
        for (addr, bytes) in &t.tables {
            match &bytes[..4] {
                // The FACS has no checksum.
                b"FACS" => {}
                // The RSDP has one over its first 20 bytes and one over all 36.
                b"RSD " => {
                    assert!(checksum_ok(&bytes[..20]));
                    assert!(checksum_ok(bytes));
                }
                sig => assert!(checksum_ok(bytes), "{sig:?} at {addr:?}"),
            }
            assert!(addr.0 + bytes.len() as u64 <= ACPI_TABLES_END);
        }
        assert_eq!(t.rsdp, GuestAddress(ACPI_TABLES));
    }

    #[test]
    fn madt_lists_every_cpu() {
        let madt = madt(4);
        let body = &madt.as_slice()[44..];
        let lapics = body
            .chunks(8)
            .take_while(|c| c[0] == MADT_LOCAL_APIC)
            .map(|c| c[3])
            .collect::<Vec<_>>();
        assert_eq!(lapics, vec![0, 1, 2, 3]);
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert!(matches!(
            AcpiTables::build(256),
            Err(AcpiError::TooManyCpus(256))
        ));
    }

    #[test]
    fn the_fadt_announces_the_gpe0_block() {
        let f = to_bytes(&fadt(0, 0));
        let u32_at = |off: usize| u32::from_le_bytes(f[off..off + 4].try_into().unwrap());
        // GPE0_BLK, GPE0_BLK_LEN, and X_GPE0_BLK: system I/O, 32 bits, at the same port.
        assert_eq!(u32_at(80), 0xafe0);
        assert_eq!(f[92], 4);
        assert_eq!((f[220], f[221]), (1, 32));
        assert_eq!(u64::from_le_bytes(f[224..232].try_into().unwrap()), 0xafe0);
    }

    /// A scratch directory, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn iasl() -> std::path::PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join("iasl"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "missing `iasl`: install the Debian package acpica-tools (scripts/setup does)"
                )
            })
    }

    /// Runs iasl in `dir`; its output, which must say it succeeded.
    fn run_iasl(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new(iasl())
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running iasl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl {args:?}: {text}");
        text
    }

    /// The AML of one `Device (name)` as iasl prints it, up to the next device.
    fn device<'a>(dsl: &'a str, name: &str) -> &'a str {
        let at = dsl
            .find(&format!("Device ({name})"))
            .unwrap_or_else(|| panic!("no Device ({name}) in:\n{dsl}"));
        let rest = &dsl[at + 1..];
        &dsl[at..at + 1 + rest.find("Device (").unwrap_or(rest.len())]
    }

    #[test]
    fn the_dsdt_describes_pci_hotplug_as_qemu_does_and_iasl_takes_it() {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            Scratch(std::env::temp_dir().join(format!("flotilla-dsdt-{}-{n}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join("dsdt.dat"), dsdt().as_slice()).unwrap();
        let text = run_iasl(&dir.0, &["-d", "dsdt.dat"]);
        for bad in ["error", "warning", "invalid", "checksum"] {
            assert!(
                !text.to_lowercase().contains(bad),
                "iasl -d says {bad}: {text}"
            );
        }
        let dsl = std::fs::read_to_string(dir.0.join("dsdt.dsl")).unwrap();
        assert!(
            dsl.contains("OperationRegion (PCHP, SystemIO, 0xAE00, 0x14)"),
            "{dsl}"
        );
        for field in [
            "PCIU,   32",
            "PCID,   32",
            "B0EJ,   32",
            "PCRM,   32",
            "BNUM,   32",
        ] {
            assert!(dsl.contains(field), "{field} missing:\n{dsl}");
        }
        // The host bridge's slot is described but cannot be ejected or notified.
        let s00 = device(&dsl, "S00");
        assert!(
            s00.contains("Name (_ADR, Zero)") && !s00.contains("_EJ0"),
            "{s00}"
        );
        assert!(!dsl.contains("Notify (S00"), "{dsl}");
        // QEMU's names and numbers: S08 is slot 1, SF8 slot 31.
        let s08 = device(&dsl, "S08");
        for want in [
            "_ADR, 0x00010000",
            "_SUN, One",
            "Method (_EJ0, 1",
            "PCEJ (Zero, _SUN)",
        ] {
            assert!(s08.contains(want), "{want} missing from {s08}");
        }
        let sf8 = device(&dsl, "SF8");
        assert!(
            sf8.contains("_ADR, 0x001F0000") && sf8.contains("_SUN, 0x1F"),
            "{sf8}"
        );
        assert_eq!(dsl.matches("Method (_EJ0, 1").count(), 31);
        assert_eq!(dsl.matches("Notify (S").count(), 31);
        assert!(dsl.contains("If ((Arg0 & 0x80000000))\n"), "{dsl}");
        for want in [
            "B0EJ = (One << Arg1)",
            "DVNT (PCIU, One)",
            "DVNT (PCID, 0x03)",
            "Method (_E01, 0",
            "\\_SB.PCI0.PCNT ()",
        ] {
            assert!(dsl.contains(want), "{want} missing:\n{dsl}");
        }
        // Compiled back, every name the methods use resolves. The one warning iasl
        // gives is about PCI0 having both _HID and _ADR (as QEMU's has).
        let text = run_iasl(&dir.0, &["dsdt.dsl"]);
        assert!(text.contains(" 0 Errors"), "{text}");
        let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("Warning")).collect();
        assert!(
            warnings.iter().all(|w| w.contains("_HID or _ADR")),
            "{text}"
        );
    }
}
