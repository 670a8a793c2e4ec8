//! The guest's physical memory map (E820), shared by both boot protocols.

use crate::layout::{EBDA_START, HIGH_RAM_START, PCI_ECAM, PCI_ECAM_SIZE};
use crate::memory::RamRegion;

/// E820 / PVH memory types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MemoryKind {
    Ram = 1,
    Reserved = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

/// Conventional memory up to the EBDA, the legacy hole (EBDA, VGA window, option ROMs,
/// BIOS area holding our ACPI tables) reserved, then RAM from 1 MiB, skipping the 32-bit
/// MMIO gap, which is simply absent from the map.
pub fn memory_map(ram: &[RamRegion]) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: MemoryKind::Ram,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIGH_RAM_START - EBDA_START,
            kind: MemoryKind::Reserved,
        },
    ];
    for r in ram {
        let start = r.guest_addr.max(HIGH_RAM_START);
        if r.end() > start {
            map.push(MemoryMapEntry {
                addr: start,
                size: r.end() - start,
                kind: MemoryKind::Ram,
            });
        }
    }
    // The ECAM window, reserved as PC firmware does (inside the MMIO gap).
    map.push(MemoryMapEntry {
        addr: PCI_ECAM,
        size: PCI_ECAM_SIZE,
        kind: MemoryKind::Reserved,
    });
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use crate::memory::{ram_regions, MIB};

    #[test]
    fn map_has_holes_below_1mib_and_at_the_mmio_gap() {
        let map = memory_map(&ram_regions(4096 * MIB));
        assert_eq!(map.len(), 5);
        assert_eq!((map[0].addr, map[0].size), (0, 0x9fc00));
        assert_eq!(map[1].kind, MemoryKind::Reserved);
        assert_eq!(map[1].addr + map[1].size, 0x100000);
        assert_eq!(map[2].addr, 0x100000);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(map[3].kind, MemoryKind::Reserved, "ECAM");
        assert_eq!(map[4].addr, MMIO_GAP_END);
        assert_eq!(map[4].size, 1024 * MIB);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == MemoryKind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 4096 * MIB - (0x100000 - 0x9fc00));
    }
}
