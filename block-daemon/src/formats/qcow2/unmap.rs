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
use std::sync::Arc;

use ipc::BlockCounters;

/// Contiguous clusters to punch: the first one and how many.
pub type Run = (u64, u64);

/// The state of passing frees down (part of `Meta`, whose `sync` punches).
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

impl Unmap {
    /// An operation whose frees are passed down begins; false when one already runs
    /// (the outer one goes on).
    pub fn begin(&mut self) -> bool {
        if self.passing.is_some() {
            return false;
        }
        self.operations += 1;
        self.passing = Some(self.operations);
        true
    }

    /// The operation `begin` began ends.
    pub fn end(&mut self) {
        self.passing = None;
    }

    /// References to clusters `first..first + n` will be dropped later (at the next
    /// sync).
    pub fn note_release(&mut self, first: u64, n: u64) {
        if let (Some(op), Some(_)) = (self.passing, &self.counters) {
            self.dropped.extend((first..first + n).map(|c| (c, op)));
        }
    }

    /// The refcount of cluster `c` was lowered to `new`.
    pub fn note_refcount_drop(&mut self, c: u64, new: u64) {
        if self.counters.is_none() {
            return;
        }
        let passed = self.dropped.remove(&c).or(self.passing);
        if let (0, Some(op)) = (new, passed) {
            self.waiting.insert((op, c));
            self.waiting_clusters.insert(c);
        }
    }

    /// Whether cluster `c` is free but not yet punched (not to be allocated until it
    /// is).
    pub fn waiting_for_punch(&self, c: u64) -> bool {
        self.waiting_clusters.contains(&c)
    }

    /// Whether freed clusters wait for a sync to be punched.
    pub fn punches_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Takes the clusters waiting as ranges (first cluster, count): contiguous
    /// clusters of one operation make one range. With the counters to count them in.
    pub fn take_runs(&mut self) -> Option<(Arc<BlockCounters>, Vec<Run>)> {
        let counters = self.counters.clone()?;
        self.waiting_clusters.clear();
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        for (op, c) in std::mem::take(&mut self.waiting) {
            match runs.last_mut() {
                Some((o, first, n)) if *o == op && *first + *n == c => *n += 1,
                _ => runs.push((op, c, 1)),
            }
        }
        Some((counters, runs.into_iter().map(|(_, c, n)| (c, n)).collect()))
    }
}
