//! Allocating writes without the metadata lock held over the data (as QEMU's qcow2
//! does them): a write mapping of a guest cluster that has no host cluster yet
//! reserves one, makes sure it reads as zeroes around the guest's bytes (a fresh
//! cluster past the old end of the file already does; a reused one is zeroed and
//! synced first), and hands it to the engine as a `File` extent. When the data is in
//! the file, the mapping's `Commit` (`LinkAllocations`) writes the L2 entry naming
//! the cluster: data before entry, so a crash between them leaks the cluster at most.
//!
//! While a cluster is being allocated, other writes to it join the allocation (they
//! write into the same host cluster; the first to complete links it), and the slow
//! path writes into it and links it too: a guest cluster is never allocated twice.
//! Reads of it see its old state until it is linked (the requests are concurrent).
//! Only clusters that read as zeroes before (unallocated without a backing file, or
//! zero clusters) are allocated this way; copy-on-write from a backing file, compressed
//! or shared clusters stay with the slow path.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::formats::qcow2::layout::OFLAG_COPIED;
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
        for (at, n, target) in plan {
            let gc = self.cluster_of(at);
            let host = match target {
                Target::Host(host) => host,
                Target::Join(host) => self.join(gc, host, &mut claimed),
                Target::New => match self.start_allocation(gc) {
                    Ok(host) => self.join(gc, host, &mut claimed),
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

    /// Reserves a host cluster for guest cluster `gc`, reading as zeroes.
    fn start_allocation(&mut self, gc: u64) -> Result<u64, FormatError> {
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
            },
        );
        Ok(host)
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
        let mut first_error = None;
        for &gc in clusters {
            let Some(a) = self.allocating.get_mut(&gc) else {
                continue;
            };
            a.writers = a.writers.saturating_sub(1);
            let (host, linked) = (a.host, a.linked);
            if written && !linked {
                match self.link(gc, host) {
                    Ok(true) => {
                        if let Some(a) = self.allocating.get_mut(&gc) {
                            a.linked = true;
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if self.allocating.get(&gc).is_some_and(|a| a.writers == 0) {
                if let Some(a) = self.allocating.remove(&gc) {
                    if !a.linked {
                        // Written in part perhaps: no longer fresh.
                        self.unreserve(a.host);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
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
