//! Dirty-page logging for live migration (vhost-user VHOST_F_LOG_ALL with the protocol
//! feature LOG_SHMFD): the log the frontend shares with SET_LOG_BASE, whether logging is
//! on, and marking in the log the guest pages written on a device's behalf.
//!
//! The log is a bitmap of 4 KiB pages indexed by guest physical address: bit `p % 8` of
//! byte `p / 8` stands for the page at `p * 4096` (QEMU's vhost_log). The frontend reads
//! and clears it while bits are set here, so they are set with atomic `fetch_or`, and
//! only after the write they stand for has been made: a bit set before the write could
//! be cleared and its page sent before the write lands.
//!
//! Logging is on while the frontend has acked F_LOG_ALL and a log is mapped. Each ring
//! holds the connection's `DirtyLog`; with logging off a completion costs one relaxed
//! load.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::shared_mapping::SharedMapping;

/// VHOST_LOG_PAGE.
const PAGE: u64 = 0x1000;
/// One split-ring descriptor.
const DESC_BYTES: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("mapping the dirty log: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "dirty log of {size} bytes at offset {offset} does not fit in its file of {file} bytes"
    )]
    Outside { size: u64, offset: u64, file: u64 },
}

/// One log the frontend gave (SET_LOG_BASE), mapped shared and writable. Unmapped when
/// dropped, which the connection's lock keeps from happening while a bit is being set.
pub(crate) struct LogMap(SharedMapping);

impl LogMap {
    /// Maps `size` bytes of `file` from `offset`. The file must hold all of them: a
    /// shared mapping past its end would fault on the first bit set there.
    pub fn map(file: &File, size: u64, offset: u64) -> Result<LogMap, LogError> {
        let file_len = file.metadata()?.len();
        let fits = offset.checked_add(size).is_some_and(|end| end <= file_len);
        match usize::try_from(size) {
            Ok(len) if fits && len > 0 => Ok(LogMap(SharedMapping::new(file, offset, len)?)),
            _ => Err(LogError::Outside {
                size,
                offset,
                file: file_len,
            }),
        }
    }

    /// How many pages the log covers.
    pub fn pages(&self) -> u64 {
        self.0.len() as u64 * 8
    }

    /// How many pages at the end of guest memory `mem` the log does not reach.
    pub fn short_of(&self, mem: &GuestMemoryMmap) -> u64 {
        (mem.last_addr().0 / PAGE + 1).saturating_sub(self.pages())
    }

    fn bytes(&self) -> &[AtomicU8] {
        // SAFETY: `len` bytes are mapped from `ptr` for as long as self lives; AtomicU8
        // has the size and alignment of u8, and the log is only reached as atomics here.
        unsafe { std::slice::from_raw_parts(self.0.ptr().cast::<AtomicU8>(), self.0.len()) }
    }

    /// Marks pages `first..=last`, as far as the log reaches; false if it does not reach
    /// all of them.
    fn mark_pages(&self, first: u64, last: u64) -> bool {
        let bytes = self.bytes();
        let end = last.min(self.pages().saturating_sub(1));
        let mut page = first;
        while page <= end && page < self.pages() {
            let byte = page / 8;
            let high = end.min(byte * 8 + 7) % 8;
            let mask = (0xffu8 << (page % 8)) & (0xffu8 >> (7 - high));
            // Release: the write this bit stands for is seen by whoever sees the bit.
            bytes[byte as usize].fetch_or(mask, Ordering::Release);
            page = (byte + 1) * 8;
        }
        last < self.pages()
    }
}

#[derive(Default)]
struct LogState {
    log_all: bool,
    map: Option<LogMap>,
}

/// A connection's logging: set by its request handler, used by its rings.
#[derive(Default)]
pub struct DirtyLog {
    /// `log_all` and a map, kept apart for the one cheap look per completion.
    on: AtomicBool,
    state: RwLock<LogState>,
    /// Writes that fell outside the log, for limiting the warnings about them.
    misses: AtomicU64,
}

impl DirtyLog {
    fn update(&self, change: impl FnOnce(&mut LogState)) {
        let mut state = self.state.write();
        change(&mut state);
        self.on
            .store(state.log_all && state.map.is_some(), Ordering::Relaxed);
    }

    /// SET_FEATURES: F_LOG_ALL acked or not.
    pub(crate) fn set_log_all(&self, log_all: bool) {
        self.update(|s| s.log_all = log_all);
    }

    /// SET_LOG_BASE: `map` replaces the log there was (unmapped here, as no completion
    /// can be marking it while this holds the lock).
    pub(crate) fn set_map(&self, map: LogMap) {
        self.update(|s| s.map = Some(map));
    }

    /// Logging is on (a relaxed look: the one cost of logging while it is off).
    pub(crate) fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// The log, held for marking one completion's writes; None when logging is off.
    pub(crate) fn marker(&self) -> Option<Marker<'_>> {
        let state = self.state.read();
        if !state.log_all {
            return None;
        }
        let map = RwLockReadGuard::try_map(state, |s| s.map.as_ref()).ok()?;
        Some(Marker { map, log: self })
    }
}

/// The log, held while one completion's writes are marked in it.
pub(crate) struct Marker<'a> {
    map: MappedRwLockReadGuard<'a, LogMap>,
    log: &'a DirtyLog,
}

impl Marker<'_> {
    /// Marks the pages of `len` bytes written at guest address `addr`. A write the log
    /// does not reach is a frontend whose log is too small for its guest: said (at
    /// first, then once in a thousand times), never a write outside the log.
    pub fn mark(&self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = addr.saturating_add(len - 1);
        if !self.map.mark_pages(addr / PAGE, last / PAGE) {
            let n = self.log.misses.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 10 || n.is_multiple_of(1000) {
                log::warn!(
                    "a write at {addr:#x}+{len:#x} is beyond the dirty log of {} pages: not \
                     all of it is logged [{n} so far]",
                    self.map.pages()
                );
            }
        }
    }

    /// Marks the device-writable buffers of the chain at `head` (the ring's descriptor
    /// table at `table`, of `size` entries), as far as they lie in guest memory: what the
    /// device may have written into them before completing the chain.
    pub fn mark_chain(&self, mem: &GuestMemoryMmap, table: u64, size: u16, head: u16) {
        let last = mem.last_addr().0;
        writable_buffers(mem, table, size, head, |addr, len| {
            if addr <= last {
                self.mark(addr, u64::from(len).min(last - addr + 1));
            }
        });
    }
}

/// Calls `visit` with the address and length of each device-writable descriptor of the
/// chain at `head`, an indirect table followed. The guest wrote the table and may have
/// broken the chain: it is followed as far as it is valid (every index inside its table,
/// every descriptor readable, one indirect table, at most `virtio::MAX_CHAIN`
/// descriptors and 4 GiB of buffers, as `virtio::read_chain` takes a chain).
pub(crate) fn writable_buffers(
    mem: &GuestMemoryMmap,
    table: u64,
    size: u16,
    head: u16,
    mut visit: impl FnMut(u64, u32),
) {
    let (mut table, mut count, mut index) = (table, u64::from(size), u64::from(head));
    let mut indirect = false;
    let mut bytes = 0u64;
    // One more step than descriptors, for the indirect one.
    for _ in 0..=virtio::MAX_CHAIN {
        let Some(at) = table
            .checked_add(index * DESC_BYTES)
            .filter(|_| index < count)
        else {
            return;
        };
        let Ok(desc) = mem.read_obj::<Descriptor>(GuestAddress(at)) else {
            return;
        };
        if desc.refers_to_indirect_table() {
            if indirect {
                return;
            }
            indirect = true;
            (table, count, index) = (desc.addr().0, u64::from(desc.len()) / DESC_BYTES, 0);
            continue;
        }
        bytes += u64::from(desc.len());
        if bytes > u64::from(u32::MAX) {
            return;
        }
        if desc.is_write_only() {
            visit(desc.addr().0, desc.len());
        }
        if !desc.has_next() {
            return;
        }
        index = u64::from(desc.next());
    }
}

#[cfg(test)]
mod tests;
