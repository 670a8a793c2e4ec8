//! Base address registers: reading them as assigned, mapping a memory BAR's range for a
//! driver, and the `pci_assign=` test aid that assigns the ones firmware left at 0.

use super::config::{
    read16, read32, write16, write32, Address, COMMAND_MEMORY, REG_BAR0, REG_COMMAND,
};
use super::scan::Functions;
use crate::arch::memory;
use crate::console;

/// One base address register as assigned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    /// Not implemented (reads 0) or the upper half of a 64-bit BAR.
    Unused,
    Io(u32),
    Memory {
        addr: u64,
        is64: bool,
        prefetchable: bool,
    },
}

/// Reads BAR `index` (0-5) of a type-0 header. The address of a memory BAR may be 0
/// (unassigned): callers check.
pub fn bar(at: Address, index: u8) -> Bar {
    if index > 5 {
        return Bar::Unused;
    }
    let offset = REG_BAR0 + 4 * u16::from(index);
    let low = read32(at, offset);
    if low & 1 == 1 {
        return Bar::Io(low & !3);
    }
    let prefetchable = low & 8 != 0;
    match (low >> 1) & 3 {
        2 if index < 5 => Bar::Memory {
            addr: u64::from(low & !0xf) | (u64::from(read32(at, offset + 4)) << 32),
            is64: true,
            prefetchable,
        },
        0 | 1 => Bar::Memory {
            addr: u64::from(low & !0xf),
            is64: false,
            prefetchable,
        },
        _ => Bar::Unused,
    }
}

/// The address of memory BAR `index` plus `offset`, mapped for `len` bytes; None after an
/// error line (`what` names the user) if the BAR is an I/O BAR, unassigned (0), or the range
/// cannot be mapped.
pub fn map_bar(at: Address, index: u8, offset: u64, len: u64, what: &str) -> Option<u64> {
    let fail = |why: &str| {
        let line = console::error("pci ");
        at.print(line)
            .s(": ")
            .s(what)
            .s(": BAR")
            .dec(u64::from(index))
            .s(" ")
            .s(why)
            .end();
    };
    let base = match bar(at, index) {
        Bar::Memory { addr: 0, .. } => {
            fail("is 0 (unassigned)");
            return None;
        }
        Bar::Memory { addr, .. } => addr,
        Bar::Io(_) => {
            fail("is an I/O BAR (memory expected)");
            return None;
        }
        Bar::Unused => {
            fail("is not implemented");
            return None;
        }
    };
    let Some(addr) = base.checked_add(offset) else {
        fail("offset overflows");
        return None;
    };
    if !memory::map_mmio(addr, len.max(1)) {
        fail("range cannot be mapped");
        return None;
    }
    Some(addr)
}

/// Test aid (`pci_assign=` on the command line, for firmware that leaves BARs unassigned,
/// such as qboot on QEMU microvm): gives every memory BAR of the type-0 functions that reads 0
/// an address from `[base, base + size)`, naturally aligned, sized with the write-ones method
/// while memory decoding is off. I/O BARs are left alone. Returns the number assigned.
pub fn assign_bars(functions: &Functions, base: u64, size: u64) -> u32 {
    let mut next = base;
    let end = base.saturating_add(size);
    let mut assigned = 0;
    for f in functions.iter().filter(|f| f.header_type & 0x7f == 0) {
        let at = f.addr;
        let command = read16(at, REG_COMMAND);
        write16(at, REG_COMMAND, command & !COMMAND_MEMORY);
        let mut index = 0;
        while index < 6 {
            let Bar::Memory { addr, is64, .. } = bar(at, index) else {
                index += 1;
                continue;
            };
            let offset = REG_BAR0 + 4 * u16::from(index);
            index += if is64 { 2 } else { 1 };
            if addr != 0 {
                continue;
            }
            let low = read32(at, offset);
            write32(at, offset, u32::MAX);
            let mut mask = u64::from(read32(at, offset) & !0xf);
            if is64 {
                write32(at, offset + 4, u32::MAX);
                mask |= u64::from(read32(at, offset + 4)) << 32;
            }
            if mask == 0 {
                // Not implemented: all bits read back as zero.
                write32(at, offset, low);
                continue;
            }
            if !is64 {
                mask |= 0xffff_ffff_0000_0000;
            }
            let bar_size = (!mask).wrapping_add(1);
            let start = next.checked_add(bar_size - 1).map(|v| v & !(bar_size - 1));
            match start {
                Some(start) if start + bar_size <= end && (is64 || start < 1 << 32) => {
                    write32(at, offset, (start as u32) | (low & 0xf));
                    if is64 {
                        write32(at, offset + 4, (start >> 32) as u32);
                    }
                    next = start + bar_size;
                    assigned += 1;
                }
                _ => {
                    write32(at, offset, low);
                    if is64 {
                        write32(at, offset + 4, 0);
                    }
                    at.print(console::error("pci "))
                        .s(": pci_assign window has no room for a BAR of ")
                        .hex(bar_size)
                        .end();
                }
            }
        }
        write16(at, REG_COMMAND, command);
    }
    assigned
}
