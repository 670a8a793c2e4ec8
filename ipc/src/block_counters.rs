//! A disk's I/O counters in a page of shared memory: a memfd the gateway creates when the
//! disk is attached and hands each of the disk's daemons in turn (with the open call). A
//! daemon counts into the page as requests complete, so what a daemon counted survives
//! it, to the last request, even when it is SIGKILLed, and the next daemon counts on from
//! there: query-blockstats's counters only go up, as QEMU's do, and the gateway can read
//! them while no daemon runs. Only monotonic counters live here (plus the time of the
//! last completion); latency windows (timed stats) are each daemon's own.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::messages::{BlockStats, OpCounters};
use crate::shm::{self, SharedMapping};

/// One kind of operation's counters (see `OpCounters`).
#[repr(C)]
#[derive(Default)]
pub struct SharedOpCounters {
    pub operations: AtomicU64,
    pub bytes: AtomicU64,
    pub failed: AtomicU64,
    pub invalid: AtomicU64,
    pub total_time_ns: AtomicU64,
}

impl SharedOpCounters {
    fn load(&self) -> OpCounters {
        OpCounters {
            operations: self.operations.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            invalid: self.invalid.load(Ordering::Relaxed),
            total_time_ns: self.total_time_ns.load(Ordering::Relaxed),
        }
    }
}

/// The page's layout. Every field is an atomic: any bits are a valid value, whatever a
/// dead or misbehaving daemon left there.
#[repr(C)]
#[derive(Default)]
pub struct CountersPage {
    pub read: SharedOpCounters,
    /// Writes and write-zeroes.
    pub write: SharedOpCounters,
    pub flush: SharedOpCounters,
    /// Discards.
    pub unmap: SharedOpCounters,
    /// Refused requests of no known type.
    pub invalid_other: AtomicU64,
    /// Highest byte offset written + 1.
    pub wr_highest_offset: AtomicU64,
    /// CLOCK_MONOTONIC (system-wide, so comparable across processes) of the last
    /// completed operation, in ns; 0: none yet.
    pub last_completion_ns: AtomicU64,
    /// Discards that reached the image file.
    pub discard_ok: AtomicU64,
    pub discard_bytes_ok: AtomicU64,
    pub discard_failed: AtomicU64,
}

/// Size of the memfd that holds a `CountersPage`.
pub const COUNTERS_PAGE_SIZE: u64 = 4096;
const _: () = assert!(std::mem::size_of::<CountersPage>() as u64 <= COUNTERS_PAGE_SIZE);

#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("counters page: {0}")]
    Io(#[from] std::io::Error),
    #[error("counters page is {0} bytes, smaller than {COUNTERS_PAGE_SIZE}")]
    TooSmall(u64),
}

/// CLOCK_MONOTONIC now, in ns (the clock `last_completion_ns` is on).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A mapping of a disk's counters page.
pub struct BlockCounters {
    map: SharedMapping,
    fd: OwnedFd,
}

// SAFETY: the page is only accessed through atomics.
unsafe impl Send for BlockCounters {}
// SAFETY: as for Send: every access from any thread (or process) is atomic.
unsafe impl Sync for BlockCounters {}

impl BlockCounters {
    /// A new page, all zeroes.
    pub fn create() -> Result<BlockCounters, CountersError> {
        let fd = shm::memfd(c"flotilla-blk-counters", COUNTERS_PAGE_SIZE, false)?;
        BlockCounters::map(fd)
    }

    /// Maps the page in `fd` (a memfd of at least COUNTERS_PAGE_SIZE bytes).
    pub fn map(fd: OwnedFd) -> Result<BlockCounters, CountersError> {
        let len = shm::file_len(fd.as_fd())?;
        if len < COUNTERS_PAGE_SIZE {
            return Err(CountersError::TooSmall(len));
        }
        let map = SharedMapping::new(fd.as_fd(), COUNTERS_PAGE_SIZE as usize)?;
        Ok(BlockCounters { map, fd })
    }

    /// The memfd, to hand a daemon.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn page(&self) -> &CountersPage {
        // SAFETY: mapped (page-aligned, so aligned for atomics) for our lifetime, and at
        // least a page long; every field is an atomic, valid for any bits.
        unsafe { self.map.ptr().cast::<CountersPage>().as_ref() }
    }

    /// Puts the page's counters into `stats` (everything else in it is left alone).
    pub fn fill(&self, stats: &mut BlockStats) {
        let p = self.page();
        stats.read = p.read.load();
        stats.write = p.write.load();
        stats.flush = p.flush.load();
        stats.unmap = p.unmap.load();
        stats.wr_highest_offset = p.wr_highest_offset.load(Ordering::Relaxed);
        stats.idle_time_ns = match p.last_completion_ns.load(Ordering::Relaxed) {
            0 => None,
            last => Some(monotonic_ns().saturating_sub(last)),
        };
        stats.discard_ok = p.discard_ok.load(Ordering::Relaxed);
        stats.discard_bytes_ok = p.discard_bytes_ok.load(Ordering::Relaxed);
        stats.discard_failed = p.discard_failed.load(Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn two_mappings_see_one_page_and_it_outlives_either() {
        let first = BlockCounters::create().unwrap();
        first
            .page()
            .write
            .operations
            .fetch_add(3, Ordering::Relaxed);
        first.page().write.bytes.fetch_add(4096, Ordering::Relaxed);
        first
            .page()
            .last_completion_ns
            .store(monotonic_ns(), Ordering::Relaxed);
        let second = BlockCounters::map(first.fd().as_fd().try_clone_to_owned().unwrap()).unwrap();
        drop(first);
        second
            .page()
            .write
            .operations
            .fetch_add(1, Ordering::Relaxed);
        let mut stats = BlockStats {
            size: 7,
            ..BlockStats::default()
        };
        second.fill(&mut stats);
        assert_eq!(stats.write.operations, 4);
        assert_eq!(stats.write.bytes, 4096);
        assert_eq!(stats.size, 7, "not a counter: left alone");
        assert!(stats.idle_time_ns.is_some());
    }

    #[test]
    fn a_short_page_is_refused() {
        let page = BlockCounters::create().unwrap();
        let fd = page.fd().as_fd().try_clone_to_owned().unwrap();
        std::fs::File::from(fd.try_clone().unwrap())
            .set_len(8)
            .unwrap();
        assert!(matches!(
            BlockCounters::map(fd),
            Err(CountersError::TooSmall(8))
        ));
    }

    #[test]
    fn nothing_completed_means_no_idle_time() {
        let mut stats = BlockStats::default();
        BlockCounters::create().unwrap().fill(&mut stats);
        assert_eq!(stats.idle_time_ns, None);
    }
}
