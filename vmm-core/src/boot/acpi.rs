//! ACPI tables: RSDP, XSDT, FADT, FACS, MADT and a DSDT with the platform's devices.
//!
//! The platform is full (not hardware-reduced) ACPI: the PM1a event and control blocks
//! and the PM timer sit on I/O ports, the SCI is ISA IRQ 9, power-off is S5 through
//! PM1a_CNT, the power button is the fixed-feature one, and reset goes through the FADT
//! reset register (port 0xCF9). That is the model Linux and every other ACPI OS handle
//! without any AML interpreter help, and the one our test guest drives.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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
        ],
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
            &aml::Memory32Fixed::new(false, PCI_ECAM as u32, PCI_ECAM_SIZE as u32),
        ],
    ));
    devices.extend(pci_root());
    t.append_slice(&aml::Scope::raw("\\_SB_".into(), devices));
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
}
