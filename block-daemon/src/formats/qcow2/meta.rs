//! The open image's metadata state (everything the queue threads share under one
//! mutex): geometry, the L1 and refcount tables in memory, the table caches, the
//! allocator's bookkeeping, the set of metadata clusters used for overlap checks, and
//! the file I/O every metadata change goes through (written through to the file, so a
//! restarted daemon finds it; ordering syncs where a power loss could reorder).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::formats::qcow2::cache::TableCache;
use crate::formats::qcow2::early_link::LinkRing;
use crate::formats::qcow2::header::Header;
use crate::formats::qcow2::io::{read_meta_in, write_at_in};
use crate::formats::qcow2::layout::{put64, INCOMPAT_CORRUPT, OFF_INCOMPATIBLE};
use crate::formats::qcow2::snapshot::SnapshotInfo;
use crate::formats::qcow2::unmap::Unmap;
use crate::formats::{host_file, Format, FormatError, MappedRequests};

/// QEMU's text for writes to an image marked corrupt.
pub const CORRUPT_TEXT: &str = "qcow2: Image is corrupt; cannot be opened read/write";

/// A test hook: how many more file writes may happen before the "process dies"
/// (every later write fails and nothing more reaches the file), and the write counts
/// at which a refcount table move began (so a test can crash inside one).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct CrashAfter(pub Option<usize>, pub Vec<usize>);

/// A guest cluster being allocated by write mappings in flight: its fresh host
/// cluster, the requests writing into it, and whether its L2 entry names it yet.
#[derive(Debug)]
pub struct Allocating {
    pub host: u64,
    pub writers: usize,
    pub linked: bool,
    /// Its early link's write failed: the file may name it, so it is never handed
    /// out again (see `early_link`).
    pub named_maybe: bool,
}

pub struct Meta {
    pub file: Arc<File>,
    /// Whether `file` is in O_DIRECT mode (read once at open: see `io`).
    pub direct: bool,
    /// The ring of early links (O_DIRECT images with clusters of 4096 bytes or more,
    /// opened writable; see `early_link`).
    pub links: Option<LinkRing>,
    pub backing: Option<Arc<dyn Format>>,
    pub writable: bool,
    pub version: u32,
    pub cluster_bits: u32,
    pub refcount_order: u32,
    pub size: u64,
    pub l1: Vec<u64>,
    pub l1_offset: u64,
    pub reftable: Vec<u64>,
    pub reftable_offset: u64,
    pub reftable_clusters: u64,
    pub l2_cache: TableCache,
    pub rb_cache: TableCache,
    pub incompatible: u64,
    pub lazy: bool,
    pub corrupt: bool,
    /// Bytes of the file we know of (grows as we write past it).
    pub file_size: u64,
    /// First cluster the allocator looks at.
    pub free_hint: u64,
    /// The cluster index past every cluster given a refcount in this session (some
    /// may not be written yet: they lie beyond `file_size`).
    pub alloc_end: u64,
    /// Clusters whose refcount is 1 on disk (made durable) but not yet used.
    pub reserved: VecDeque<u64>,
    /// Reserve batches taken this session (each is larger: `refcount::reserve_batch`).
    pub refills: u32,
    /// Reserved clusters past what was ever written (the file was extended over them):
    /// they read as zeroes.
    pub fresh: HashSet<u64>,
    /// Guest clusters whose new host cluster a write mapping is filling (see
    /// `alloc`): not yet named by their L2 entry.
    pub allocating: HashMap<u64, Allocating>,
    /// Clusters freed while a mapping may still use them: not handed out until no
    /// mapped request is in flight.
    pub deferred: HashSet<u64>,
    pub mapped: Arc<MappedRequests>,
    /// References to drop once the entries that named them are on stable storage
    /// (the next sync): a power loss must not leave an entry naming a cluster whose
    /// refcount already fell (QEMU's refcount-after-L2 dependency).
    pub pending_frees: Vec<u64>,
    /// Clusters holding metadata (header, L1, refcount table and blocks, active L2
    /// tables, snapshot table and snapshot L1 tables): data never goes there.
    pub metadata: HashSet<u64>,
    pub snapshots: Vec<SnapshotInfo>,
    pub snapshots_offset: u64,
    pub snapshots_size: u64,
    pub header: Header,
    /// The image file is a block device: its size is fixed.
    pub block_device: bool,
    /// Frees passed down to the file (see `unmap`).
    pub unmap: Unmap,
    /// Where the next compressed cluster may go: the byte past the last one written,
    /// inside a host cluster that still holds it (forgotten when that cluster is freed).
    pub compressed_tail: Option<u64>,
    #[cfg(test)]
    pub crash: CrashAfter,
}

impl Meta {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries of an L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Refcounts in one refcount block.
    pub fn rb_entries(&self) -> u64 {
        (self.cluster_size() * 8) >> self.refcount_order
    }

    pub fn cluster_of(&self, offset: u64) -> u64 {
        offset >> self.cluster_bits
    }

    /// Reads metadata at `offset`, which must lie inside the file.
    pub fn read(&self, offset: u64, buf: &mut [u8], what: &str) -> Result<(), FormatError> {
        read_meta_in(&self.file, self.direct, offset, buf, what)
    }

    /// Waits for the early link in flight, if any (see `early_link`): a failed one
    /// leaves its table to be read from the file again, and its cluster unlinked for
    /// its request's commit to link the ordered way, never handed out again.
    pub fn settle_early(&mut self) {
        let Some(s) = self.links.as_mut().and_then(LinkRing::settle) else {
            return;
        };
        if !s.ok {
            self.l2_cache.remove(s.table);
            if let Some(a) = self.allocating.get_mut(&s.gc) {
                a.linked = false;
                a.named_maybe = true;
            }
        }
    }

    /// Every write to the image file goes through here (after the early link in
    /// flight: two writes of one block must not be in flight at once).
    pub fn write(&mut self, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
        self.settle_early();
        #[cfg(test)]
        if let Some(n) = self.crash.0.as_mut() {
            if *n == 0 {
                return Err(FormatError::Io(std::io::Error::other("simulated crash")));
            }
            *n -= 1;
        }
        write_at_in(&self.file, self.direct, offset, buf)?;
        self.file_size = self.file_size.max(offset + buf.len() as u64);
        Ok(())
    }

    /// Grows the file to `len` bytes (the new part reads as zeroes).
    pub fn extend_file(&mut self, len: u64) -> Result<(), FormatError> {
        #[cfg(test)]
        if self.crash.0 == Some(0) {
            return Err(FormatError::Io(std::io::Error::other("simulated crash")));
        }
        if self.block_device {
            // A device does not grow: what lies past its end cannot be allocated.
            if len > self.file_size {
                return Err(FormatError::Io(std::io::Error::from_raw_os_error(
                    libc::ENOSPC,
                )));
            }
            return Ok(());
        }
        self.file.set_len(len)?;
        self.file_size = self.file_size.max(len);
        Ok(())
    }

    /// Makes what was written durable before what follows (fdatasync).
    pub fn sync(&mut self) -> Result<(), FormatError> {
        #[cfg(test)]
        if self.crash.0 == Some(0) {
            return Err(FormatError::Io(std::io::Error::other("simulated crash")));
        }
        self.settle_early();
        self.file.sync_data()?;
        self.punch_freed();
        Ok(())
    }

    /// Runs `f` with its frees passed down to the file (see `unmap`).
    pub fn passing_frees<T>(
        &mut self,
        f: impl FnOnce(&mut Meta) -> Result<T, FormatError>,
    ) -> Result<T, FormatError> {
        let began = self.unmap.begin();
        let r = f(self);
        if began {
            self.unmap.end();
        }
        r
    }

    /// Punches the freed clusters waiting, after a sync made their refcounts durable;
    /// nothing while a mapped request is in flight. A punch that fails is counted and
    /// otherwise ignored (the cluster is free all the same), as QEMU's
    /// qcow2_process_discards does.
    fn punch_freed(&mut self) {
        if !self.unmap.punches_waiting() || self.mapped.in_flight() > 0 {
            return;
        }
        let Some((counters, runs)) = self.unmap.take_runs() else {
            return;
        };
        let fd = self.file.as_raw_fd();
        for (first, n) in runs {
            let offset = first << self.cluster_bits;
            // Nothing past the end of the file is allocated on the host.
            let len = (n << self.cluster_bits).min(self.file_size.saturating_sub(offset));
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

    /// Writes the header's incompatible feature bits.
    pub fn write_incompatible(&mut self, bits: u64) -> Result<(), FormatError> {
        let mut b = [0u8; 8];
        put64(&mut b, 0, bits);
        self.write(OFF_INCOMPATIBLE, &b)?;
        self.incompatible = bits;
        Ok(())
    }

    /// Marks the image corrupt (QEMU's qcow2_signal_corruption): the bit in the header
    /// when we may write, writes refused from now on, reads go on.
    pub fn signal_corruption(&mut self, what: String) -> FormatError {
        log::error!(
            "qcow2: Marking image as corrupt: {what}; further corruption events will be suppressed"
        );
        // A v2 header has no feature bits: the mark stays in memory (as in QEMU).
        if self.writable && !self.corrupt && self.version >= 3 {
            let bits = self.incompatible | INCOMPAT_CORRUPT;
            if self.write_incompatible(bits).is_ok() {
                let _ = self.sync();
            }
        }
        self.corrupt = true;
        FormatError::Corrupt(format!("Marking image as corrupt: {what}"))
    }

    /// Refuses a change when the image may not be written.
    pub fn check_writable(&self) -> Result<(), FormatError> {
        if !self.writable {
            return Err(FormatError::ReadOnly);
        }
        if self.corrupt {
            return Err(FormatError::Corrupt(CORRUPT_TEXT.into()));
        }
        Ok(())
    }

    /// Fails (and marks the image corrupt) when `offset..offset+len` touches metadata.
    pub fn check_overlap(&mut self, offset: u64, len: u64) -> Result<(), FormatError> {
        if len == 0 {
            return Ok(());
        }
        let first = self.cluster_of(offset);
        let last = self.cluster_of(offset + len - 1);
        for c in first..=last {
            if self.metadata.contains(&c) {
                return Err(self.signal_corruption(format!(
                    "Preventing invalid write on metadata (overlaps with metadata cluster {:#x})",
                    c << self.cluster_bits
                )));
            }
        }
        Ok(())
    }

    /// Loads (through the cache) the L2 table at `offset`.
    pub fn l2_table(&mut self, offset: u64) -> Result<&mut Vec<u8>, FormatError> {
        if self.l2_cache.get_mut(offset).is_none() {
            // The file's table must hold the early link in flight.
            self.settle_early();
            let mut t = vec![0u8; self.cluster_size() as usize];
            read_meta_in(&self.file, self.direct, offset, &mut t, "L2 table")?;
            self.l2_cache.insert(offset, t);
        }
        self.l2_cache
            .get_mut(offset)
            .ok_or_else(|| FormatError::Invalid("L2 cache lost a table".into()))
    }

    /// Loads (through the cache) the refcount block at `offset`.
    pub fn refblock(&mut self, offset: u64) -> Result<&mut Vec<u8>, FormatError> {
        if self.rb_cache.get_mut(offset).is_none() {
            let mut t = vec![0u8; self.cluster_size() as usize];
            read_meta_in(&self.file, self.direct, offset, &mut t, "Refcount block")?;
            self.rb_cache.insert(offset, t);
        }
        self.rb_cache
            .get_mut(offset)
            .ok_or_else(|| FormatError::Invalid("refcount cache lost a block".into()))
    }

    /// Whether `offset` is a cluster-aligned table offset inside the file.
    pub fn valid_table_offset(&self, offset: u64) -> bool {
        offset != 0
            && offset & (self.cluster_size() - 1) == 0
            && offset
                .checked_add(self.cluster_size())
                .is_some_and(|end| end <= self.file_size)
    }
}
