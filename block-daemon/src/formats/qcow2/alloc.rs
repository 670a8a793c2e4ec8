//! Allocating writes without the metadata lock held over the data (as QEMU's qcow2
//! does them): a write mapping of a guest cluster that has no host cluster yet
//! reserves one, makes sure it reads as zeroes around the guest's bytes (a fresh
//! cluster past the old end of the file already does; a reused one is zeroed and
//! synced first), and hands it to the engine as a `File` extent. When the data is in
//! the file, the mapping's `Commit` (`LinkAllocations`) writes the L2 entry naming
//! the cluster: data before entry, so a crash between them leaks the cluster at most.
//! The engines end a batch of such requests at once (`Qcow2::finish_writes` ->
//! `finish_allocation_batch`): the entries are set in the cached tables, each table's
//! changed sectors go out as one write (under the lock, so no other request sees an
//! entry that is not in the file yet), and a failed write fails the requests whose
//! clusters it named (those clusters are leaked, not reused: the file may name them).
//!
//! While a cluster is being allocated, other writes to it join the allocation (they
//! write into the same host cluster; the first to complete links it), and the slow
//! path writes into it and links it too: a guest cluster is never allocated twice.
//! Reads of it see its old state until it is linked (the requests are concurrent).
//! Only clusters that read as zeroes before (unallocated without a backing file, or
//! zero clusters) are allocated this way; copy-on-write from a backing file, compressed
//! or shared clusters stay with the slow path.
//!
//! One case links at the same time as the data goes out instead of after it: see
//! `early_link` for when and why that is safe.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;

use std::os::fd::AsRawFd;

use crate::formats::qcow2::early_link::BLOCK;
use crate::formats::qcow2::layout::{put64, OFLAG_COPIED};
use crate::formats::qcow2::meta::{Allocating, Meta};
use crate::formats::qcow2::tables::Cluster;
use crate::formats::{Commit, Extent, FormatError};

/// Where one cluster of a write mapping goes.
enum Target {
    /// An allocated cluster written in place.
    Host(u64),
    /// A cluster being allocated by another request.
    Join(u64),
    /// A cluster to allocate.
    New,
}

/// A write mapping's extents and the guest clusters it claimed for allocation.
pub type WriteMapping = (Vec<Extent>, Vec<u64>);

/// The commit of a write mapping that allocated or joined the allocation of
/// `clusters` (guest cluster indices).
pub struct LinkAllocations {
    pub meta: Arc<Mutex<Meta>>,
    pub clusters: Vec<u64>,
}

impl Commit for LinkAllocations {
    fn commit(self: Box<Self>, written: bool) -> Result<(), FormatError> {
        self.meta.lock().finish_allocations(&self.clusters, written)
    }
}

/// The L2 entries a batch of finished requests linked in the cached tables and has not
/// written yet.
#[derive(Default)]
struct LinkBatch {
    /// Table offset -> its changed 512-byte sectors (first..last).
    pending: BTreeMap<u64, Range<usize>>,
    /// Requests waiting for a table's write: (request, guest cluster, table).
    deps: Vec<(usize, u64, u64)>,
    /// Guest clusters linked in this batch -> their table.
    linked: HashMap<u64, u64>,
    /// Guest clusters whose entry's write failed.
    failed: HashSet<u64>,
}

impl Meta {
    /// A write mapping of `offset..offset + len` (checked by the caller): the extents
    /// and the guest clusters it claimed for allocation (empty when it allocates
    /// nothing). When any cluster must go through the slow path, nothing is claimed.
    pub fn map_write(
        &mut self,
        offset: u64,
        len: u64,
        fd: i32,
        push: impl Fn(&mut Vec<Extent>, Extent),
    ) -> Result<Option<WriteMapping>, FormatError> {
        let cs = self.cluster_size();
        // A write to the cluster of the early link in flight (a join, or in place once
        // the entry is cached) must not complete before the entry is in the file.
        if let Some(gc) = self.links.as_ref().and_then(|l| l.in_flight()) {
            let last = self.cluster_of(offset + len.saturating_sub(1));
            if (self.cluster_of(offset)..=last).contains(&gc) {
                self.settle_early();
            }
        }
        let mut plan = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let n = (cs - at % cs).min(offset + len - at);
            let gc = self.cluster_of(at);
            let target = match self.lookup(gc)? {
                Cluster::Normal {
                    offset: host,
                    copied: true,
                } if host + cs <= self.file_size && !self.metadata.contains(&(host / cs)) => {
                    Target::Host(host)
                }
                Cluster::Unallocated | Cluster::Zero if self.allocating.contains_key(&gc) => {
                    match self.allocating.get(&gc) {
                        Some(a) if !a.linked => Target::Join(a.host),
                        _ => return Ok(None),
                    }
                }
                Cluster::Unallocated if self.backing.is_none() => Target::New,
                Cluster::Zero => Target::New,
                _ => return Ok(None),
            };
            plan.push((at, n, target));
            at += n;
        }
        let mut extents = Vec::new();
        let mut claimed = Vec::new();
        let early = plan.len() == 1 && self.links.as_ref().is_some_and(|l| l.in_flight().is_none());
        for (at, n, target) in plan {
            let gc = self.cluster_of(at);
            let host = match target {
                Target::Host(host) => host,
                Target::Join(host) => self.join(gc, host, &mut claimed),
                Target::New => match self.start_allocation(gc) {
                    Ok((host, fresh)) => {
                        let host = self.join(gc, host, &mut claimed);
                        if early && fresh {
                            if let Err(e) = self.link_early(gc, host) {
                                self.finish_allocations(&claimed, false)?;
                                return Err(e);
                            }
                        }
                        host
                    }
                    Err(e) => {
                        self.finish_allocations(&claimed, false)?;
                        return Err(e);
                    }
                },
            };
            push(
                &mut extents,
                Extent::File {
                    fd,
                    offset: host + at % cs,
                    len: n,
                },
            );
        }
        Ok(Some((extents, claimed)))
    }

    fn join(&mut self, gc: u64, host: u64, claimed: &mut Vec<u64>) -> u64 {
        if let Some(a) = self.allocating.get_mut(&gc) {
            a.writers += 1;
            claimed.push(gc);
        }
        host
    }

    /// Names `host` in guest cluster `gc`'s entry in the cached table and puts the
    /// entry's block in flight on the early link ring, the caller's data write going
    /// out next to it (`gc` is claimed, its fresh `host` unwritten: see `early_link`
    /// for why that order is safe). When the ring does not take it, the entry is put
    /// back and the cluster is linked the ordered way, after its data.
    fn link_early(&mut self, gc: u64, host: u64) -> Result<(), FormatError> {
        let (old, _) = self.lookup_raw(gc)?;
        let table = self.l2_for_write(gc)?;
        let idx = (gc % self.l2_entries()) as usize * 8;
        let start = idx & !(BLOCK - 1);
        let fd = self.file.as_raw_fd();
        let t = self.l2_table(table)?;
        put64(t, idx, host | OFLAG_COPIED);
        let block = t[start..start + BLOCK].to_vec();
        let submitted = self
            .links
            .as_mut()
            .is_some_and(|l| l.submit(fd, gc, table, table + start as u64, &block));
        if submitted {
            if let Some(a) = self.allocating.get_mut(&gc) {
                a.linked = true;
            }
        } else {
            put64(self.l2_table(table)?, idx, old);
        }
        Ok(())
    }

    /// Reserves a host cluster for guest cluster `gc`, reading as zeroes; whether it
    /// is fresh (past the file's old end, never written).
    fn start_allocation(&mut self, gc: u64) -> Result<(u64, bool), FormatError> {
        self.begin_change()?;
        // The L2 table now, so that linking later writes one entry.
        self.l2_for_write(gc)?;
        let cs = self.cluster_size();
        let (host, fresh) = self.take_data_cluster()?;
        self.check_overlap(host, cs)?;
        if !fresh {
            // A reused cluster holds old bytes: zeroes on stable storage before any
            // entry can name it.
            self.write(host, &vec![0u8; cs as usize])?;
            self.sync()?;
        }
        self.allocating.insert(
            gc,
            Allocating {
                host,
                writers: 0,
                linked: false,
                named_maybe: false,
            },
        );
        Ok((host, fresh))
    }

    /// Names `host` in guest cluster `gc`'s L2 entry, unless something else was
    /// written there meanwhile (a discard or write_zeroes that came in between).
    fn link(&mut self, gc: u64, host: u64) -> Result<bool, FormatError> {
        if !matches!(self.lookup(gc)?, Cluster::Unallocated | Cluster::Zero) {
            return Ok(false);
        }
        let table = self.l2_for_write(gc)?;
        self.set_l2_entry(table, gc, host | OFLAG_COPIED)?;
        Ok(true)
    }

    /// A request that claimed `clusters` ended (`written`: its data is in the file):
    /// the first successful one links each cluster; when the last writer of a
    /// cluster never linked it, the host cluster goes back to the allocator.
    pub fn finish_allocations(
        &mut self,
        clusters: &[u64],
        written: bool,
    ) -> Result<(), FormatError> {
        let mut results = self.finish_allocation_batch(&[(clusters, written)]);
        results.pop().unwrap_or(Ok(()))
    }

    /// `finish_allocations` for several requests at once (`ends`: each one's claimed
    /// clusters and whether its data is in the file), in order; their results. The
    /// entries linked here are set in the cached tables first and each table's changed
    /// sectors are written as one write (a request's result waits for the writes of
    /// the entries it depends on: the ones it linked or joined in this batch), so a
    /// failed write fails exactly the requests whose clusters it named.
    pub fn finish_allocation_batch(
        &mut self,
        ends: &[(&[u64], bool)],
    ) -> Vec<Result<(), FormatError>> {
        // An early link's request hears only when its entry is in the file.
        self.settle_early();
        let mut batch = LinkBatch::default();
        let mut results: Vec<Result<(), FormatError>> = ends.iter().map(|_| Ok(())).collect();
        let mut touched = Vec::new();
        for (req, &(clusters, written)) in ends.iter().enumerate() {
            for &gc in clusters {
                let Some(a) = self.allocating.get_mut(&gc) else {
                    continue;
                };
                a.writers = a.writers.saturating_sub(1);
                touched.push(gc);
                let (host, linked) = (a.host, a.linked);
                if !written {
                    continue;
                }
                if linked {
                    // Linked by another request of this batch: that write is ours too.
                    if let Some(&table) = batch.linked.get(&gc) {
                        batch.deps.push((req, gc, table));
                    }
                    continue;
                }
                match self.link_cached(gc, host, &mut batch, &mut results) {
                    Ok(Some(table)) => {
                        if let Some(a) = self.allocating.get_mut(&gc) {
                            a.linked = true;
                        }
                        batch.linked.insert(gc, table);
                        batch.deps.push((req, gc, table));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        results[req] = Err(e);
                    }
                }
            }
        }
        self.write_linked(&mut batch, &mut results);
        for gc in touched {
            if self.allocating.get(&gc).is_some_and(|a| a.writers == 0) {
                if let Some(a) = self.allocating.remove(&gc) {
                    // Written in part perhaps: no longer fresh. One whose entry's write
                    // failed may be named in the file after all: leaked instead.
                    if !a.linked && !a.named_maybe && !batch.failed.contains(&gc) {
                        self.unreserve(a.host);
                    }
                }
            }
        }
        results
    }

    /// Names `host` in guest cluster `gc`'s entry in the cached L2 table (not yet in
    /// the file: `write_linked` writes it), unless something else was written there
    /// meanwhile (None). When that needs a table not in the cache (whose loading could
    /// evict a table with entries not yet written), what is pending is written first.
    fn link_cached(
        &mut self,
        gc: u64,
        host: u64,
        batch: &mut LinkBatch,
        results: &mut [Result<(), FormatError>],
    ) -> Result<Option<u64>, FormatError> {
        let cached = match self.l2_offset(gc)? {
            Some((off, true)) => self.l2_cache.contains(off),
            _ => false,
        };
        if !cached {
            self.write_linked(batch, results);
        }
        if !matches!(self.lookup(gc)?, Cluster::Unallocated | Cluster::Zero) {
            return Ok(None);
        }
        let table = self.l2_for_write(gc)?;
        let idx = (gc % self.l2_entries()) as usize * 8;
        put64(self.l2_table(table)?, idx, host | OFLAG_COPIED);
        let s = idx / 512;
        let span = batch.pending.entry(table).or_insert(s..s + 1);
        span.start = span.start.min(s);
        span.end = span.end.max(s + 1);
        Ok(Some(table))
    }

    /// Writes the changed sectors of each table `batch` has pending (one write per
    /// table, from the first to the last changed sector) and settles the requests
    /// that depended on them: a failed write fails them, and its clusters count as
    /// not linked (the table is read from the file again).
    fn write_linked(&mut self, batch: &mut LinkBatch, results: &mut [Result<(), FormatError>]) {
        for (table, sectors) in std::mem::take(&mut batch.pending) {
            let bytes = match self.l2_table(table) {
                Ok(t) => {
                    let end = (sectors.end * 512).min(t.len());
                    Ok(t[sectors.start * 512..end].to_vec())
                }
                Err(e) => Err(e),
            };
            let result = bytes.and_then(|b| self.write(table + (sectors.start * 512) as u64, &b));
            let errno = match result {
                Ok(()) => None,
                Err(e) => {
                    log::error!("qcow2: writing L2 entries at {table:#x}: {e}");
                    // The cached table no longer matches the file.
                    self.l2_cache.remove(table);
                    Some(e.errno())
                }
            };
            batch.deps.retain(|&(req, gc, t)| {
                if t != table {
                    return true;
                }
                if let Some(errno) = errno {
                    if let Some(r) = results.get_mut(req) {
                        if r.is_ok() {
                            *r = Err(FormatError::Io(std::io::Error::from_raw_os_error(errno)));
                        }
                    }
                    if let Some(a) = self.allocating.get_mut(&gc) {
                        a.linked = false;
                    }
                    batch.failed.insert(gc);
                    batch.linked.remove(&gc);
                }
                false
            });
        }
    }
    /// The slow path's write into a guest cluster being allocated: into its host
    /// cluster, linked at once. False when `gc` is not being allocated.
    pub fn write_allocating(
        &mut self,
        gc: u64,
        in_off: u64,
        data: &[u8],
    ) -> Result<bool, FormatError> {
        let host = match self.allocating.get(&gc) {
            Some(a) if !a.linked => a.host,
            _ => return Ok(false),
        };
        if !matches!(self.lookup(gc)?, Cluster::Unallocated | Cluster::Zero) {
            return Ok(false);
        }
        self.write(host + in_off, data)?;
        if self.link(gc, host)? {
            if let Some(a) = self.allocating.get_mut(&gc) {
                a.linked = true;
            }
        }
        Ok(true)
    }
}
