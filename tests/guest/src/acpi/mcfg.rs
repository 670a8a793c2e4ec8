//! MCFG parsing: where PCI Express configuration space (ECAM) lives. The guest only uses the
//! allocation for segment group 0 (the one the legacy 0xCF8/0xCFC ports would reach).

use crate::arch::phys::{le_u16, le_u64, le_u8};
use crate::console;

/// Header (36) + reserved (8), then 16-byte allocation entries.
const FIRST_ENTRY: usize = 44;
const ENTRY_LEN: usize = 16;

#[derive(Clone, Copy)]
pub struct Mcfg {
    /// ECAM base: configuration space of bus B starts at `base + (B << 20)`; `base` is the
    /// address of bus 0 even when `start_bus` is higher (as the ACPI spec defines it).
    pub base: u64,
    pub start_bus: u8,
    pub end_bus: u8,
}

impl Mcfg {
    /// The segment-0 allocation of a checksummed MCFG, if it has one.
    pub fn parse(table: &[u8]) -> Option<Mcfg> {
        let entries = table.len().saturating_sub(FIRST_ENTRY) / ENTRY_LEN;
        for i in 0..entries {
            let at = FIRST_ENTRY + i * ENTRY_LEN;
            if le_u16(table, at + 8) != 0 {
                continue;
            }
            let found = Mcfg {
                base: le_u64(table, at),
                start_bus: le_u8(table, at + 10),
                end_bus: le_u8(table, at + 11),
            };
            if found.base == 0 || found.end_bus < found.start_bus {
                console::error("acpi: MCFG entry base=")
                    .hex(found.base)
                    .s(" buses=")
                    .dec(u64::from(found.start_bus))
                    .s("-")
                    .dec(u64::from(found.end_bus))
                    .s(" is unusable")
                    .end();
                continue;
            }
            return Some(found);
        }
        console::error("acpi: MCFG has no usable segment 0 entry").end();
        None
    }
}
