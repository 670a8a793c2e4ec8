//! The raw format: guest byte N is byte N of the file (a regular file or a block device).
//! Every guest range maps to one `Extent::File` at the same offset, and no mapping ever
//! goes stale, so the engines move raw data with the kernel alone. This is also the
//! protocol level under the node: the discards that reach the file are counted here
//! (QEMU's file-driver counters, `discard-nb-ok` and friends).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipc::BlockCounters;

use super::direct::{direct_io, is_direct, DirectBuf};
use super::host_file::{self, check};
use super::{Extent, Format, FormatError, MapGuard, Mapping};

// BLKZEROOUT from <linux/fs.h>.
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// The most zeroes written at once where the filesystem cannot zero a range itself.
const ZERO_CHUNK: u64 = 1 << 20;

pub struct Raw {
    file: File,
    fd: RawFd,
    writable: bool,
    block_device: bool,
    /// The file was opened (or set) O_DIRECT: `read`/`write` align what they move.
    direct: bool,
    size: AtomicU64,
    /// Where discards that reached the file are counted (the node's counters page);
    /// None for a backing file, which the guest never discards.
    discards: Option<Arc<BlockCounters>>,
}

impl Raw {
    /// Takes an opened image file or block device; `writable`: the node may change it.
    pub fn open(file: File, writable: bool) -> Result<Raw, FormatError> {
        let block_device = host_file::is_block_device(&file)?;
        let size = host_file::length(&file)?;
        Ok(Raw {
            fd: file.as_raw_fd(),
            direct: is_direct(&file)?,
            file,
            writable,
            block_device,
            size: AtomicU64::new(size),
            discards: None,
        })
    }

    /// Counts the discards that reach this file in `counters` (the node's own image).
    pub fn count_discards(mut self, counters: Arc<BlockCounters>) -> Raw {
        self.discards = Some(counters);
        self
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    fn writable(&self) -> Result<(), FormatError> {
        if self.writable {
            Ok(())
        } else {
            Err(FormatError::ReadOnly)
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: fallocate on our own fd with integer arguments.
        check(unsafe { libc::fallocate(self.fd, mode, offset as libc::off_t, len as libc::off_t) })
    }

    /// Writes zeroes where the filesystem cannot zero a range itself.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<(), FormatError> {
        let zeros = vec![0u8; len.min(ZERO_CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write(offset + done, &zeros[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

impl Format for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn virtual_size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn map(&self, offset: u64, len: u64, write: bool) -> Result<Mapping, FormatError> {
        if write && !self.writable {
            return Err(FormatError::ReadOnly);
        }
        Ok(Mapping {
            extents: vec![Extent::File {
                fd: self.fd,
                offset,
                len,
            }],
            guard: MapGuard::none(),
        })
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        if self.direct {
            direct_io(&self.file, offset, DirectBuf::Read(buf))?;
        } else {
            self.file.read_exact_at(buf, offset)?;
        }
        Ok(())
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
        self.writable()?;
        if self.direct {
            direct_io(&self.file, offset, DirectBuf::Write(buf))?;
        } else {
            self.file.write_all_at(buf, offset)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), FormatError> {
        Ok(self.file.sync_data()?)
    }

    fn start_writeback(&self) -> Result<(), FormatError> {
        Ok(host_file::start_writeback(self.fd)?)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), FormatError> {
        self.writable()?;
        let result = host_file::discard(self.fd, self.block_device, offset, len);
        if let Some(counters) = &self.discards {
            host_file::count_discard(counters, len, &result);
        }
        Ok(result?)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), FormatError> {
        self.writable()?;
        if self.block_device {
            let range = [offset, len];
            // SAFETY: BLKZEROOUT reads two u64s.
            return Ok(check(unsafe {
                libc::ioctl(self.fd, BLKZEROOUT, range.as_ptr())
            })?);
        }
        // Unmapping (a hole) reads back as zeroes too and frees the space.
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Ok(()) => Ok(()),
            // Not every filesystem zeroes ranges: write zeroes.
            Err(_) => self.write_zero_bytes(offset, len),
        }
    }

    /// Grows or shrinks the file; block devices cannot be resized here.
    fn resize(&self, size: u64) -> Result<(), FormatError> {
        self.writable()?;
        if self.block_device {
            return Err(FormatError::Io(std::io::Error::other(
                "a block device cannot be resized",
            )));
        }
        self.file.set_len(size)?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::direct::set_direct;
    use crate::testing::Scratch;
    use std::os::unix::fs::FileExt;

    #[test]
    fn maps_one_file_extent_and_counts_discards() {
        let s = Scratch::new("raw-map", 1 << 20);
        let f = s.file.try_clone().unwrap();
        let fd = f.as_raw_fd();
        let counters = Arc::new(BlockCounters::create().unwrap());
        let raw = Raw::open(f, true).unwrap().count_discards(counters.clone());
        assert_eq!(raw.virtual_size(), 1 << 20);
        let m = raw.map(4096, 8192, true).unwrap();
        assert_eq!(
            m.extents,
            [Extent::File {
                fd,
                offset: 4096,
                len: 8192
            }]
        );
        raw.write(0, &[0xaa; 4096]).unwrap();
        raw.write_zeroes(512, 1024, false).unwrap();
        raw.discard(2048, 512).unwrap();
        let mut buf = [0u8; 4096];
        raw.read(0, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 0xaa));
        assert!(buf[512..1536].iter().all(|b| *b == 0));
        assert!(buf[1536..2048].iter().all(|b| *b == 0xaa));
        assert!(buf[2048..2560].iter().all(|b| *b == 0));
        let page = counters.page();
        assert_eq!(page.discard_ok.load(Ordering::Relaxed), 1);
        assert_eq!(page.discard_bytes_ok.load(Ordering::Relaxed), 512);
        raw.resize(2 << 20).unwrap();
        assert_eq!(raw.virtual_size(), 2 << 20);
        raw.flush().unwrap();
    }

    #[test]
    fn a_read_only_raw_refuses_every_change() {
        let s = Scratch::new("raw-ro", 1 << 16);
        let f = s.file.try_clone().unwrap();
        let raw = Raw::open(f, false).unwrap();
        assert!(matches!(raw.map(0, 512, true), Err(FormatError::ReadOnly)));
        assert!(matches!(
            raw.write(0, &[1; 512]),
            Err(FormatError::ReadOnly)
        ));
        assert!(matches!(raw.discard(0, 512), Err(FormatError::ReadOnly)));
        assert!(matches!(
            raw.write_zeroes(0, 512, true),
            Err(FormatError::ReadOnly)
        ));
        assert!(matches!(raw.resize(1 << 20), Err(FormatError::ReadOnly)));
        assert!(raw.map(0, 512, false).is_ok());
    }

    /// With O_DIRECT, reads and writes at any offset and length (a qcow2 overlay's
    /// copy-on-write reads its raw backing file so) still work.
    #[test]
    fn unaligned_reads_and_writes_with_o_direct() {
        let s = Scratch::new("raw-direct", 1 << 16);
        s.file.write_all_at(&[0x77; 1 << 16], 0).unwrap();
        let f = s.file.try_clone().unwrap();
        set_direct(&f, true).unwrap();
        let raw = Raw::open(f, true).unwrap();
        assert!(raw.direct);
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        raw.write(1000, &data).unwrap();
        let mut back = vec![0u8; 5000];
        raw.read(1000, &mut back).unwrap();
        assert_eq!(back, data);
        // The blocks the write only partly covered keep the rest of what they held.
        let mut edge = [0u8; 10];
        raw.read(995, &mut edge).unwrap();
        assert_eq!(edge[..5], [0x77; 5]);
        assert_eq!(edge[5..], data[..5]);
        raw.read(5995, &mut edge).unwrap();
        assert_eq!(edge[..5], data[4995..]);
        assert_eq!(edge[5..], [0x77; 5]);
        // A write past the end grows the file only to where the write ends.
        raw.write((1 << 16) + 100, &[1; 100]).unwrap();
        assert_eq!(s.path.metadata().unwrap().len(), (1 << 16) + 200);
        // A read past the end is an error, as without O_DIRECT.
        let mut past = [0u8; 512];
        assert!(raw.read((1 << 16) + 100, &mut past).is_err());
    }
}
