//! ACPI discovery: finds the RSDP (start_info.rsdp_paddr, else the EBDA and BIOS area scan),
//! walks the XSDT (RSDT for revision 0), checks every table's checksum and parses what the
//! guest acts on: MADT, FADT, MCFG (PCI Express ECAM, for drivers/pci/) and the DSDT's `\_S5_`;
//! the DSDT and SSDTs are kept for the AML scans of pcihp.rs. The result is a write-once static
//! that the rest of the kernel reads; power.rs acts on it (ACPI mode, soft-off, reset, the
//! power button and the SCI), gpe.rs, pcihp.rs, cpuhp.rs and memhp.rs on the general-purpose
//! events and ACPI PCI, CPU and memory hotplug.
//!
//! A table with a bad checksum is reported (`GUEST ERROR acpi checksum ...`) and still used,
//! as Linux does, so that one bad byte does not also take power-off away.

pub mod aml_fields;
pub mod aml_s5;
pub mod cpuhp;
pub mod fadt;
pub mod gas;
pub mod gpe;
pub mod madt;
pub mod mcfg;
pub mod memhp;
pub mod pcihp;
pub mod power;

use crate::arch::phys::{le_u32, le_u64, le_u8, range_ok, read, slice};
use crate::console;
use crate::sync::Global;
use aml_s5::SleepTypes;
use fadt::Fadt;
use madt::Madt;
use mcfg::Mcfg;

const HEADER_LEN: usize = 36;
/// Sanity bound for a table's length field (a garbage length must not make us sum GiBs).
const MAX_TABLE_LEN: u32 = 1 << 24;
const RSDP_SIGNATURE: u64 = u64::from_le_bytes(*b"RSD PTR ");
/// SSDTs kept (more are reported and left out).
pub const MAX_SSDTS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RsdpSource {
    StartInfo,
    Ebda,
    BiosArea,
    NotFound,
}

impl RsdpSource {
    pub fn name(self) -> &'static str {
        match self {
            RsdpSource::StartInfo => "start_info",
            RsdpSource::Ebda => "ebda",
            RsdpSource::BiosArea => "bios-area",
            RsdpSource::NotFound => "none",
        }
    }
}

pub struct Acpi {
    pub rsdp: u64,
    pub rsdp_source: RsdpSource,
    pub revision: u8,
    /// Whether the XSDT (rather than the RSDT) was walked.
    pub xsdt: bool,
    pub fadt: Option<Fadt>,
    pub madt_present: bool,
    pub madt: Madt,
    pub s5: Option<SleepTypes>,
    /// Segment 0's ECAM allocation, if there is an MCFG.
    pub mcfg: Option<Mcfg>,
    /// The DSDT, header included.
    pub dsdt: Option<&'static [u8]>,
    /// The SSDTs in root-table order, headers included.
    pub ssdts: [Option<&'static [u8]>; MAX_SSDTS],
}

static ACPI: Global<Acpi> = Global::new(Acpi {
    rsdp: 0,
    rsdp_source: RsdpSource::NotFound,
    revision: 0,
    xsdt: false,
    fadt: None,
    madt_present: false,
    madt: Madt::EMPTY,
    s5: None,
    mcfg: None,
    dsdt: None,
    ssdts: [None; MAX_SSDTS],
});

/// Byte sum of `bytes` modulo 256, eight bytes per step (ring 0 is emulated: a DSDT of several
/// KiB summed byte by byte costs milliseconds). 16-bit lanes hold two bytes per word, folded
/// every 128 words before they could overflow.
fn checksum(bytes: &[u8]) -> u8 {
    const LANES: u64 = 0x00ff_00ff_00ff_00ff;
    let fold = |lanes: u64| {
        (lanes & 0xffff) + ((lanes >> 16) & 0xffff) + ((lanes >> 32) & 0xffff) + (lanes >> 48)
    };
    let mut total: u64 = 0;
    let mut lanes: u64 = 0;
    let mut words = 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        lanes += (word & LANES) + ((word >> 8) & LANES);
        words += 1;
        if words == 128 {
            total += fold(lanes);
            lanes = 0;
            words = 0;
        }
    }
    total += fold(lanes);
    for &byte in chunks.remainder() {
        total += u64::from(byte);
    }
    total as u8
}

fn valid_rsdp(addr: u64) -> bool {
    if !range_ok(addr, 20) {
        return false;
    }
    // SAFETY: range checked; firmware memory does not change under us.
    let v1 = unsafe { slice(addr, 20) };
    if v1[..8] != *b"RSD PTR " || checksum(v1) != 0 {
        return false;
    }
    if le_u8(v1, 15) < 2 {
        return true;
    }
    if !range_ok(addr, 24) {
        return false;
    }
    // SAFETY: the length field's range is checked just above; firmware memory is stable.
    let len = u64::from(unsafe { read::<u32>(addr + 20) });
    if !(36..=4096).contains(&len) || !range_ok(addr, len) {
        return false;
    }
    // SAFETY: range checked just above; firmware memory is stable.
    checksum(unsafe { slice(addr, len as usize) }) == 0
}

fn scan_for_rsdp(start: u64, end: u64) -> Option<u64> {
    (start..end).step_by(16).find(|&addr| {
        // SAFETY: callers pass ranges inside the first MiB.
        (unsafe { read::<u64>(addr) } == RSDP_SIGNATURE) && valid_rsdp(addr)
    })
}

fn find_rsdp(hint: u64) -> Option<(u64, RsdpSource)> {
    if hint != 0 {
        if valid_rsdp(hint) {
            return Some((hint, RsdpSource::StartInfo));
        }
        console::error("acpi: start_info rsdp_paddr=")
            .hex(hint)
            .s(" is not a valid RSDP")
            .end();
    }
    // The EBDA segment is at 0x40e in the BIOS data area; only believe a plausible one.
    // SAFETY: the first page is identity mapped.
    let ebda = u64::from(unsafe { read::<u16>(0x40e) }) << 4;
    if (0x8_0000..0xa_0000).contains(&ebda) {
        if let Some(addr) = scan_for_rsdp(ebda, ebda + 1024) {
            return Some((addr, RsdpSource::Ebda));
        }
    }
    scan_for_rsdp(0xe_0000, 0x10_0000).map(|addr| (addr, RsdpSource::BiosArea))
}

fn signature(table: &[u8]) -> [u8; 4] {
    [
        le_u8(table, 0),
        le_u8(table, 1),
        le_u8(table, 2),
        le_u8(table, 3),
    ]
}

/// Maps a table by address: bounds and length checks, then the checksum.
fn load_table(addr: u64, what: &str) -> Option<&'static [u8]> {
    if !range_ok(addr, HEADER_LEN as u64) {
        console::error("acpi: ")
            .s(what)
            .s(" at ")
            .hex(addr)
            .s(" is outside the mapped 4 GiB")
            .end();
        return None;
    }
    // SAFETY: header range checked.
    let header = unsafe { slice(addr, HEADER_LEN) };
    let len = le_u32(header, 4);
    if (len as usize) < HEADER_LEN || len > MAX_TABLE_LEN || !range_ok(addr, u64::from(len)) {
        console::error("acpi: table ")
            .ascii(&signature(header))
            .s(" at ")
            .hex(addr)
            .s(" has bad length=")
            .dec(u64::from(len))
            .end();
        return None;
    }
    // SAFETY: whole range checked.
    let table = unsafe { slice(addr, len as usize) };
    if checksum(table) != 0 {
        console::error("acpi checksum table=")
            .ascii(&signature(table))
            .s(" addr=")
            .hex(addr)
            .end();
    }
    Some(table)
}

/// Discovers and parses the ACPI tables. Called once by the BSP before the APs start.
pub fn init(start_info_rsdp: u64) -> &'static Acpi {
    // SAFETY: single-threaded boot; nothing else references ACPI yet.
    let acpi = unsafe { ACPI.get_mut() };
    parse(acpi, start_info_rsdp);
    acpi
}

fn parse(acpi: &mut Acpi, hint: u64) {
    let Some((rsdp, source)) = find_rsdp(hint) else {
        console::error("acpi: no RSDP found").end();
        return;
    };
    acpi.rsdp = rsdp;
    acpi.rsdp_source = source;
    // SAFETY: validated RSDP (at least 20 bytes, 36 if revision >= 2).
    let head = unsafe { slice(rsdp, 20) };
    acpi.revision = le_u8(head, 15);
    let xsdt_addr = if acpi.revision >= 2 {
        // SAFETY: as above.
        le_u64(unsafe { slice(rsdp, 36) }, 24)
    } else {
        0
    };
    acpi.xsdt = xsdt_addr != 0;
    let (root_addr, entry_size, root_sig) = if acpi.xsdt {
        (xsdt_addr, 8, *b"XSDT")
    } else {
        (u64::from(le_u32(head, 16)), 4, *b"RSDT")
    };
    let Some(root) = load_table(root_addr, if acpi.xsdt { "XSDT" } else { "RSDT" }) else {
        return;
    };
    if signature(root) != root_sig {
        console::error("acpi: root table at ")
            .hex(root_addr)
            .s(" has signature ")
            .ascii(&signature(root))
            .end();
        return;
    }
    let entries = (root.len() - HEADER_LEN) / entry_size;
    for i in 0..entries {
        let at = HEADER_LEN + i * entry_size;
        let addr = if entry_size == 8 {
            le_u64(root, at)
        } else {
            u64::from(le_u32(root, at))
        };
        let Some(table) = load_table(addr, "table") else {
            continue;
        };
        match &signature(table) {
            b"FACP" => acpi.fadt = Some(Fadt::parse(table)),
            b"MCFG" => acpi.mcfg = Mcfg::parse(table),
            b"APIC" => {
                acpi.madt_present = true;
                acpi.madt.parse_into(table);
            }
            b"SSDT" => match acpi.ssdts.iter_mut().find(|s| s.is_none()) {
                Some(free) => *free = Some(table),
                None => console::error("acpi: more than ")
                    .dec(MAX_SSDTS as u64)
                    .s(" SSDTs, ignoring the one at ")
                    .hex(addr)
                    .end(),
            },
            _ => {}
        }
    }
    let Some(fadt) = acpi.fadt else {
        console::error("acpi: no FADT").end();
        return;
    };
    if !acpi.madt_present {
        console::error("acpi: no MADT").end();
    }
    if fadt.dsdt == 0 {
        console::error("acpi: FADT names no DSDT").end();
        return;
    }
    let Some(dsdt) = load_table(fadt.dsdt, "DSDT") else {
        return;
    };
    acpi.dsdt = Some(dsdt);
    match aml_s5::find_s5(&dsdt[HEADER_LEN..]) {
        Ok(types) => acpi.s5 = Some(types),
        Err(err) => console::error("acpi: ").s(err.describe()).end(),
    }
}
