//! `Qcow2`: an open qcow2 image serving the `Format` interface. Opening reads and
//! checks the header and tables, sizes the caches, repairs an image left dirty, and
//! builds the set of metadata clusters; requests are split at cluster boundaries and
//! served under one metadata mutex (`Meta`), except the bytes of allocated data
//! clusters, which `map` hands to the engines and `read` moves without the lock (both
//! under a `MapGuard`).
//!
//! A writable open changes the header: a dirty image is repaired, autoclear bits are
//! cleared (nothing they protect, such as bitmaps, is kept up to date here). A clean
//! close (drop) frees the clusters reserved for allocation, makes everything durable
//! and clears the dirty bit.
//!
//! Caches (QEMU 7.2's read_cache_sizes): the L2 cache defaults to what covers the whole
//! disk, capped at 32 MiB (QEMU's DEFAULT_L2_CACHE_MAX_SIZE on Linux), at least two
//! tables; the refcount cache defaults to QEMU's minimum of four clusters. QEMU caches
//! 4 KiB slices of L2 tables when the cache does not cover the disk; this cache holds
//! whole tables, so the same byte budget holds fewer, larger entries. A size given in
//! `Qcow2Options` is used as given, capped at 1 GiB.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipc::BlockCounters;
use parking_lot::Mutex;

use crate::formats::qcow2::alloc::LinkAllocations;
use crate::formats::qcow2::bitmaps::StoredBitmap;
use crate::formats::qcow2::cache::TableCache;
use crate::formats::qcow2::compressed;
use crate::formats::qcow2::early_link::{LinkRing, BLOCK};
use crate::formats::qcow2::header::Header;
use crate::formats::qcow2::io::{file_len, is_direct, read_data, read_meta};
use crate::formats::qcow2::layout::{
    be64, put64, AUTOCLEAR_BITMAPS, INCOMPAT_DIRTY, L1E_OFFSET_MASK, OFF_AUTOCLEAR, OFF_SIZE,
    OFLAG_COPIED, OFLAG_ZERO, REFT_OFFSET_MASK,
};
use crate::formats::qcow2::meta::{Meta, CORRUPT_TEXT};
use crate::formats::qcow2::snapshot;
use crate::formats::qcow2::tables::Cluster;
use crate::formats::qcow2::unmap::Unmap;
use crate::formats::{host_file, Extent, Format, FormatError, MapGuard, MappedRequests, Mapping};

const DEFAULT_L2_CACHE_MAX: u64 = 32 << 20;
const MIN_REFCOUNT_CACHE_CLUSTERS: u64 = 4;
const MAX_CACHE_BYTES: u64 = 1 << 30;

/// An open qcow2 image.
pub struct Qcow2 {
    meta: Arc<Mutex<Meta>>,
    fd: i32,
    /// The guest size, readable without waiting for a request holding the lock.
    size: AtomicU64,
}

fn be_table(bytes: &[u8]) -> Vec<u64> {
    (0..bytes.len() / 8).map(|i| be64(bytes, i * 8)).collect()
}

impl Qcow2 {
    /// Opens the image in `file` (read-write when `writable`) over its already opened
    /// backing chain. Written here, its persistent bitmaps would go stale: a writable
    /// open says so in the header (see `open_keeping_bitmaps`).
    pub fn open(
        file: File,
        backing: Option<Arc<dyn Format>>,
        opts: &ipc::Qcow2Options,
        writable: bool,
    ) -> Result<Qcow2, FormatError> {
        Qcow2::open_with(file, backing, opts, writable, false)
    }

    /// `open`, for the image a daemon serves and whose persistent bitmaps it keeps up to
    /// date (loads them, marks into them, stores them back at its close: see
    /// `bitmaps`): they stay valid in the header.
    pub fn open_keeping_bitmaps(
        file: File,
        backing: Option<Arc<dyn Format>>,
        opts: &ipc::Qcow2Options,
        writable: bool,
    ) -> Result<Qcow2, FormatError> {
        Qcow2::open_with(file, backing, opts, writable, true)
    }

    fn open_with(
        file: File,
        backing: Option<Arc<dyn Format>>,
        opts: &ipc::Qcow2Options,
        writable: bool,
        keep_bitmaps: bool,
    ) -> Result<Qcow2, FormatError> {
        let header = Header::read(&file)?;
        header.check_supported()?;
        if writable && header.corrupt() {
            return Err(FormatError::Corrupt(CORRUPT_TEXT.into()));
        }
        let lazy = opts.lazy_refcounts.unwrap_or(header.lazy_refcounts());
        if lazy && header.version < 3 {
            return Err(FormatError::Invalid(
                "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"
                    .into(),
            ));
        }
        let cs = header.cluster_size();
        let mut l1 = vec![0u8; header.l1_size as usize * 8];
        read_meta(&file, header.l1_table_offset, &mut l1, "Active L1 table")?;
        let mut rt = vec![0u8; (u64::from(header.refcount_table_clusters) * cs) as usize];
        read_meta(
            &file,
            header.refcount_table_offset,
            &mut rt,
            "Reference count table",
        )?;
        let (snapshots, snapshots_size) = snapshot::read_table(&file, &header)?;

        let max_l2 = (header.size.div_ceil(cs) * 8).next_multiple_of(cs);
        let l2_bytes = opts
            .l2_cache_bytes
            .unwrap_or(max_l2.min(DEFAULT_L2_CACHE_MAX))
            .min(MAX_CACHE_BYTES);
        let rb_bytes = opts
            .refcount_cache_bytes
            .unwrap_or(MIN_REFCOUNT_CACHE_CLUSTERS * cs)
            .min(MAX_CACHE_BYTES);
        let file_size = file_len(&file)?;
        let file = Arc::new(file);
        let file_ref: &File = &file;
        let direct = is_direct(file_ref);
        let mut m = Meta {
            links: (direct && writable && cs >= BLOCK as u64)
                .then(LinkRing::new)
                .flatten(),
            direct,
            file: file.clone(),
            backing,
            writable,
            version: header.version,
            cluster_bits: header.cluster_bits,
            refcount_order: header.refcount_order,
            size: header.size,
            l1: be_table(&l1),
            l1_offset: header.l1_table_offset,
            reftable: be_table(&rt),
            reftable_offset: header.refcount_table_offset,
            reftable_clusters: u64::from(header.refcount_table_clusters),
            l2_cache: TableCache::new((l2_bytes / cs) as usize),
            rb_cache: TableCache::new(((rb_bytes / cs).max(MIN_REFCOUNT_CACHE_CLUSTERS)) as usize),
            incompatible: header.incompatible_features,
            lazy,
            corrupt: header.corrupt(),
            file_size,
            free_hint: 0,
            alloc_end: 0,
            reserved: VecDeque::new(),
            refills: 0,
            fresh: HashSet::new(),
            allocating: HashMap::new(),
            deferred: HashSet::new(),
            pending_frees: Vec::new(),
            mapped: Arc::new(MappedRequests::default()),
            metadata: HashSet::new(),
            snapshots,
            snapshots_offset: header.snapshots_offset,
            snapshots_size,
            header,
            block_device: host_file::is_block_device(file_ref)?,
            unmap: Unmap::default(),
            compressed_tail: None,
            #[cfg(test)]
            crash: Default::default(),
        };
        m.collect_metadata();
        if writable {
            if m.header.dirty() {
                m.repair()?;
            }
            // What autoclear bits protect and is not kept up to date here goes stale:
            // clearing their bits tells other programs so (QEMU clears the bits it does
            // not know). Only the bitmaps' bit can stay, when they are kept.
            let kept = match keep_bitmaps && m.header.bitmaps.is_some() {
                true => m.header.autoclear_features & AUTOCLEAR_BITMAPS,
                false => 0,
            };
            if m.header.autoclear_features != kept {
                m.write(OFF_AUTOCLEAR, &kept.to_be_bytes())?;
                m.sync()?;
                m.header.autoclear_features = kept;
            }
        }
        // Data never goes where the bitmaps are (a malformed directory fails the open
        // only when the bitmaps are kept, as QEMU's).
        match m.note_bitmap_clusters() {
            Err(e) if keep_bitmaps => return Err(e),
            Err(e) => log::warn!("qcow2: the stored bitmaps are unreadable: {e}"),
            Ok(()) => {}
        }
        Ok(Qcow2 {
            size: AtomicU64::new(m.size),
            meta: Arc::new(Mutex::new(m)),
            fd: file.as_raw_fd(),
        })
    }

    /// Passes the clusters the guest frees down to the file (QEMU's discard=unmap),
    /// counting each range punched in `counters` (see `unmap`).
    pub fn pass_discards(self, counters: Arc<BlockCounters>) -> Qcow2 {
        self.meta.lock().unmap.counters = Some(counters);
        self
    }

    /// The internal snapshots.
    pub fn snapshots(&self) -> Vec<snapshot::SnapshotInfo> {
        self.meta.lock().snapshots.clone()
    }

    /// Creates an internal snapshot (the device must be quiesced: see `snapshot_ops`).
    pub fn snapshot_create(
        &self,
        new: crate::formats::qcow2::snapshot_ops::NewSnapshot,
    ) -> Result<snapshot::SnapshotInfo, FormatError> {
        self.meta.lock().passing_frees(|m| m.snapshot_create(new))
    }

    /// Reverts to an internal snapshot found by id, else by name (the device
    /// quiesced).
    pub fn snapshot_goto(&self, id_or_name: &str) -> Result<snapshot::SnapshotInfo, FormatError> {
        self.meta
            .lock()
            .passing_frees(|m| m.snapshot_goto(id_or_name))
    }

    /// Deletes an internal snapshot by id and/or name (the device quiesced).
    pub fn snapshot_delete(
        &self,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<snapshot::SnapshotInfo, FormatError> {
        self.meta
            .lock()
            .passing_frees(|m| m.snapshot_delete(id, name))
    }

    /// Names `backing` (empty: none) with `format` in the header (change-backing-file,
    /// and the end of a stream or commit). The data does not change.
    pub fn name_backing(&self, backing: &str, format: Option<&str>) -> Result<(), FormatError> {
        let mut m = self.meta.lock();
        crate::formats::qcow2::header_cluster::change_backing(&m.file, backing, format)?;
        m.header = Header::read(&m.file)?;
        Ok(())
    }

    /// The persistent bitmaps the image stores, each marked in use in the file from now
    /// on (a writable image) until `store_bitmaps`.
    pub fn load_bitmaps(&self) -> Result<Vec<StoredBitmap>, FormatError> {
        self.meta.lock().load_bitmaps()
    }

    /// Stores `bitmaps` in the image in place of what it held (a clean close).
    pub fn store_bitmaps(&self, bitmaps: &[StoredBitmap]) -> Result<(), FormatError> {
        self.meta.lock().store_bitmaps(bitmaps)
    }

    /// Reads through `backing` from now on (a stream or commit took the images between
    /// out of the chain). The caller quiesced the device: no request holds a mapping
    /// of the old backing chain.
    pub fn replace_backing(&self, backing: Option<Arc<dyn Format>>) {
        self.meta.lock().backing = backing;
    }

    /// The state under the lock (snapshots and tests use it).
    pub fn with_meta<T>(&self, f: impl FnOnce(&mut Meta) -> T) -> T {
        f(&mut self.meta.lock())
    }
}

impl Meta {
    /// Fills the set of metadata clusters from the tables.
    pub fn collect_metadata(&mut self) {
        let cs = self.cluster_size();
        let mut set = HashSet::new();
        let add_range = |set: &mut HashSet<u64>, off: u64, len: u64| {
            if len > 0 {
                for c in off / cs..=(off + len - 1) / cs {
                    set.insert(c);
                }
            }
        };
        add_range(&mut set, 0, cs);
        add_range(&mut set, self.l1_offset, self.l1.len() as u64 * 8);
        add_range(&mut set, self.reftable_offset, self.reftable_clusters * cs);
        add_range(&mut set, self.snapshots_offset, self.snapshots_size);
        for s in &self.snapshots {
            add_range(&mut set, s.l1_table_offset, u64::from(s.l1_size) * 8);
        }
        for e in &self.reftable {
            let off = e & REFT_OFFSET_MASK;
            if off != 0 {
                set.insert(off / cs);
            }
        }
        for e in &self.l1 {
            let off = e & L1E_OFFSET_MASK;
            if off != 0 {
                set.insert(off / cs);
            }
        }
        self.metadata = set;
    }

    /// Before the first change of a session with lazy refcounts: the dirty bit.
    pub fn begin_change(&mut self) -> Result<(), FormatError> {
        self.check_writable()?;
        if self.lazy && self.incompatible & INCOMPAT_DIRTY == 0 {
            self.write_incompatible(self.incompatible | INCOMPAT_DIRTY)?;
            self.sync()?;
        }
        Ok(())
    }

    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), FormatError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(FormatError::Io(std::io::Error::from_raw_os_error(
                libc::EINVAL,
            )));
        }
        Ok(())
    }

    /// The end of what a data cluster may be: the file and what was allocated.
    fn data_limit(&self) -> u64 {
        self.file_size.max(self.alloc_end << self.cluster_bits)
    }

    /// Reads guest bytes of the backing file (zeroes past its end, or without one).
    fn read_backing(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let Some(b) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = b.virtual_size();
        let n = bsize.saturating_sub(offset).min(buf.len() as u64) as usize;
        if n > 0 {
            b.read(offset, &mut buf[..n])?;
        }
        buf[n..].fill(0);
        Ok(())
    }

    /// One decompressed cluster.
    fn read_compressed(&mut self, entry: u64) -> Result<Vec<u8>, FormatError> {
        let (off, len) = compressed::host_range(entry, self.cluster_bits);
        if off
            .checked_add(len)
            .is_none_or(|end| end > self.file_size + 512)
        {
            return Err(self.signal_corruption(format!(
                "Compressed cluster at {off:#x} lies outside the image"
            )));
        }
        let mut input = vec![0u8; len as usize];
        read_data(&self.file, self.direct, off, &mut input)?;
        let mut out = vec![0u8; self.cluster_size() as usize];
        compressed::decompress(&input, &mut out)?;
        Ok(out)
    }

    /// Reads within one guest cluster.
    fn read_chunk(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let gc = self.cluster_of(offset);
        let in_off = offset & (self.cluster_size() - 1);
        match self.lookup(gc)? {
            Cluster::Unallocated => self.read_backing(offset, buf),
            Cluster::Zero | Cluster::ZeroAlloc { .. } => {
                buf.fill(0);
                Ok(())
            }
            Cluster::Normal { offset: host, .. } => {
                read_data(&self.file, self.direct, host + in_off, buf)
            }
            Cluster::Compressed { entry } => {
                let c = self.read_compressed(entry)?;
                buf.copy_from_slice(&c[in_off as usize..in_off as usize + buf.len()]);
                Ok(())
            }
        }
    }

    /// A data cluster must start inside the image (a short last cluster is QEMU's
    /// truncated tail; one far past the end is a damaged entry).
    fn check_data_cluster(&mut self, host: u64, gc: u64) -> Result<(), FormatError> {
        if host >= self.data_limit() {
            return Err(self.signal_corruption(format!(
                "Data cluster offset {host:#x} lies beyond the end of the image (guest cluster {gc:#x})"
            )));
        }
        Ok(())
    }

    /// Writes within one guest cluster, allocating and copying as needed.
    fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<(), FormatError> {
        let cs = self.cluster_size();
        let gc = self.cluster_of(offset);
        let in_off = offset & (cs - 1);
        match self.lookup(gc)? {
            Cluster::Normal {
                offset: host,
                copied: true,
            } => {
                self.check_data_cluster(host, gc)?;
                self.check_overlap(host + in_off, data.len() as u64)?;
                return self.write(host + in_off, data);
            }
            Cluster::ZeroAlloc {
                offset: host,
                copied: true,
            } => {
                self.check_data_cluster(host, gc)?;
                self.check_overlap(host, cs)?;
                let mut buf = vec![0u8; cs as usize];
                buf[in_off as usize..in_off as usize + data.len()].copy_from_slice(data);
                self.write(host, &buf)?;
                let table = self.l2_for_write(gc)?;
                return self.set_l2_entry(table, gc, host | OFLAG_COPIED);
            }
            _ => {}
        }
        if self.write_allocating(gc, in_off, data)? {
            return Ok(());
        }
        let table = self.l2_for_write(gc)?;
        let old = self.lookup(gc)?;
        let fresh_end = self.file_size;
        let (new, fresh) = self.take_data_cluster()?;
        self.check_overlap(new, cs)?;
        let full = in_off == 0 && data.len() as u64 == cs;
        let fill_zero = matches!(old, Cluster::Zero | Cluster::ZeroAlloc { .. })
            || (matches!(old, Cluster::Unallocated) && self.backing.is_none());
        if full || (fresh && fill_zero) {
            // A fresh cluster already reads as zeroes around the guest's bytes.
            self.write(new + in_off, data)?;
        } else {
            let mut buf = vec![0u8; cs as usize];
            match old {
                Cluster::Unallocated => self.read_backing(gc * cs, &mut buf)?,
                Cluster::Zero | Cluster::ZeroAlloc { .. } => {}
                Cluster::Normal { offset: host, .. } => {
                    read_data(&self.file, self.direct, host, &mut buf)?
                }
                Cluster::Compressed { entry } => buf = self.read_compressed(entry)?,
            }
            buf[in_off as usize..in_off as usize + data.len()].copy_from_slice(data);
            self.write(new, &buf)?;
            // The copied parts reach stable storage before the entry naming them (a
            // reused cluster could otherwise show old bytes after a power loss).
            if new < fresh_end && !fresh {
                self.sync()?;
            }
        }
        self.set_l2_entry(table, gc, new | OFLAG_COPIED)?;
        self.release_entry(old)
    }

    /// Writes guest cluster `gc` (at `offset`) compressed, as QEMU's compressed writes
    /// do: a whole cluster (the image's last, partial one padded with zeroes) into a
    /// cluster that holds nothing yet; one that does not shrink goes in uncompressed.
    /// Compressed clusters are packed one after the other into host clusters, each
    /// host cluster counting one reference per compressed cluster in it.
    pub fn write_compressed(&mut self, offset: u64, data: &[u8]) -> Result<(), FormatError> {
        let cs = self.cluster_size();
        let len = data.len() as u64;
        if !offset.is_multiple_of(cs) || len > cs || (len < cs && offset + len != self.size) {
            return Err(FormatError::Invalid(
                "qcow2: compressed writes are of whole clusters".into(),
            ));
        }
        let gc = self.cluster_of(offset);
        match self.lookup(gc)? {
            Cluster::Unallocated | Cluster::Zero => {}
            // QEMU's words for it are an EIO too: compression overwrites nothing.
            _ => return Err(std::io::Error::from_raw_os_error(libc::EIO).into()),
        }
        let mut whole = data.to_vec();
        whole.resize(cs as usize, 0);
        let Some(z) = compressed::compress(&whole, cs as usize - 1) else {
            return self.write_chunk(offset, data);
        };
        let zlen = z.len() as u64;
        let table = self.l2_for_write(gc)?;
        let at = match self.compressed_tail {
            // Room left in the host cluster the last one went into.
            Some(tail) if (tail & (cs - 1)) + zlen <= cs => {
                self.add_refcount(tail >> self.cluster_bits, 1)?;
                tail
            }
            // A new host cluster (reused or not: only the bytes written are read).
            _ => self.take_data_cluster()?.0,
        };
        self.check_overlap(at, zlen)?;
        self.write(at, &z)?;
        let end = at + zlen;
        self.compressed_tail = (end & (cs - 1) != 0).then_some(end);
        self.set_l2_entry(
            table,
            gc,
            compressed::descriptor(at, zlen, self.cluster_bits),
        )
    }

    /// Sets guest cluster `gc`'s entry to `new` (releasing what the old one held when
    /// `release`).
    fn replace_entry(&mut self, gc: u64, new: u64, release: bool) -> Result<(), FormatError> {
        let (raw, old) = self.lookup_raw(gc)?;
        if raw == new {
            return Ok(());
        }
        let table = self.l2_for_write(gc)?;
        self.set_l2_entry(table, gc, new)?;
        if release {
            self.release_entry(old)?;
        }
        Ok(())
    }

    /// Whole guest clusters inside `offset..offset + len` (a partial last cluster
    /// counts when the range reaches the end of the image).
    fn whole_clusters(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        let cs = self.cluster_size();
        let end = offset + len;
        let first = offset.div_ceil(cs);
        let last = if end == self.size {
            end.div_ceil(cs)
        } else {
            end / cs
        };
        first..last.max(first)
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), FormatError> {
        self.check_range(offset, len)?;
        self.begin_change()?;
        // Partial clusters are left alone, as QEMU does (its driver refuses them and
        // the block layer ignores that).
        for gc in self.whole_clusters(offset, len) {
            let cur = self.lookup(gc)?;
            let allocated = matches!(
                cur,
                Cluster::Normal { .. } | Cluster::Compressed { .. } | Cluster::ZeroAlloc { .. }
            );
            if !(self.backing.is_some() || allocated) {
                continue;
            }
            let new = if self.version >= 3 { OFLAG_ZERO } else { 0 };
            self.replace_entry(gc, new, true)?;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), FormatError> {
        self.check_range(offset, len)?;
        self.begin_change()?;
        let cs = self.cluster_size();
        let whole = if self.version >= 3 {
            self.whole_clusters(offset, len)
        } else {
            0..0
        };
        let (zs, ze) = if whole.is_empty() {
            (offset + len, offset + len)
        } else {
            (whole.start * cs, (whole.end * cs).min(self.size))
        };
        self.write_zero_bytes(offset, zs.max(offset) - offset)?;
        for gc in whole.clone() {
            let cur = self.lookup(gc)?;
            let (new, release) = match cur {
                Cluster::Normal {
                    offset: host,
                    copied,
                }
                | Cluster::ZeroAlloc {
                    offset: host,
                    copied,
                } if !unmap => (
                    host | OFLAG_ZERO | if copied { OFLAG_COPIED } else { 0 },
                    false,
                ),
                _ => (OFLAG_ZERO, true),
            };
            self.replace_entry(gc, new, release)?;
        }
        if ze < offset + len {
            self.write_zero_bytes(ze, offset + len - ze)?;
        }
        Ok(())
    }

    fn write_zero_bytes(&mut self, offset: u64, len: u64) -> Result<(), FormatError> {
        if len == 0 {
            return Ok(());
        }
        let cs = self.cluster_size();
        let zeroes = vec![0u8; cs as usize];
        let mut at = offset;
        while at < offset + len {
            let n = (cs - at % cs).min(offset + len - at);
            self.write_chunk(at, &zeroes[..n as usize])?;
            at += n;
        }
        Ok(())
    }

    fn resize(&mut self, size: u64) -> Result<(), FormatError> {
        self.begin_change()?;
        if !size.is_multiple_of(512) {
            return Err(FormatError::Invalid(
                "The new size must be a multiple of 512".into(),
            ));
        }
        if !self.snapshots.is_empty() && self.version < 3 {
            return Err(FormatError::Unsupported(
                "Can't resize a v2 image which has snapshots".into(),
            ));
        }
        let cs = self.cluster_size();
        let l1_needed = size.div_ceil(cs * self.l2_entries());
        if size > self.size {
            self.grow_l1(l1_needed)?;
        } else {
            // QEMU's shrink: every cluster past the new end is deallocated, then the
            // L2 tables past the new L1 size.
            for gc in size.div_ceil(cs)..self.size.div_ceil(cs) {
                if self.lookup_raw(gc)?.0 != 0 {
                    self.replace_entry(gc, 0, true)?;
                }
            }
            for l1i in l1_needed..self.l1.len() as u64 {
                let e = self.l1[l1i as usize];
                let off = e & L1E_OFFSET_MASK;
                if off != 0 {
                    self.set_l1_entry(l1i, 0)?;
                    self.l2_cache.remove(off);
                    self.release_later(self.cluster_of(off), 1)?;
                }
            }
        }
        let mut b = [0u8; 8];
        put64(&mut b, 0, size);
        self.write(OFF_SIZE, &b)?;
        self.sync()?;
        self.size = size;
        Ok(())
    }

    fn map(
        &mut self,
        offset: u64,
        len: u64,
        write: bool,
        fd: i32,
    ) -> Result<Vec<Extent>, FormatError> {
        self.check_range(offset, len)?;
        let cs = self.cluster_size();
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let n = (cs - at % cs).min(offset + len - at);
            let gc = self.cluster_of(at);
            let in_off = at % cs;
            let cur = self.lookup(gc)?;
            if write {
                let ext = match cur {
                    Cluster::Normal {
                        offset: host,
                        copied: true,
                    } if host + cs <= self.file_size && !self.metadata.contains(&(host / cs)) => {
                        Extent::File {
                            fd,
                            offset: host + in_off,
                            len: n,
                        }
                    }
                    _ => Extent::Format { len: n },
                };
                push_extent(&mut out, ext);
            } else {
                match cur {
                    Cluster::Normal { offset: host, .. } if host + cs <= self.file_size => {
                        push_extent(
                            &mut out,
                            Extent::File {
                                fd,
                                offset: host + in_off,
                                len: n,
                            },
                        )
                    }
                    Cluster::Normal { .. } | Cluster::Compressed { .. } => {
                        push_extent(&mut out, Extent::Format { len: n })
                    }
                    Cluster::Zero | Cluster::ZeroAlloc { .. } => {
                        push_extent(&mut out, Extent::Zero { len: n })
                    }
                    Cluster::Unallocated => {
                        let inside = match &self.backing {
                            Some(b) => b.virtual_size().saturating_sub(at).min(n),
                            None => 0,
                        };
                        if let (Some(b), true) = (&self.backing, inside > 0) {
                            // Backing files are opened read-only and never move their
                            // clusters: their guard need not outlive this call.
                            for e in b.map(at, inside, false)?.extents {
                                push_extent(&mut out, e);
                            }
                        }
                        if inside < n {
                            push_extent(&mut out, Extent::Zero { len: n - inside });
                        }
                    }
                }
            }
            at += n;
        }
        Ok(out)
    }

    /// A clean close: reserved clusters freed, everything durable, dirty bit cleared.
    pub fn close(&mut self) -> Result<(), FormatError> {
        if !self.writable {
            return Ok(());
        }
        self.sync()?;
        self.apply_pending_frees()?;
        self.release_reserved()?;
        self.sync()?;
        if self.incompatible & INCOMPAT_DIRTY != 0 && !self.corrupt {
            self.write_incompatible(self.incompatible & !INCOMPAT_DIRTY)?;
            self.sync()?;
        }
        Ok(())
    }
}

/// Appends an extent, merging it with the previous one when they continue each other.
fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        match (last, e) {
            (
                Extent::File {
                    fd: a,
                    offset: o,
                    len: l,
                },
                Extent::File {
                    fd: b,
                    offset: p,
                    len: m,
                },
            ) if *a == b && *o + *l == p => {
                *l += m;
                return;
            }
            (Extent::Zero { len: l }, Extent::Zero { len: m })
            | (Extent::Format { len: l }, Extent::Format { len: m }) => {
                *l += m;
                return;
            }
            _ => {}
        }
    }
    out.push(e);
}

/// Splits `offset..offset + len` at cluster boundaries: (offset, start in buf, length).
fn chunks(offset: u64, len: usize, cluster_size: u64) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = offset + done as u64;
        let n = ((cluster_size - at % cluster_size) as usize).min(len - done);
        let item = (at, done, n);
        done += n;
        Some(item)
    })
}

impl Format for Qcow2 {
    fn name(&self) -> &'static str {
        "qcow2"
    }

    fn virtual_size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn map(&self, offset: u64, len: u64, write: bool) -> Result<Mapping, FormatError> {
        let mut m = self.meta.lock();
        if write {
            m.check_range(offset, len)?;
            if let Some((extents, claimed)) = m.map_write(offset, len, self.fd, push_extent)? {
                let guard = MapGuard::new(&m.mapped);
                drop(m);
                let guard = if claimed.is_empty() {
                    guard
                } else {
                    guard.with_commit(Box::new(LinkAllocations {
                        meta: self.meta.clone(),
                        clusters: claimed,
                    }))
                };
                return Ok(Mapping { extents, guard });
            }
        }
        let extents = m.map(offset, len, write, self.fd)?;
        // Zeroes name no cluster: nothing for a guard to keep (a hole's read skips
        // the shared counter).
        let guard = if extents.iter().all(|e| matches!(e, Extent::Zero { .. })) {
            MapGuard::none()
        } else {
            MapGuard::new(&m.mapped)
        };
        Ok(Mapping { extents, guard })
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let cs = {
            let m = self.meta.lock();
            m.check_range(offset, buf.len() as u64)?;
            m.cluster_size()
        };
        for (at, start, n) in chunks(offset, buf.len(), cs) {
            let dst = &mut buf[start..start + n];
            let mut m = self.meta.lock();
            match m.lookup(at / cs)? {
                Cluster::Normal { offset: host, .. } => {
                    // The data is read without the lock, under a guard (as an engine
                    // reads a mapping): the cluster is not handed out again meanwhile.
                    let guard = MapGuard::new(&m.mapped);
                    let (file, direct) = (m.file.clone(), m.direct);
                    drop(m);
                    read_data(&file, direct, host + at % cs, dst)?;
                    drop(guard);
                }
                _ => m.read_chunk(at, dst)?,
            }
        }
        Ok(())
    }

    fn allocated(&self, offset: u64, len: u64) -> Result<(bool, u64), FormatError> {
        // Clusters looked at per call: the lock is not held for long.
        const MAX_CLUSTERS: u64 = 512;
        if len == 0 {
            return Ok((true, 0));
        }
        let mut m = self.meta.lock();
        m.check_range(offset, len)?;
        let cs = m.cluster_size();
        let own = |c: &Cluster| !matches!(c, Cluster::Unallocated);
        let first = own(&m.lookup(offset / cs)?);
        let mut end = (offset / cs + 1) * cs;
        while end < offset.saturating_add(len) && end - offset < MAX_CLUSTERS * cs {
            if own(&m.lookup(end / cs)?) != first {
                break;
            }
            end += cs;
        }
        Ok((first, (end - offset).min(len)))
    }

    fn backing(&self) -> Option<Arc<dyn Format>> {
        self.meta.lock().backing.clone()
    }

    fn write_compressed(&self, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
        let mut m = self.meta.lock();
        m.check_range(offset, buf.len() as u64)?;
        m.begin_change()?;
        let cs = m.cluster_size() as usize;
        for (i, cluster) in buf.chunks(cs).enumerate() {
            m.write_compressed(offset + (i * cs) as u64, cluster)?;
        }
        Ok(())
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
        let mut m = self.meta.lock();
        m.check_range(offset, buf.len() as u64)?;
        m.begin_change()?;
        let cs = m.cluster_size();
        for (at, start, n) in chunks(offset, buf.len(), cs) {
            m.write_chunk(at, &buf[start..start + n])?;
        }
        Ok(())
    }

    fn finish_writes(&self, ends: Vec<(MapGuard, bool)>) -> Vec<Result<(), FormatError>> {
        let mut results: Vec<Result<(), FormatError>> = Vec::with_capacity(ends.len());
        // This image's allocations: (request, guest clusters, written).
        let mut links: Vec<(usize, Vec<u64>, bool)> = Vec::new();
        let mut guards = Vec::with_capacity(ends.len());
        for (i, (mut guard, written)) in ends.into_iter().enumerate() {
            results.push(Ok(()));
            if let Some(c) = guard.take_commit() {
                let ours = (&*c as &dyn std::any::Any)
                    .downcast_ref::<LinkAllocations>()
                    .is_some_and(|l| Arc::ptr_eq(&l.meta, &self.meta));
                if !ours {
                    results[i] = c.commit(written);
                } else if let Ok(l) = (c as Box<dyn std::any::Any>).downcast::<LinkAllocations>() {
                    links.push((i, l.clusters, written));
                }
            }
            // The claim ends after the commit (as `MapGuard::finish` does it).
            guards.push(guard);
        }
        if !links.is_empty() {
            let ends: Vec<(&[u64], bool)> =
                links.iter().map(|(_, c, w)| (c.as_slice(), *w)).collect();
            let done = self.meta.lock().finish_allocation_batch(&ends);
            for ((i, _, _), r) in links.iter().zip(done) {
                results[*i] = r;
            }
        }
        drop(guards);
        results
    }

    fn flush(&self) -> Result<(), FormatError> {
        let mut m = self.meta.lock();
        if m.writable {
            m.sync()?;
            m.apply_pending_frees()?;
            if m.unmap.punches_waiting() {
                // The clusters those frees released are punched once durable.
                m.sync()?;
            }
        }
        Ok(())
    }

    fn start_writeback(&self) -> Result<(), FormatError> {
        // Data and metadata alike: the closing flush still orders them.
        Ok(host_file::start_writeback(self.fd)?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), FormatError> {
        self.meta.lock().passing_frees(|m| m.discard(offset, len))
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), FormatError> {
        let mut m = self.meta.lock();
        if unmap {
            m.passing_frees(|m| m.write_zeroes(offset, len, unmap))
        } else {
            m.write_zeroes(offset, len, unmap)
        }
    }

    fn resize(&self, size: u64) -> Result<(), FormatError> {
        let mut m = self.meta.lock();
        // A shrink's frees are passed down (QEMU's QCOW2_DISCARD_ALWAYS).
        let r = m.passing_frees(|m| m.resize(size));
        self.size.store(m.size, Ordering::Release);
        r
    }

    fn close(&self) -> Result<(), FormatError> {
        self.meta.lock().close()
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if let Err(e) = self.meta.lock().close() {
            log::error!("qcow2: closing the image: {e}");
        }
    }
}
