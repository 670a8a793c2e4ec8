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
//!
//! CPU hotplug is QEMU's too (its build_cpus_aml, modern interface): the MADT lists every
//! possible vCPU, the absent ones not enabled (Linux counts those as hotpluggable), and
//! \_SB.CPUS has the register block's fields (devices/cpu_hotplug.rs), a processor device
//! per possible vCPU, and CSCN, which \_GPE._E02 runs: it notifies each vCPU with an event.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::acpi_memory;
use crate::cpu::layout::CpuLayout;
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
pub const MAX_XAPIC_CPUS: usize = ipc::machine::MAX_VCPUS;

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
    /// Lays out every table for the vCPUs of `cpus` and `memory_slots` DIMM slots (ACPI
    /// memory hotplug, none for 0) starting at `ACPI_TABLES`.
    pub fn build(cpus: &CpuLayout, memory_slots: u32) -> Result<Self, AcpiError> {
        let max = cpus.max() as usize;
        if max > MAX_XAPIC_CPUS {
            return Err(AcpiError::TooManyCpus(max));
        }
        let mut layout = Layout::new(ACPI_TABLES);
        let rsdp_addr = layout.take(Rsdp::len() as u64, 16);
        let facs_addr = layout.take(acpi_tables::facs::FACS::len() as u64, 64);
        let dsdt = dsdt(cpus.max(), memory_slots);
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
    // IA-PC boot architecture: legacy (ISA) devices present (COM1), an 8042 keyboard
    // controller (Linux probes it only when the FADT or the DSDT says it is there), no
    // VGA, no CMOS RTC.
    const LEGACY_DEVICES: u16 = 1 << 0;
    const I8042_PRESENT: u16 = 1 << 1;
    const VGA_NOT_PRESENT: u16 = 1 << 2;
    const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
    f.iapc_boot_arch =
        (LEGACY_DEVICES | I8042_PRESENT | VGA_NOT_PRESENT | CMOS_RTC_NOT_PRESENT).into();
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

/// A vCPU's Processor Local APIC entry: UID and APIC ID are both its index; flags bit 0
/// enabled. (Also its processor device's _MAT.)
fn local_apic(index: u32, enabled: bool) -> [u8; 8] {
    [
        MADT_LOCAL_APIC,
        8,
        index as u8,
        index as u8,
        u8::from(enabled),
        0,
        0,
        0,
    ]
}

fn madt(cpus: &CpuLayout) -> Sdt {
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, LAPIC as u32);
    t.write_u32(40, MADT_PCAT_COMPAT);
    // Every possible vCPU, as QEMU lists them: one left out could never be hot-added to
    // Linux, which sizes its CPU masks from the MADT.
    for index in 0..cpus.max() {
        t.append_slice(&local_apic(index, cpus.is_present(index)));
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

/// The name QEMU gives a vCPU's processor device: C and its index in hex ("C000").
fn cpu_name(index: u32) -> String {
    format!("C{index:03X}")
}

/// ACPI CPU hotplug, as QEMU's build_cpus_aml describes it (modern interface, its names):
/// \_SB.CPUS, a processor container with the register block (PRST: CPEN, CINS, CRMV, CEJ0,
/// CEJF, CCMD as bits and a byte of a ByteAcc field; CSEL and CDAT dwords), its lock CPLK,
/// CSTA (a vCPU's _STA from CPEN), CTFY (Notify a vCPU by index), COST (a vCPU's _OST into
/// the OST registers), CSCN (what \_GPE._E02 runs: every vCPU with an insert event gets
/// "device check", one with a remove event "eject request", each event cleared), and a
/// processor device (ACPI0007) per possible vCPU with _UID, _STA, _MAT (its MADT entry,
/// enabled as CPEN says) and _OST. No _EJ0: vCPUs are not removed here.
fn cpus_device(max: u32) -> Vec<u8> {
    use aml::{FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, OpRegionSpace};
    let mut body = Vec::new();
    aml::Name::new("_HID".into(), &"ACPI0010").to_aml_bytes(&mut body);
    aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A05")).to_aml_bytes(&mut body);
    let base = u32::from(ports::CPU_HOTPLUG);
    let len = u32::from(ports::CPU_HOTPLUG_LEN);
    aml::OpRegion::new("PRST".into(), OpRegionSpace::SystemIO, &base, &len).to_aml_bytes(&mut body);
    aml::Field::new(
        "PRST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Reserved(32),
            FieldEntry::Named(*b"CPEN", 1),
            FieldEntry::Named(*b"CINS", 1),
            FieldEntry::Named(*b"CRMV", 1),
            FieldEntry::Named(*b"CEJ0", 1),
            FieldEntry::Named(*b"CEJF", 1),
            FieldEntry::Reserved(3),
            FieldEntry::Named(*b"CCMD", 8),
        ],
    )
    .to_aml_bytes(&mut body);
    aml::Field::new(
        "PRST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(*b"CSEL", 32),
            FieldEntry::Reserved(32),
            FieldEntry::Named(*b"CDAT", 32),
        ],
    )
    .to_aml_bytes(&mut body);
    aml::Mutex::new("CPLK".into(), 0).to_aml_bytes(&mut body);
    let (cpen, cins, crmv) = (
        aml::Path::new("CPEN"),
        aml::Path::new("CINS"),
        aml::Path::new("CRMV"),
    );
    let (csel, ccmd, cdat) = (
        aml::Path::new("CSEL"),
        aml::Path::new("CCMD"),
        aml::Path::new("CDAT"),
    );
    let acquire = aml::Acquire::new("CPLK".into(), 0xffff);
    let release = aml::Release::new("CPLK".into());
    // CSTA(index): 0xF if the vCPU is there, else 0.
    let present: u8 = 0x0f;
    aml::Method::new(
        "CSTA".into(),
        1,
        true,
        vec![
            &acquire,
            &aml::Store::new(&csel, &aml::Arg(0)),
            &aml::Store::new(&aml::Local(0), &aml::ZERO),
            &aml::If::new(
                &aml::Equal::new(&cpen, &aml::ONE),
                vec![&aml::Store::new(&aml::Local(0), &present)],
            ),
            &release,
            &aml::Return::new(&aml::Local(0)),
        ],
    )
    .to_aml_bytes(&mut body);
    // CTFY(index, event): Notify the vCPU's device.
    let paths: Vec<(u32, aml::Path)> = (0..max)
        .map(|i| (i, aml::Path::new(&cpu_name(i))))
        .collect();
    let tests: Vec<(aml::Equal, aml::Notify)> = paths
        .iter()
        .map(|(i, path)| {
            (
                aml::Equal::new(&aml::Arg(0), i),
                aml::Notify::new(path, &aml::Arg(1)),
            )
        })
        .collect();
    let ifs: Vec<aml::If> = tests
        .iter()
        .map(|(test, notify)| aml::If::new(test, vec![notify]))
        .collect();
    aml::Method::new(
        "CTFY".into(),
        2,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    )
    .to_aml_bytes(&mut body);
    // COST(index, event, status, buffer): the guest's _OST into the OST registers.
    let (ost_event, ost_status): (u8, u8) = (1, 2);
    aml::Method::new(
        "COST".into(),
        4,
        true,
        vec![
            &acquire,
            &aml::Store::new(&csel, &aml::Arg(0)),
            &aml::Store::new(&ccmd, &ost_event),
            &aml::Store::new(&cdat, &aml::Arg(1)),
            &aml::Store::new(&ccmd, &ost_status),
            &aml::Store::new(&cdat, &aml::Arg(2)),
            &release,
        ],
    )
    .to_aml_bytes(&mut body);
    // CSCN: command 0 (the next vCPU with an event) until none has one; at most one round
    // per possible vCPU and one more (Local1), Local0 saying whether this one had an event.
    const DEVICE_CHECK: u8 = 1;
    const EJECT_REQUEST: u8 = 3;
    let rounds = max + 1;
    let (had, round, selected) = (aml::Local(0), aml::Local(1), aml::Local(2));
    // Serialised at once: the AML objects only borrow their parts.
    let insert = Raw(to_bytes(&aml::If::new(
        &aml::Equal::new(&cins, &aml::ONE),
        vec![
            &aml::MethodCall::new("CTFY".into(), vec![&selected, &DEVICE_CHECK]),
            &aml::Store::new(&cins, &aml::ONE),
            &aml::Store::new(&had, &aml::ONE),
        ],
    )));
    let remove = Raw(to_bytes(&aml::If::new(
        &aml::Equal::new(&had, &aml::ZERO),
        vec![&aml::If::new(
            &aml::Equal::new(&crmv, &aml::ONE),
            vec![
                &aml::MethodCall::new("CTFY".into(), vec![&selected, &EJECT_REQUEST]),
                &aml::Store::new(&crmv, &aml::ONE),
                &aml::Store::new(&had, &aml::ONE),
            ],
        )],
    )));
    let done = Raw(to_bytes(&aml::If::new(
        &aml::Equal::new(&had, &aml::ZERO),
        vec![&aml::Store::new(&round, &rounds)],
    )));
    aml::Method::new(
        "CSCN".into(),
        0,
        true,
        vec![
            &acquire,
            // A selector out of range would make the block ignore the commands.
            &aml::Store::new(&csel, &aml::ZERO),
            &aml::Store::new(&round, &aml::ZERO),
            &aml::While::new(
                &aml::LessThan::new(&round, &rounds),
                vec![
                    &aml::Store::new(&had, &aml::ZERO),
                    &aml::Store::new(&ccmd, &aml::ZERO),
                    &aml::Store::new(&selected, &cdat),
                    &insert,
                    &remove,
                    &aml::Add::new(&round, &round, &aml::ONE),
                    &done,
                ],
            ),
            &release,
        ],
    )
    .to_aml_bytes(&mut body);
    for index in 0..max {
        let sta = aml::MethodCall::new("CSTA".into(), vec![&index]);
        let there = aml::BufferData::new(local_apic(index, true).to_vec());
        let absent = aml::BufferData::new(local_apic(index, false).to_vec());
        let ost = aml::MethodCall::new(
            "COST".into(),
            vec![&index, &aml::Arg(0), &aml::Arg(1), &aml::Arg(2)],
        );
        aml::Device::new(
            cpu_name(index).as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"ACPI0007"),
                &aml::Name::new("_UID".into(), &index),
                &aml::Method::new("_STA".into(), 0, true, vec![&aml::Return::new(&sta)]),
                &aml::Method::new(
                    "_MAT".into(),
                    0,
                    true,
                    vec![
                        &aml::If::new(&sta, vec![&aml::Return::new(&there)]),
                        &aml::Return::new(&absent),
                    ],
                ),
                &aml::Method::new("_OST".into(), 3, true, vec![&ost]),
            ],
        )
        .to_aml_bytes(&mut body);
    }
    to_bytes(&aml::Device::new("CPUS".into(), vec![&Raw(body)]))
}

/// \_GPE: the methods ACPICA runs for general-purpose events, \_E01 for PCI hotplug and
/// \_E02 for CPU hotplug (the events the controllers raise).
fn gpe_scope() -> Vec<u8> {
    let pci = format!("_E{:02X}", gpe::PCI_HOTPLUG);
    let cpu = format!("_E{:02X}", gpe::CPU_HOTPLUG);
    let pcnt = aml::MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let cscn = aml::MethodCall::new("\\_SB_.CPUS.CSCN".into(), vec![]);
    to_bytes(&aml::Scope::new(
        "\\_GPE".into(),
        vec![
            &aml::Method::new(
                pci.as_str().into(),
                0,
                false,
                vec![
                    &aml::Acquire::new("\\_SB_.PCI0.BLCK".into(), 0xffff),
                    &pcnt,
                    &aml::Release::new("\\_SB_.PCI0.BLCK".into()),
                ],
            ),
            &aml::Method::new(cpu.as_str().into(), 0, false, vec![&cscn]),
        ],
    ))
}

fn dsdt(max_cpus: u32, memory_slots: u32) -> Sdt {
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
    // The i8042 with its keyboard (its ports, IRQ 1) and its PS/2 mouse (IRQ 12), as QEMU's
    // pc describes them: Linux's i8042 driver takes its ports and IRQs from these.
    devices.extend(pnp_device(
        "KBD_",
        "PNP0303",
        0,
        vec![
            &aml::IO::new(ports::I8042_DATA, ports::I8042_DATA, 1, 1),
            &aml::IO::new(ports::I8042_COMMAND, ports::I8042_COMMAND, 1, 1),
            &aml::Interrupt::new(true, true, false, false, ports::I8042_KBD_IRQ),
        ],
    ));
    devices.extend(pnp_device(
        "MOU_",
        "PNP0F13",
        0,
        vec![&aml::Interrupt::new(
            true,
            true,
            false,
            false,
            ports::I8042_AUX_IRQ,
        )],
    ));
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
            &aml::IO::new(
                ports::CPU_HOTPLUG,
                ports::CPU_HOTPLUG,
                1,
                ports::CPU_HOTPLUG_LEN as u8,
            ),
            &aml::Memory32Fixed::new(false, PCI_ECAM as u32, PCI_ECAM_SIZE as u32),
        ],
    ));
    devices.extend(pci_root());
    devices.extend(cpus_device(max_cpus));
    t.append_slice(&aml::Scope::raw("\\_SB_".into(), devices));
    t.append_slice(&gpe_scope());
    // QEMU's pc machine describes memory hotplug only when it has slots.
    if memory_slots > 0 {
        t.append_slice(&acpi_memory::memory_hotplug_aml(memory_slots));
    }
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
        let t = AcpiTables::build(&CpuLayout::all(2), 256).unwrap();
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

    /// The MADT's Local APIC entries: (UID, APIC ID, flags).
    fn lapics(cpus: &CpuLayout) -> Vec<(u8, u8, u32)> {
        let madt = madt(cpus);
        let body = &madt.as_slice()[44..];
        body.chunks(8)
            .take_while(|c| c[0] == MADT_LOCAL_APIC && c[1] == 8)
            .map(|c| (c[2], c[3], u32::from_le_bytes(c[4..8].try_into().unwrap())))
            .collect()
    }

    #[test]
    fn madt_lists_every_cpu() {
        assert_eq!(
            lapics(&CpuLayout::all(4)),
            vec![(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]
        );
    }

    #[test]
    fn madt_lists_every_possible_cpu_the_absent_ones_not_enabled() {
        // Two at boot, CPU 3 added: CPU 2 is possible but not there (flags 0, as QEMU's).
        assert_eq!(
            lapics(&CpuLayout::new(4, [0, 1, 3])),
            vec![(0, 0, 1), (1, 1, 1), (2, 2, 0), (3, 3, 1)]
        );
        // The tables have room for the most xAPIC ids.
        assert!(AcpiTables::build(&CpuLayout::new(255, [0]), 0).is_ok());
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert!(matches!(
            AcpiTables::build(&CpuLayout::all(256), 0),
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

    #[test]
    fn the_i8042_is_announced_as_qemu_pc_announces_it() {
        // IAPC_BOOT_ARCH (offset 109): the 8042 bit, which Linux needs without PNP.
        let f = to_bytes(&fadt(0, 0));
        assert_ne!(u16::from_le_bytes([f[109], f[110]]) & (1 << 1), 0);
        let (dir, dsl) = disassembled(dsdt(1, 0).as_slice());
        let kbd = device(&dsl, "KBD");
        for want in [
            "EisaId (\"PNP0303\")",
            "0x0060,             // Range Minimum",
            "0x0064,             // Range Minimum",
            "0x00000001,",
        ] {
            assert!(kbd.contains(want), "{want} missing:\n{kbd}");
        }
        let mouse = device(&dsl, "MOU");
        for want in ["EisaId (\"PNP0F13\")", "0x0000000C,"] {
            assert!(mouse.contains(want), "{want} missing:\n{mouse}");
        }
        recompiles(&dir);
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

    /// The DSDT `table` disassembled by iasl in a scratch directory of its own (kept for
    /// [`recompiles`]); iasl must say nothing bad of it.
    fn disassembled(table: &[u8]) -> (Scratch, String) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            Scratch(std::env::temp_dir().join(format!("flotilla-dsdt-{}-{n}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join("dsdt.dat"), table).unwrap();
        let text = run_iasl(&dir.0, &["-d", "dsdt.dat"]);
        for bad in ["error", "warning", "invalid", "checksum"] {
            assert!(
                !text.to_lowercase().contains(bad),
                "iasl -d says {bad}: {text}"
            );
        }
        let dsl = std::fs::read_to_string(dir.0.join("dsdt.dsl")).unwrap();
        (dir, dsl)
    }

    /// The disassembly in `dir` compiled back: every name the methods use resolves, and
    /// the one warning iasl gives is about PCI0 having both _HID and _ADR (as QEMU's has).
    fn recompiles(dir: &Scratch) {
        let text = run_iasl(&dir.0, &["dsdt.dsl"]);
        assert!(text.contains(" 0 Errors"), "{text}");
        let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("Warning")).collect();
        assert!(
            warnings.iter().all(|w| w.contains("_HID or _ADR")),
            "{text}"
        );
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
        let (dir, dsl) = disassembled(dsdt(2, 0).as_slice());
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
        recompiles(&dir);
    }

    /// `text` without iasl's comments, its runs of blanks made one space (iasl aligns with
    /// several).
    fn squeezed(text: &str) -> String {
        let mut plain = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("/*") {
            plain.push_str(&rest[..at]);
            rest = rest[at..]
                .find("*/")
                .map_or("", |end| &rest[at + end + 2..]);
        }
        plain.push_str(rest);
        let lines = plain
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default());
        lines
            .flat_map(str::split_whitespace)
            .collect::<Vec<_>>()
            .join(" ")
            // Where a comment was, before a closing parenthesis.
            .replace(" )", ")")
    }

    #[test]
    fn the_dsdt_describes_cpu_hotplug_as_qemu_does_and_iasl_takes_it() {
        let (dir, dsl) = disassembled(dsdt(4, 0).as_slice());
        let cpus = squeezed(device(&dsl, "CPUS"));
        // QEMU's register block and field names, where QEMU has them.
        for want in [
            "Name (_HID, \"ACPI0010\")",
            "Name (_CID, EisaId (\"PNP0A05\"))",
            "OperationRegion (PRST, SystemIO, 0xAF00, 0x0C)",
            "Field (PRST, ByteAcc, NoLock, WriteAsZeros) { Offset (0x04), CPEN, 1, CINS, 1, \
             CRMV, 1, CEJ0, 1, CEJF, 1, Offset (0x05), CCMD, 8 }",
            "Field (PRST, DWordAcc, NoLock, Preserve) { CSEL, 32, Offset (0x08), CDAT, 32 }",
            "Mutex (CPLK, 0x00)",
            "Method (CSTA, 1, Serialized) { Acquire (CPLK, 0xFFFF) CSEL = Arg0 Local0 = Zero \
             If ((CPEN == One)) { Local0 = 0x0F } Release (CPLK) Return (Local0) }",
            "Method (COST, 4, Serialized) { Acquire (CPLK, 0xFFFF) CSEL = Arg0 CCMD = One \
             CDAT = Arg1 CCMD = 0x02 CDAT = Arg2 Release (CPLK) }",
            "Method (CSCN, 0, Serialized) { Acquire (CPLK, 0xFFFF) CSEL = Zero Local1 = Zero \
             While ((Local1 < 0x05)) { Local0 = Zero CCMD = Zero Local2 = CDAT \
             If ((CINS == One)) { CTFY (Local2, One) CINS = One Local0 = One } \
             If ((Local0 == Zero)) { If ((CRMV == One)) { CTFY (Local2, 0x03) CRMV = One \
             Local0 = One } } Local1 += One If ((Local0 == Zero)) { Local1 = 0x05 } } \
             Release (CPLK) }",
        ] {
            assert!(cpus.contains(want), "{want} missing:\n{dsl}");
        }
        for i in 0..4 {
            let name = format!("C{i:03X}");
            let cpu = squeezed(device(&dsl, &name));
            let uid = match i {
                0 => "Zero".to_string(),
                1 => "One".to_string(),
                i => format!("0x{i:02X}"),
            };
            for want in [
                "Name (_HID, \"ACPI0007\")".to_string(),
                format!("Name (_UID, {uid})"),
                format!("Method (_STA, 0, Serialized) {{ Return (CSTA ({uid})) }}"),
                format!("If (CSTA ({uid})) {{ Return (Buffer (0x08) {{ 0x00, 0x08, 0x0{i}, 0x0{i}, 0x01, 0x00, 0x00, 0x00"),
                format!("Return (Buffer (0x08) {{ 0x00, 0x08, 0x0{i}, 0x0{i}, 0x00, 0x00, 0x00, 0x00"),
                format!("Method (_OST, 3, Serialized) {{ COST ({uid}, Arg0, Arg1, Arg2) }}"),
            ] {
                assert!(cpu.contains(&want), "{want} missing from {cpu}");
            }
            assert!(!cpu.contains("_EJ0"), "{cpu}");
            assert!(
                dsl.contains(&format!("Notify ({name}, Arg1)")),
                "CTFY notifies {name}"
            );
        }
        assert!(!dsl.contains("Device (C004)"), "{dsl}");
        let gpe = squeezed(&dsl[dsl.find("Scope (\\_GPE)").expect("\\_GPE")..]);
        assert!(
            gpe.contains("Method (_E02, 0, NotSerialized) { \\_SB.CPUS.CSCN () }"),
            "{gpe}"
        );
        // The ports are claimed.
        assert!(
            squeezed(device(&dsl, "MBRD")).contains("IO (Decode16, 0xAF00, 0xAF00, 0x01, 0x0C,)"),
            "{dsl}"
        );
        recompiles(&dir);
    }

    #[test]
    fn the_dsdt_describes_memory_hotplug_as_qemu_does_and_iasl_takes_it() {
        // Without slots there is nothing of it, as on QEMU's pc.
        let none = dsdt(1, 0);
        assert!(!none.as_slice().windows(4).any(|w| w == b"MHPC"));
        let (dir, dsl) = disassembled(dsdt(1, 4).as_slice());
        let mhpd = squeezed(device(&dsl, "\\_SB.PCI0.MHPD"));
        for want in [
            "Name (_HID, \"PNP0A06\"",
            "IO (Decode16, 0x0A00, 0x0A00, 0x00, 0x18,)",
            "OperationRegion (HPMR, SystemIO, 0x0A00, 0x18)",
        ] {
            assert!(mhpd.contains(want), "{want} missing:\n{mhpd}");
        }
        // QEMU 7.2's names, fields and scan, as its pc DSDT has them.
        let mhpc = squeezed(device(&dsl, "\\_SB.MHPC"));
        for want in [
            "Name (MDNR, 0x04)",
            "Field (\\_SB.PCI0.MHPD.HPMR, DWordAcc, NoLock, Preserve) { MRBL, 32, MRBH, 32, \
             MRLL, 32, MRLH, 32, MPX, 32 }",
            "Field (\\_SB.PCI0.MHPD.HPMR, ByteAcc, NoLock, WriteAsZeros) { Offset (0x14), \
             MES, 1, MINS, 1, MRMV, 1, MEJ, 1 }",
            "Field (\\_SB.PCI0.MHPD.HPMR, DWordAcc, NoLock, Preserve) { MSEL, 32, MOEV, 32, \
             MOSC, 32 }",
            "Mutex (MLCK, 0x00)",
            "Method (MSCN, 0, NotSerialized) { Local0 = Zero Acquire (MLCK, 0xFFFF) \
             While ((Local0 < MDNR)) { MSEL = Local0 If ((MINS == One)) { MTFY (Local0, One) \
             MINS = One } ElseIf ((MRMV == One)) { MTFY (Local0, 0x03) MRMV = One } \
             Local0 += One } Release (MLCK) Return (One) }",
            "If ((MES == One)) { Local0 = 0x0F }",
            "MOEV = Arg1 MOSC = Arg2",
            "MEJ = One",
            "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite,",
        ] {
            assert!(mhpc.contains(want), "{want} missing:\n{mhpc}");
        }
        for slot in 0..4 {
            let name = format!("MP{slot:02X}");
            let dimm = squeezed(device(&dsl, &name));
            for want in [
                format!("Name (_UID, \"0x{slot:02X}\")"),
                "Name (_HID, EisaId (\"PNP0C80\")".to_string(),
                "Return (MCRS (_UID))".to_string(),
                "Return (MRST (_UID))".to_string(),
                "MOST (_UID, Arg0, Arg1, Arg2)".to_string(),
                "MEJ0 (_UID, Arg0)".to_string(),
            ] {
                assert!(dimm.contains(&want), "{want} missing from {name}:\n{dimm}");
            }
            assert!(dsl.contains(&format!("Notify ({name}, Arg1)")), "{name}");
        }
        assert!(
            squeezed(&dsl)
                .contains("Method (\\_GPE._E03, 0, NotSerialized) { \\_SB.MHPC.MSCN () }"),
            "{dsl}"
        );
        recompiles(&dir);
    }
}
