//! A block node's image: an open file or block device (opened by the gateway), its size,
//! cache mode, and the operations that are not plain reads and writes (flush, discard,
//! write-zeroes, resize). Raw format: guest sector N is byte N * 512 of the file.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipc::BlockCounters;
use virtio::blk::ID_BYTES;

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
    #[error("image: {0}")]
    Io(#[from] std::io::Error),
    #[error("image is {0} bytes, smaller than one sector")]
    TooSmall(u64),
}

pub struct Disk {
    file: File,
    size: AtomicU64,
    read_only: bool,
    cache: CacheMode,
    block_device: bool,
    id: [u8; ID_BYTES],
    /// Where discards that reached the image are counted (QEMU's file-driver counters).
    counters: Arc<BlockCounters>,
}

// BLKGETSIZE64 / BLKDISCARD / BLKZEROOUT from <linux/fs.h>.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Disk {
    /// Takes an opened image. `id` is what GET_ID reports (the node name, truncated);
    /// `counters`: the disk's counters page.
    pub fn new(
        file: File,
        read_only: bool,
        cache: CacheMode,
        id: &str,
        counters: Arc<BlockCounters>,
    ) -> Result<Disk, DiskError> {
        let block_device = file.metadata()?.file_type().is_block_device();
        let size = if block_device {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
            check(unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) })?;
            size
        } else {
            file.metadata()?.len()
        };
        if size < 1 << SECTOR_SHIFT {
            return Err(DiskError::TooSmall(size));
        }
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on our own fd with integer arguments.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        check(flags)?;
        let want = if cache.direct() {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        if want != flags {
            // SAFETY: as above.
            check(unsafe { libc::fcntl(fd, libc::F_SETFL, want) })?;
        }
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Disk {
            file,
            size: AtomicU64::new(size),
            read_only,
            cache,
            block_device,
            id: id_bytes,
            counters,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.size() >> SECTOR_SHIFT
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn cache(&self) -> CacheMode {
        self.cache
    }

    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// The alignment O_DIRECT needs from buffers and offsets.
    pub fn direct_alignment(&self) -> Option<usize> {
        self.cache.direct().then_some(4096)
    }

    pub fn flush(&self) -> std::io::Result<()> {
        if self.cache.no_flush() {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn byte_range(r: &SectorRange) -> (u64, u64) {
        (
            r.sector << SECTOR_SHIFT,
            u64::from(r.sectors) << SECTOR_SHIFT,
        )
    }

    pub fn discard(&self, r: &SectorRange) -> std::io::Result<()> {
        let (offset, len) = Self::byte_range(r);
        let result = self.discard_bytes(offset, len);
        let page = self.counters.page();
        match &result {
            Ok(()) => {
                page.discard_ok.fetch_add(1, Ordering::Relaxed);
                page.discard_bytes_ok.fetch_add(len, Ordering::Relaxed);
            }
            Err(_) => {
                page.discard_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn discard_bytes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if self.block_device {
            let range = [offset, len];
            // SAFETY: BLKDISCARD reads two u64s.
            check(unsafe { libc::ioctl(self.fd(), BLKDISCARD, range.as_ptr()) })
        } else {
            self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        }
    }

    pub fn write_zeroes(&self, r: &SectorRange) -> std::io::Result<()> {
        let (offset, len) = Self::byte_range(r);
        if self.block_device {
            let range = [offset, len];
            // SAFETY: BLKZEROOUT reads two u64s.
            return check(unsafe { libc::ioctl(self.fd(), BLKZEROOUT, range.as_ptr()) });
        }
        // Unmapping (a hole) reads back as zeroes too and frees the space.
        let mode = if r.unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        self.fallocate(mode, offset, len).or_else(|_| {
            // Not every filesystem zeroes ranges: write zeroes.
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(zeros.len() as u64) as usize;
                std::os::unix::fs::FileExt::write_all_at(&self.file, &zeros[..n], offset + done)?;
                done += n as u64;
            }
            Ok(())
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: fallocate on our own fd with integer arguments.
        check(unsafe {
            libc::fallocate(self.fd(), mode, offset as libc::off_t, len as libc::off_t)
        })
    }

    /// Grows or shrinks the image (block_resize); block devices cannot be resized here.
    pub fn resize(&self, bytes: u64) -> std::io::Result<()> {
        if self.block_device {
            return Err(std::io::Error::other("a block device cannot be resized"));
        }
        self.file.set_len(bytes)?;
        self.size.store(bytes, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn image(len: u64) -> (File, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("flotilla-disk-{}-{}", std::process::id(), len));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(len).unwrap();
        (f, path)
    }

    #[test]
    fn size_and_ranges() {
        let (f, path) = image(1 << 20);
        f.write_all_at(&[0xaa; 4096], 0).unwrap();
        let d = Disk::new(
            f,
            false,
            CacheMode::Writeback,
            "a-very-long-node-name-indeed",
            Arc::new(BlockCounters::create().unwrap()),
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
        std::fs::File::open(&path)
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
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn tiny_or_truncated_images_are_refused() {
        let (f, path) = image(100);
        assert!(matches!(
            Disk::new(
                f,
                false,
                CacheMode::Writeback,
                "x",
                Arc::new(BlockCounters::create().unwrap())
            ),
            Err(DiskError::TooSmall(100))
        ));
        std::fs::remove_file(path).unwrap();
    }
}
