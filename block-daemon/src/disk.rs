//! A block node: its image chain (an `Arc<dyn Format>`, opened by `formats::chain` from
//! the fds the gateway opened, or by standalone mode from paths), the cache mode, whether
//! the guest may write, what GET_ID reports, and the node-level operations that are not
//! plain reads and writes (flush, discard, write-zeroes, resize), which go through the
//! format in guest offsets.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use virtio::blk::ID_BYTES;

use crate::formats::direct::DIRECT_ALIGN;
use crate::formats::{Format, FormatError};
use crate::request::{SectorRange, SECTOR_SHIFT};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// Host page cache, flushes reach the disk (QEMU cache=writeback).
    Writeback,
    /// O_DIRECT, flushes reach the disk (cache=none / cache.direct=on).
    Direct,
    /// Host page cache, flushes ignored (cache=unsafe / cache.no-flush=on).
    NoFlush,
    /// O_DIRECT and flushes ignored (cache.direct=on, cache.no-flush=on).
    DirectNoFlush,
}

impl CacheMode {
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::Direct | CacheMode::DirectNoFlush)
    }

    pub fn no_flush(self) -> bool {
        matches!(self, CacheMode::NoFlush | CacheMode::DirectNoFlush)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("image is {0} bytes, smaller than one sector")]
    TooSmall(u64),
}

/// The image chain a node serves, replaced as a whole when a snapshot puts a new top
/// over it (see `snapshots`).
#[derive(Clone)]
pub struct Served {
    pub format: Arc<dyn Format>,
    /// The fd a FLUSH syncs, when that is all a flush is (raw): the io_uring engine
    /// then syncs it asynchronously. None: the format flushes (its metadata first).
    pub flush_fd: Option<RawFd>,
}

pub struct Disk {
    served: RwLock<Served>,
    read_only: bool,
    /// Its qcow2 top's persistent bitmaps are kept up to date here (loaded or carried
    /// on, stored at a clean close: see `formats::qcow2::bitmaps`). Decided again when
    /// an inactive node becomes active.
    keeps_bitmaps: AtomicBool,
    cache: CacheMode,
    id: [u8; ID_BYTES],
    /// The image belongs to another process for now (a migration's other side): nothing
    /// is written to it, not even at close.
    inactive: AtomicBool,
}

impl Disk {
    /// The node over its opened image chain. `id` is what GET_ID reports (the node name,
    /// truncated); `flush_fd`: see the field.
    pub fn new(
        format: Arc<dyn Format>,
        flush_fd: Option<RawFd>,
        read_only: bool,
        cache: CacheMode,
        id: &str,
    ) -> Result<Disk, DiskError> {
        let size = format.virtual_size();
        if size < 1 << SECTOR_SHIFT {
            return Err(DiskError::TooSmall(size));
        }
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Disk {
            served: RwLock::new(Served { format, flush_fd }),
            read_only,
            keeps_bitmaps: AtomicBool::new(false),
            cache,
            id: id_bytes,
            inactive: AtomicBool::new(false),
        })
    }

    /// From now on nothing is written to the image (see the field).
    pub fn set_inactive(&self) {
        self.inactive.store(true, Ordering::Release);
    }

    pub fn inactive(&self) -> bool {
        self.inactive.load(Ordering::Acquire)
    }

    /// The image is ours again (see `inactive`); `keeps_bitmaps` as `keeping_bitmaps`.
    /// The caller serves the chain opened afresh first, with the device quiesced.
    pub fn set_active(&self, keeps_bitmaps: bool) {
        let keeps = keeps_bitmaps && !self.read_only;
        self.keeps_bitmaps.store(keeps, Ordering::Release);
        self.inactive.store(false, Ordering::Release);
    }

    /// The chain's top image (a request holds it while it runs: a new top takes over
    /// only while the device is quiesced).
    pub fn format(&self) -> Arc<dyn Format> {
        self.served.read().format.clone()
    }

    pub fn flush_fd(&self) -> Option<RawFd> {
        self.served.read().flush_fd
    }

    /// What the node serves now.
    pub fn served(&self) -> Served {
        self.served.read().clone()
    }

    /// Serves `served` from now on; returns what was served. The caller quiesced the
    /// device (nothing in flight holds the old chain's mappings).
    pub fn replace_served(&self, served: Served) -> Served {
        std::mem::replace(&mut *self.served.write(), served)
    }

    pub fn size(&self) -> u64 {
        self.format().virtual_size()
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.size() >> SECTOR_SHIFT
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The same disk, keeping its top's persistent bitmaps (see the field).
    pub fn keeping_bitmaps(self, keeps: bool) -> Disk {
        let keeps = keeps && !self.read_only;
        self.keeps_bitmaps.store(keeps, Ordering::Release);
        self
    }

    /// Its images went (no medium): nothing is stored in them any more.
    pub fn stop_keeping_bitmaps(&self) {
        self.keeps_bitmaps.store(false, Ordering::Release);
    }

    pub fn keeps_bitmaps(&self) -> bool {
        self.keeps_bitmaps.load(Ordering::Acquire)
    }

    pub fn cache(&self) -> CacheMode {
        self.cache
    }

    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// The alignment O_DIRECT needs from buffers and offsets.
    pub fn direct_alignment(&self) -> Option<usize> {
        self.cache.direct().then_some(DIRECT_ALIGN)
    }

    pub fn flush(&self) -> Result<(), FormatError> {
        if self.cache.no_flush() {
            return Ok(());
        }
        self.format().flush()
    }

    fn byte_range(r: &SectorRange) -> (u64, u64) {
        (
            r.sector << SECTOR_SHIFT,
            u64::from(r.sectors) << SECTOR_SHIFT,
        )
    }

    pub fn discard(&self, r: &SectorRange) -> Result<(), FormatError> {
        let (offset, len) = Self::byte_range(r);
        self.format().discard(offset, len)
    }

    pub fn write_zeroes(&self, r: &SectorRange) -> Result<(), FormatError> {
        let (offset, len) = Self::byte_range(r);
        self.format().write_zeroes(offset, len, r.unmap)
    }

    /// The node is going away: the image is left clean (see `Format::close`).
    pub fn close(&self) -> Result<(), FormatError> {
        self.format().close()
    }

    /// Grows or shrinks the image (block_resize).
    pub fn resize(&self, bytes: u64) -> Result<(), FormatError> {
        self.format().resize(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::raw::Raw;
    use crate::testing::Scratch;

    use std::os::unix::fs::FileExt;

    #[test]
    fn size_and_ranges() {
        let s = Scratch::new("disk-ranges", 1 << 20);
        let (f, path) = (s.file.try_clone().unwrap(), &s.path);
        f.write_all_at(&[0xaa; 4096], 0).unwrap();
        let d = Disk::new(
            Arc::new(Raw::open(f, true).unwrap()),
            None,
            false,
            CacheMode::Writeback,
            "a-very-long-node-name-indeed",
        )
        .unwrap();
        assert_eq!(d.capacity_sectors(), 2048);
        assert_eq!(&d.id()[..], b"a-very-long-node-nam");
        d.write_zeroes(&SectorRange {
            sector: 1,
            sectors: 2,
            unmap: false,
        })
        .unwrap();
        d.discard(&SectorRange {
            sector: 4,
            sectors: 1,
            unmap: false,
        })
        .unwrap();
        let mut buf = [0u8; 4096];
        std::fs::File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, 0)
            .unwrap();
        assert!(buf[..512].iter().all(|b| *b == 0xaa));
        assert!(buf[512..1536].iter().all(|b| *b == 0));
        assert!(buf[1536..2048].iter().all(|b| *b == 0xaa));
        assert!(buf[2048..2560].iter().all(|b| *b == 0));
        d.resize(2 << 20).unwrap();
        assert_eq!(d.capacity_sectors(), 4096);
        d.flush().unwrap();
    }

    #[test]
    fn tiny_or_truncated_images_are_refused() {
        let s = Scratch::new("disk-tiny", 100);
        let f = s.file.try_clone().unwrap();
        assert!(matches!(
            Disk::new(
                Arc::new(Raw::open(f, true).unwrap()),
                None,
                false,
                CacheMode::Writeback,
                "x",
            ),
            Err(DiskError::TooSmall(100))
        ));
    }
}
