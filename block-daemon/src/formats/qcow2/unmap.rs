//! Passing freed clusters down to the file, as QEMU's qcow2 does with discard=unmap
//! (its pass-discard-request and pass-discard-snapshot, both on then): a host cluster
//! whose refcount falls to 0 because the guest discarded it (a discard, a write-zeroes
//! with unmap), because a snapshot operation dropped it, or because a shrink cut it
//! off, is punched out of the file (BLKDISCARD on a block device), so its space goes
//! back to the host. Other frees (a table moved, a cluster copied on write) are not
//! passed, as QEMU's pass-discard-other is off by default.
//!
//! A cluster is punched only once it is free for good: its refcount is 0 and that
//! refcount has reached stable storage (the punch follows a sync), no mapped request
//! is in flight (one might still be reading it), and until then the allocator does not
//! hand it out again (`waiting`). Contiguous clusters freed by one operation (one
//! guest request, one snapshot operation) are punched as one range, and each range is
//! one discard in the file-level counters, as QEMU merges the discard regions of one
//! request (QEMU punches at the end of the request; here the punch waits for the sync
//! that makes the refcounts durable).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use ipc::BlockCounters;

use crate::formats::host_file;
use crate::formats::qcow2::meta::Meta;
use crate::formats::FormatError;

/// The state of passing frees down (part of `Meta`).
#[derive(Default)]
pub struct Unmap {
    /// Where the punches are counted; None: nothing is passed down (discard=ignore, a
    /// backing file, a read-only node).
    pub counters: Option<Arc<BlockCounters>>,
    /// The operation whose frees are passed down, while one runs (a number per
    /// operation: ranges of different operations are not merged).
    passing: Option<u64>,
    /// Operations counted so far.
    operations: u64,
    /// Clusters whose reference such an operation dropped, waiting for the refcount
    /// update (deferred to the next sync) to tell whether they became free; with the
    /// operation.
    dropped: HashMap<u64, u64>,
    /// Free clusters to punch after the next sync: (operation, cluster), in order.
    waiting: BTreeSet<(u64, u64)>,
    /// The clusters of `waiting`, for the allocator's look-up.
    waiting_clusters: HashSet<u64>,
}

impl Meta {
    /// Runs `f` with its frees passed down to the file.
    pub fn passing_frees<T>(
        &mut self,
        f: impl FnOnce(&mut Meta) -> Result<T, FormatError>,
    ) -> Result<T, FormatError> {
        if self.unmap.passing.is_some() {
            return f(self);
        }
        self.unmap.operations += 1;
        self.unmap.passing = Some(self.unmap.operations);
        let r = f(self);
        self.unmap.passing = None;
        r
    }

    /// References to `first..first + n` will be dropped later (at the next sync).
    pub fn note_release(&mut self, first: u64, n: u64) {
        if let (Some(op), Some(_)) = (self.unmap.passing, &self.unmap.counters) {
            self.unmap
                .dropped
                .extend((first..first + n).map(|c| (c, op)));
        }
    }

    /// The refcount of `c` was lowered to `new`.
    pub fn note_refcount_drop(&mut self, c: u64, new: u64) {
        if self.unmap.counters.is_none() {
            return;
        }
        let passed = self.unmap.dropped.remove(&c).or(self.unmap.passing);
        if let (0, Some(op)) = (new, passed) {
            self.unmap.waiting.insert((op, c));
            self.unmap.waiting_clusters.insert(c);
        }
    }

    /// Whether `c` is free but not yet punched (not to be allocated until it is).
    pub fn waiting_for_punch(&self, c: u64) -> bool {
        self.unmap.waiting_clusters.contains(&c)
    }

    /// Whether freed clusters wait for a sync to be punched.
    pub fn punches_waiting(&self) -> bool {
        !self.unmap.waiting.is_empty()
    }

    /// Punches the clusters waiting, in contiguous ranges, after a sync made their
    /// refcounts durable; nothing while a mapped request is in flight. A punch that
    /// fails is counted and otherwise ignored (the cluster is free all the same), as
    /// QEMU's qcow2_process_discards does.
    pub fn punch_freed(&mut self) {
        let Some(counters) = self.unmap.counters.clone() else {
            return;
        };
        if self.unmap.waiting.is_empty() || self.mapped.in_flight() > 0 {
            return;
        }
        let fd = self.file.as_raw_fd();
        let bits = self.cluster_bits;
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        self.unmap.waiting_clusters.clear();
        for (op, c) in std::mem::take(&mut self.unmap.waiting) {
            match runs.last_mut() {
                Some((o, first, n)) if *o == op && *first + *n == c => *n += 1,
                _ => runs.push((op, c, 1)),
            }
        }
        for (_, first, n) in runs {
            let (offset, len) = (first << bits, n << bits);
            // Nothing past the end of the file is allocated on the host.
            let len = len.min(self.file_size.saturating_sub(offset));
            if len == 0 {
                continue;
            }
            let r = host_file::discard(fd, self.block_device, offset, len);
            if let Err(e) = &r {
                log::warn!("qcow2: discarding {len} bytes at {offset:#x} of the file: {e}");
            }
            host_file::count_discard(&counters, len, &r);
        }
    }
}
