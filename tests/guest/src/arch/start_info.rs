//! The PVH `struct hvm_start_info`: validated and copied (command line, memory map, RSDP
//! address) into a static before anything writes low memory, where the VMM may have put it.

use crate::arch::phys::{le_u32, le_u64, range_ok, slice};
use crate::console;
use crate::sync::Global;

const MAGIC: u32 = 0x336e_c578;
const START_INFO_V0_LEN: u64 = 48;
const START_INFO_V1_LEN: u64 = 56;
const MEMMAP_ENTRY_LEN: u64 = 24;
pub const MAX_MEMMAP: usize = 128;
pub const CMDLINE_MAX: usize = 1024;
/// `hvm_memmap_table_entry.type` of usable RAM (same numbering as E820).
pub const MEMORY_RAM: u32 = 1;

#[derive(Clone, Copy)]
pub struct MemRegion {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct BootInfo {
    pub version: u32,
    pub rsdp: u64,
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    memmap: [MemRegion; MAX_MEMMAP],
    memmap_len: usize,
    /// Where the VMM put start_info, the memory map and the command line: even though they are
    /// copied, low-memory users (the SMP trampoline) keep clear of them.
    handed_over: [(u64, u64); 3],
}

static BOOT: Global<BootInfo> = Global::new(BootInfo {
    version: 0,
    rsdp: 0,
    cmdline: [0; CMDLINE_MAX],
    cmdline_len: 0,
    memmap: [MemRegion {
        addr: 0,
        size: 0,
        kind: 0,
    }; MAX_MEMMAP],
    memmap_len: 0,
    handed_over: [(0, 0); 3],
});

impl BootInfo {
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }

    pub fn memmap(&self) -> &[MemRegion] {
        &self.memmap[..self.memmap_len]
    }

    /// Usable RAM (type 1) in MiB, rounded up.
    pub fn usable_mib(&self) -> u64 {
        let bytes = self
            .memmap()
            .iter()
            .filter(|r| r.kind == MEMORY_RAM)
            .fold(0u64, |sum, r| sum.saturating_add(r.size));
        bytes.div_ceil(1 << 20)
    }

    /// Whether `[start, end)` is usable RAM that nothing in the memory map also claims and that
    /// holds nothing the VMM handed us.
    pub fn is_free_ram(&self, start: u64, end: u64) -> bool {
        let overlaps = |a: u64, b: u64| a < end && start < b;
        let in_ram = self.memmap().iter().any(|r| {
            r.kind == MEMORY_RAM && r.addr <= start && end <= r.addr.saturating_add(r.size)
        });
        let claimed = self
            .memmap()
            .iter()
            .any(|r| r.kind != MEMORY_RAM && overlaps(r.addr, r.addr.saturating_add(r.size)));
        let handed_over = self.handed_over.iter().any(|&(a, b)| overlaps(a, b));
        in_ram && !claimed && !handed_over
    }
}

/// Copies start_info at `paddr`. Problems are error lines; what could be read is kept.
pub fn init(paddr: u64) -> &'static BootInfo {
    // SAFETY: single-threaded boot; nothing else references BOOT yet.
    let boot = unsafe { BOOT.get_mut() };
    copy(boot, paddr);
    boot
}

fn copy(boot: &mut BootInfo, paddr: u64) {
    if !range_ok(paddr, START_INFO_V0_LEN) {
        console::error("start_info at ")
            .hex(paddr)
            .s(" is outside the mapped 4 GiB")
            .end();
        return;
    }
    // SAFETY: range_ok(paddr, V0_LEN) above; the VMM does not change start_info while we boot.
    let head = unsafe { slice(paddr, START_INFO_V0_LEN as usize) };
    let magic = le_u32(head, 0);
    if magic != MAGIC {
        console::error("start_info bad magic=")
            .hex(u64::from(magic))
            .end();
        return;
    }
    boot.version = le_u32(head, 4);
    let cmdline_paddr = le_u64(head, 24);
    boot.rsdp = le_u64(head, 32);
    boot.handed_over[0] = (paddr, paddr + START_INFO_V1_LEN);

    if cmdline_paddr != 0 {
        copy_cmdline(boot, cmdline_paddr);
    }

    if boot.version < 1 || !range_ok(paddr, START_INFO_V1_LEN) {
        console::error("start_info version=")
            .dec(u64::from(boot.version))
            .s(" has no memory map")
            .end();
        return;
    }
    // SAFETY: range_ok(paddr, V1_LEN) just checked; stable as above.
    let head = unsafe { slice(paddr, START_INFO_V1_LEN as usize) };
    let memmap_paddr = le_u64(head, 40);
    let entries = le_u32(head, 48) as usize;
    if entries == 0 {
        console::error("start_info memory map is empty").end();
        return;
    }
    let used = entries.min(MAX_MEMMAP);
    if used < entries {
        console::error("start_info memory map has ")
            .dec(entries as u64)
            .s(" entries, using the first ")
            .dec(MAX_MEMMAP as u64)
            .end();
    }
    let len = used as u64 * MEMMAP_ENTRY_LEN;
    if !range_ok(memmap_paddr, len) {
        console::error("start_info memmap_paddr=")
            .hex(memmap_paddr)
            .s(" is outside the mapped 4 GiB")
            .end();
        return;
    }
    boot.handed_over[1] = (memmap_paddr, memmap_paddr + len);
    // SAFETY: range_ok(memmap_paddr, len) just checked; the VMM does not change the table.
    let table = unsafe { slice(memmap_paddr, len as usize) };
    let entries = table.chunks_exact(MEMMAP_ENTRY_LEN as usize);
    for (slot, entry) in boot.memmap[..used].iter_mut().zip(entries) {
        *slot = MemRegion {
            addr: le_u64(entry, 0),
            size: le_u64(entry, 8),
            kind: le_u32(entry, 16),
        };
    }
    boot.memmap_len = used;
}

fn copy_cmdline(boot: &mut BootInfo, paddr: u64) {
    // Read at most what fits, stopping at the terminating NUL; never past the mapped 4 GiB.
    let max =
        (crate::arch::phys::MAPPED_END.saturating_sub(paddr)).min(CMDLINE_MAX as u64) as usize;
    if !range_ok(paddr, max as u64) || max == 0 {
        console::error("start_info cmdline_paddr=")
            .hex(paddr)
            .s(" is outside the mapped 4 GiB")
            .end();
        return;
    }
    // SAFETY: range checked.
    let bytes = unsafe { slice(paddr, max) };
    let len = match bytes.iter().position(|&b| b == 0) {
        Some(len) => len,
        None => {
            console::error("start_info cmdline longer than ")
                .dec(CMDLINE_MAX as u64 - 1)
                .s(" bytes, truncated")
                .end();
            CMDLINE_MAX - 1
        }
    };
    let len = len.min(max).min(CMDLINE_MAX - 1);
    boot.cmdline[..len].copy_from_slice(&bytes[..len]);
    boot.cmdline_len = len;
    boot.handed_over[2] = (paddr, paddr + len as u64 + 1);
}
