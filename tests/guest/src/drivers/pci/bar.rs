//! Base address registers: reading them as assigned, mapping a memory BAR's range for a
//! driver, and the `pci_assign=` test aid that assigns the ones firmware left at 0 (for the
//! functions found at boot, [`assign_bars`]; for a hot-added one, [`assign_in_window`], which
//! keeps clear of the ranges other functions decode, found by [`memory_ranges`]).

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

/// A memory range a BAR decodes: start and size (a power of two).
#[derive(Clone, Copy, Default)]
pub struct MemRange {
    pub start: u64,
    pub size: u64,
}

impl MemRange {
    fn overlaps(&self, start: u64, size: u64) -> bool {
        start < self.start.saturating_add(self.size) && self.start < start.saturating_add(size)
    }
}

/// Why [`assign_in_window`] could not give a BAR an address.
#[derive(Clone, Copy)]
pub enum AssignError {
    /// BAR `index` reads 0 and there is no window to assign from.
    NoWindow { index: u8 },
    /// The window has no free, aligned room for BAR `index` of `size` bytes.
    NoRoom { index: u8, size: u64 },
}

/// Size of the memory BAR at `offset` by the write-ones method (memory decoding must be off);
/// its value is put back. None if it is not implemented (reads back 0).
fn size_memory_bar(at: Address, offset: u16, is64: bool) -> Option<u64> {
    let low = read32(at, offset);
    let high = if is64 { read32(at, offset + 4) } else { 0 };
    write32(at, offset, u32::MAX);
    let mut mask = u64::from(read32(at, offset) & !0xf);
    if is64 {
        write32(at, offset + 4, u32::MAX);
        mask |= u64::from(read32(at, offset + 4)) << 32;
        write32(at, offset + 4, high);
    }
    write32(at, offset, low);
    // The lowest writable address bit is the size (a device returning holes cannot make it
    // anything but a power of two).
    (mask != 0).then(|| 1u64 << mask.trailing_zeros())
}

/// Calls `each(index, register offset, address, is64, size)` for every implemented memory BAR
/// of the type-0 function `at`, with memory decoding off meanwhile (so only before a driver
/// uses the function). Stops at the first Err.
fn walk_memory_bars<E>(
    at: Address,
    mut each: impl FnMut(u8, u16, u64, bool, u64) -> Result<(), E>,
) -> Result<(), E> {
    let command = read16(at, REG_COMMAND);
    write16(at, REG_COMMAND, command & !COMMAND_MEMORY);
    let mut result = Ok(());
    let mut index = 0;
    while index < 6 && result.is_ok() {
        let Bar::Memory { addr, is64, .. } = bar(at, index) else {
            index += 1;
            continue;
        };
        let offset = REG_BAR0 + 4 * u16::from(index);
        if let Some(size) = size_memory_bar(at, offset, is64) {
            result = each(index, offset, addr, is64, size);
        }
        index += if is64 { 2 } else { 1 };
    }
    write16(at, REG_COMMAND, command);
    result
}

/// The memory ranges the type-0 function `at` decodes (BARs with an address), sized with
/// memory decoding off for the while: only before a driver uses the function. Returns how many
/// were put in `out`.
pub fn memory_ranges(at: Address, out: &mut [MemRange; 6]) -> usize {
    let mut count = 0;
    let _ = walk_memory_bars::<()>(at, |_, _, addr, _, size| {
        if addr != 0 {
            out[count] = MemRange { start: addr, size };
            count += 1;
        }
        Ok(())
    });
    count
}

/// The lowest start in `[base, limit)` aligned to `size` where `size` bytes overlap none of
/// `used` and `mine`. Each step moves past the end of a range it hit, so it takes at most one
/// step per range.
fn place(base: u64, limit: u64, size: u64, used: &[MemRange], mine: &[MemRange]) -> Option<u64> {
    let align = |value: u64| value.checked_add(size - 1).map(|v| v & !(size - 1));
    let mut start = align(base)?;
    loop {
        if start.checked_add(size)? > limit {
            return None;
        }
        match used.iter().chain(mine).find(|r| r.overlaps(start, size)) {
            Some(hit) => start = align(hit.start.saturating_add(hit.size))?,
            None => return Some(start),
        }
    }
}

/// For a function that appeared after boot (hotplug): gives each memory BAR of the type-0
/// function `at` that reads 0 an address from `window` (base, size), naturally aligned, the
/// lowest that overlaps neither `used` (what other functions decode) nor its other BARs; BARs
/// already assigned are kept. Fills `out` with every range the function then decodes and
/// returns how many, or the first BAR that could not be given one (left at 0).
pub fn assign_in_window(
    at: Address,
    window: Option<(u64, u64)>,
    used: &[MemRange],
    out: &mut [MemRange; 6],
) -> Result<usize, AssignError> {
    let mut count = 0;
    walk_memory_bars(at, |index, offset, addr, is64, size| {
        let start = if addr != 0 {
            addr
        } else {
            let Some((base, len)) = window else {
                return Err(AssignError::NoWindow { index });
            };
            let end = base.saturating_add(len);
            let limit = if is64 { end } else { end.min(1 << 32) };
            let Some(start) = place(base, limit, size, used, &out[..count]) else {
                return Err(AssignError::NoRoom { index, size });
            };
            let low = read32(at, offset);
            write32(at, offset, (start as u32) | (low & 0xf));
            if is64 {
                write32(at, offset + 4, (start >> 32) as u32);
            }
            start
        };
        out[count] = MemRange { start, size };
        count += 1;
        Ok(())
    })?;
    Ok(count)
}
