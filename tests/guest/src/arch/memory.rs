//! Memory beyond the boot identity map, and memory for devices.
//!
//! Mappings: the boot page tables (boot.rs) identity-map [0, 4 GiB). Device registers may lie
//! above that (64-bit BARs, ECAM): [`map_mmio`] identity-maps any range below 128 TiB (and
//! below the CPU's physical address width) on demand, one page directory of 2 MiB uncached,
//! user-accessible pages per GiB touched, with page-table pages from a static pool. Below
//! 4 GiB it marks the 2 MiB pages holding the range uncached, unless they also hold RAM.
//! [`map_ram`] does the same for RAM added at run time (ACPI memory hotplug), write-back.
//!
//! DMA pool: virtqueues, request headers and data buffers come from one bump allocator over
//! free RAM (memory map type 1) above the kernel image and below 4 GiB, set up on first use.
//! Nothing is freed; a user that brings devices up again and again (a hotplug slot) takes an
//! [`Arena`] from the pool once and has the allocations of each bring-up served from it
//! ([`begin_arena`]), from its start again every time. Guest physical == virtual (identity
//! map), so these addresses go to devices as they are. Only the BSP uses this module, from
//! ring 0.

use crate::arch::start_info::{BootInfo, MEMORY_RAM};
use crate::arch::user;
use crate::console;
use crate::sync::Global;
use core::arch::{asm, global_asm};

/// Highest address (exclusive) `map_mmio` will map: the lower half of the 48-bit virtual
/// address space, the most 4-level paging can identity-map (further capped by the CPU's
/// physical address width).
pub const MAP_LIMIT: u64 = 1 << 47;
const PT_POOL_PAGES: usize = 16;
const PAGE: u64 = 4096;
const LARGE: u64 = 2 << 20;
const ENTRIES: u64 = 512;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const TABLE_FLAGS: u64 = PRESENT | WRITABLE | USER;
const DEVICE_PAGE_FLAGS: u64 = PRESENT | WRITABLE | USER | PWT | PCD | HUGE;
const RAM_PAGE_FLAGS: u64 = PRESENT | WRITABLE | USER | HUGE;
/// Upper bound on the DMA pool (more is never needed and keeps the sizing loops short).
const DMA_MAX: u64 = 1 << 30;

global_asm!(
    ".pushsection .pool, \"aw\", @nobits",
    ".balign 4096",
    ".global flotilla_pt_pool",
    "flotilla_pt_pool:",
    ".space {size}",
    ".popsection",
    size = const PT_POOL_PAGES * PAGE as usize,
);

extern "C" {
    static flotilla_pt_pool: u8;
    static __image_end: u8;
}

struct State {
    boot: Option<&'static BootInfo>,
    pt_pages_used: usize,
    dma_start: u64,
    dma_next: u64,
    dma_end: u64,
    dma_ready: bool,
    /// The arena `dma_alloc` serves from while one is in use: (next, end).
    arena: Option<(u64, u64)>,
}

static STATE: Global<State> = Global::new(State {
    boot: None,
    pt_pages_used: 0,
    dma_start: 0,
    dma_next: 0,
    dma_end: 0,
    dma_ready: false,
    arena: None,
});

fn state() -> &'static mut State {
    // SAFETY: only the BSP uses this module, from ring 0 and never from interrupt handlers, so
    // there is one user at a time.
    unsafe { STATE.get_mut() }
}

/// Gives the module the memory map (for the DMA pool and to keep RAM cached).
pub fn init(boot: &'static BootInfo) {
    state().boot = Some(boot);
}

fn read_entry(addr: u64) -> u64 {
    // SAFETY: page-table pages are identity mapped RAM (boot tables in .data, pool pages).
    unsafe { core::ptr::read_volatile(addr as usize as *const u64) }
}

fn write_entry(addr: u64, value: u64) {
    // SAFETY: as in `read_entry`; the entries written only add mappings or make them uncached.
    unsafe { core::ptr::write_volatile(addr as usize as *mut u64, value) }
}

fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Reloading CR3 flushes this CPU's TLB (the APs never touched the changed ranges).
fn flush_tlb() {
    // SAFETY: same page tables, reloaded.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) }
}

/// Physical address width from CPUID 0x80000008 (36 if the leaf is missing).
fn phys_limit() -> u64 {
    let max_ext = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    let bits = if max_ext >= 0x8000_0008 {
        core::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff
    } else {
        36
    };
    if (32..64).contains(&bits) {
        1u64 << bits
    } else {
        1u64 << 36
    }
}

/// A zeroed page-table page from the static pool.
fn table_page() -> Option<u64> {
    let state = state();
    if state.pt_pages_used == PT_POOL_PAGES {
        console::error("memory: page-table pool (")
            .dec(PT_POOL_PAGES as u64)
            .s(" pages) exhausted")
            .end();
        return None;
    }
    let page = &raw const flotilla_pt_pool as u64 + state.pt_pages_used as u64 * PAGE;
    state.pt_pages_used += 1;
    for i in 0..ENTRIES {
        write_entry(page + i * 8, 0);
    }
    Some(page)
}

/// The page directory covering `addr`, creating the PDPT / PD on the way (a new PD maps its
/// whole GiB as uncached 2 MiB pages). None if the pool ran out or a 1 GiB page is in the way.
fn page_directory(addr: u64) -> Option<u64> {
    let pml4 = read_cr3() & ADDR_MASK;
    let pml4e_addr = pml4 + ((addr >> 39) & (ENTRIES - 1)) * 8;
    let mut pml4e = read_entry(pml4e_addr);
    if pml4e & PRESENT == 0 {
        pml4e = table_page()? | TABLE_FLAGS;
        write_entry(pml4e_addr, pml4e);
    }
    let pdpte_addr = (pml4e & ADDR_MASK) + ((addr >> 30) & (ENTRIES - 1)) * 8;
    let mut pdpte = read_entry(pdpte_addr);
    if pdpte & PRESENT == 0 {
        let pd = table_page()?;
        let gib = addr & !((1 << 30) - 1);
        for i in 0..ENTRIES {
            write_entry(pd + i * 8, (gib + i * LARGE) | DEVICE_PAGE_FLAGS);
        }
        pdpte = pd | TABLE_FLAGS;
        write_entry(pdpte_addr, pdpte);
    }
    if pdpte & HUGE != 0 {
        console::error("memory: ")
            .hex(addr)
            .s(" is inside a 1 GiB page")
            .end();
        return None;
    }
    Some(pdpte & ADDR_MASK)
}

fn holds_ram(start: u64, end: u64) -> bool {
    state().boot.is_some_and(|boot| {
        boot.memmap()
            .iter()
            .any(|r| r.kind == MEMORY_RAM && r.addr < end && start < r.addr.saturating_add(r.size))
    })
}

/// Makes `[addr, addr + len)` accessible as device memory (identity mapped, uncached, ring 3
/// too). False, after an error line, if the range is empty, starts at 0, or is not mappable.
pub fn map_mmio(addr: u64, len: u64) -> bool {
    map(addr, len, false)
}

/// Makes `[addr, addr + len)` accessible as RAM (identity mapped, write-back, ring 3 too): the
/// 2 MiB pages holding it, whatever was mapped there. For memory the VMM added at run time;
/// false, after an error line, as for [`map_mmio`].
pub fn map_ram(addr: u64, len: u64) -> bool {
    map(addr, len, true)
}

fn map(addr: u64, len: u64, ram: bool) -> bool {
    let limit = MAP_LIMIT.min(phys_limit());
    let end = match addr.checked_add(len) {
        Some(end) if addr != 0 && len != 0 && end <= limit => end,
        _ => {
            console::error(if ram {
                "memory: cannot map RAM range "
            } else {
                "memory: cannot map device range "
            })
            .hex(addr)
            .s("+")
            .hex(len)
            .s(" (limit ")
            .hex(limit)
            .s(")")
            .end();
            return false;
        }
    };
    let mut changed = false;
    let mut page = addr & !(LARGE - 1);
    while page < end {
        let Some(pd) = page_directory(page) else {
            return false;
        };
        let entry_addr = pd + ((page >> 21) & (ENTRIES - 1)) * 8;
        let entry = read_entry(entry_addr);
        if ram {
            if entry != page | RAM_PAGE_FLAGS {
                write_entry(entry_addr, page | RAM_PAGE_FLAGS);
                changed = true;
            }
        } else if entry & PRESENT == 0 {
            write_entry(entry_addr, page | DEVICE_PAGE_FLAGS);
            changed = true;
        } else if entry & HUGE != 0
            && entry & (PCD | PWT) != (PCD | PWT)
            && !holds_ram(page, page + LARGE)
        {
            write_entry(entry_addr, entry | PCD | PWT);
            changed = true;
        }
        page += LARGE;
    }
    if changed {
        flush_tlb();
    }
    true
}

/// Whether `[start, end)` overlaps RAM of the boot memory map.
pub fn overlaps_boot_ram(start: u64, end: u64) -> bool {
    holds_ram(start, end)
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// Picks the largest free RAM range above the image and below 4 GiB.
fn dma_setup() {
    let state = state();
    state.dma_ready = true;
    let Some(boot) = state.boot else {
        console::error("memory: no memory map for the DMA pool").end();
        return;
    };
    let image_end = &raw const __image_end as u64;
    let mut best = (0, 0);
    for region in boot.memmap().iter().filter(|r| r.kind == MEMORY_RAM) {
        let Some(start) = align_up(region.addr.max(image_end), LARGE) else {
            continue;
        };
        let end = region
            .addr
            .saturating_add(region.size)
            .min(crate::arch::phys::MAPPED_END)
            & !(PAGE - 1);
        if end > start && end - start > best.1 - best.0 && boot.is_free_ram(start, end) {
            best = (start, end);
        }
    }
    if best.1 == best.0 {
        console::error("memory: no free RAM for the DMA pool").end();
        return;
    }
    state.dma_start = best.0;
    state.dma_next = best.0;
    state.dma_end = best.1.min(best.0 + DMA_MAX);
}

/// `size` bytes aligned to `align` (a power of two), not zeroed; None when the pool (or the
/// arena in use) is used up.
pub fn dma_alloc(size: u64, align: u64) -> Option<u64> {
    if !state().dma_ready {
        dma_setup();
    }
    let state = state();
    if let Some((next, end)) = state.arena {
        let start = align_up(next, align.max(16))?;
        let stop = start.checked_add(size).filter(|&stop| stop <= end)?;
        state.arena = Some((stop, end));
        return Some(start);
    }
    let start = align_up(state.dma_next, align.max(16))?;
    let end = start.checked_add(size)?;
    if end > state.dma_end {
        return None;
    }
    state.dma_next = end;
    Some(start)
}

/// As [`dma_alloc`], zeroed (in ring 3, where it runs at native speed).
pub fn dma_alloc_zeroed(size: u64, align: u64) -> Option<u64> {
    let addr = dma_alloc(size, align)?;
    zero(addr, size);
    Some(addr)
}

/// A part of the DMA pool set aside for one user, whose allocations it serves again and again.
#[derive(Clone, Copy)]
pub struct Arena {
    start: u64,
    end: u64,
}

/// An arena of `size` bytes (page aligned) from the pool; None when the pool is used up.
pub fn dma_arena(size: u64) -> Option<Arena> {
    end_arena();
    let start = dma_alloc(size, PAGE)?;
    Some(Arena {
        start,
        end: start + size,
    })
}

/// Serves `dma_alloc` from `arena`, from its start (whatever it held before is given up),
/// until [`end_arena`].
pub fn begin_arena(arena: Arena) {
    state().arena = Some((arena.start, arena.end));
}

/// Back to serving `dma_alloc` from the pool.
pub fn end_arena() {
    state().arena = None;
}

/// The DMA pool's range `[start, end)` (empty if there is no free RAM).
pub fn dma_range() -> (u64, u64) {
    if !state().dma_ready {
        dma_setup();
    }
    let state = state();
    (state.dma_start, state.dma_end)
}

/// Bytes left in the DMA pool.
pub fn dma_remaining() -> u64 {
    if !state().dma_ready {
        dma_setup();
    }
    let state = state();
    state.dma_end.saturating_sub(state.dma_next)
}

/// Zeroes RAM we own, in ring 3.
pub fn zero(addr: u64, len: u64) {
    let mut work = || {
        // SAFETY: the caller owns [addr, addr + len) (DMA pool memory).
        unsafe { core::ptr::write_bytes(addr as usize as *mut u8, 0, len as usize) };
        0
    };
    if user::call(&mut work).is_err() {
        console::error("memory: zeroing ")
            .hex(addr)
            .s(" faulted")
            .end();
    }
}
