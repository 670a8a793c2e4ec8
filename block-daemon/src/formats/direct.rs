//! O_DIRECT for the formats: whether a file bypasses the page cache, switching it, and
//! positioned reads and writes of any offset and length on such a file (through an
//! aligned bounce buffer that covers the sectors around the range). The engines move
//! aligned guest data themselves; this serves what the formats move on their own (a raw
//! backing file's copy-on-write reads, zeroes written by hand, every qcow2 metadata
//! access and slow-path data). Devices with 4 KiB logical sectors are served in 4 KiB
//! blocks; a bounce write holds its window of the file (`window_lock`) for its whole
//! read-modify-write.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt};

use super::window_lock;

/// The alignment of the buffers O_DIRECT gets from us (a page: the largest logical
/// block size a disk has, so it suits every one).
pub const DIRECT_ALIGN: usize = 4096;

/// The granularity of the file offsets and lengths `direct_io` moves: a sector, as the
/// guest's requests are (a bigger block would make a partial write read and write back
/// sectors a concurrent request of the guest may be writing).
pub const DIRECT_BLOCK: usize = 512;

// BLKSSZGET from <linux/fs.h>: a block device's logical block size.
const BLKSSZGET: libc::c_ulong = 0x1268;

/// The smallest unit O_DIRECT moves on the O_DIRECT file `fd`: a block device's
/// logical block size; for a regular file, the offset alignment its filesystem reports
/// (statx's STATX_DIOALIGN, Linux 6.1), or on older kernels 4096 when a sector read at
/// its start is refused with EINVAL (its filesystem lies on a 4 KiB-sector device),
/// else a sector. (There a file that is empty or a hole at its start cannot tell: a hole
/// is read without the device. It counts as a sector, and the kernel refuses what it
/// cannot take.) And the file's key for `window_lock`.
pub fn device_block(fd: RawFd) -> std::io::Result<(u64, window_lock::FileKey)> {
    // SAFETY: fd is open for the caller's whole call; ManuallyDrop keeps it open after.
    let file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let meta = file.metadata()?;
    let key = window_lock::FileKey::of_metadata(&meta);
    if meta.file_type().is_block_device() {
        let mut size: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer, which points to one.
        if unsafe { libc::ioctl(fd, BLKSSZGET, &mut size) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        return Ok((
            u64::try_from(size).unwrap_or(0).max(DIRECT_BLOCK as u64),
            key,
        ));
    }
    if let Some(align) = dio_offset_align(fd) {
        return Ok((align.max(DIRECT_BLOCK as u64), key));
    }
    let mut probe = AlignedBuf::new(DIRECT_BLOCK, DIRECT_ALIGN)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    let refused = file
        .read_at(&mut probe.as_mut_slice()[..DIRECT_BLOCK], 0)
        .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL));
    Ok((if refused { 4096 } else { DIRECT_BLOCK as u64 }, key))
}

/// The file offset alignment O_DIRECT needs on `fd`, when the kernel and the filesystem
/// say (statx STATX_DIOALIGN; 0 there means no O_DIRECT at all, and the probe decides).
fn dio_offset_align(fd: RawFd) -> Option<u64> {
    // SAFETY: statx is plain old data; all zeroes is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: AT_EMPTY_PATH with "" asks about `fd` itself; statx fills the struct.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    (r == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0)
        .then_some(u64::from(stx.stx_dio_offset_align))
}

/// Whether `file` was opened (or set) O_DIRECT.
pub fn is_direct(file: &File) -> std::io::Result<bool> {
    // SAFETY: fcntl on an fd `file` owns, integer arguments.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags & libc::O_DIRECT != 0)
}

/// Turns O_DIRECT on or off for `file` (its open file description: every dup of it).
pub fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd `file` owns, integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let want = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if want != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, want) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A heap buffer with the alignment O_DIRECT needs.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: exclusively owned heap memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeroed bytes (at least `align`) aligned to `align`; None when the
    /// allocation fails.
    pub fn new(len: usize, align: usize) -> Option<AlignedBuf> {
        let layout = std::alloc::Layout::from_size_align(len.max(align), align).ok()?;
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(AlignedBuf { ptr, layout })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: we own `layout.size()` bytes at `ptr`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// What `direct_io` moves: into a buffer, or out of one.
pub enum DirectBuf<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// The most bytes a bounce buffer holds at a time.
const MAX_BOUNCE: usize = 1 << 20;

/// The device block sizes tried, in order: a sector, then 4 KiB (a device with 4 KiB
/// logical sectors refuses less with EINVAL).
const BLOCK_SIZES: [usize; 2] = [DIRECT_BLOCK, 4096];

/// Runs `f` with each block size until the device takes one.
fn with_block_size<T>(mut f: impl FnMut(usize) -> std::io::Result<T>) -> std::io::Result<T> {
    let mut refused = None;
    for block in BLOCK_SIZES {
        match f(block) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => refused = Some(e),
            other => return other,
        }
    }
    Err(refused.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL)))
}

fn bounce_for(len: usize, block: usize) -> std::io::Result<AlignedBuf> {
    AlignedBuf::new(len.min(MAX_BOUNCE) + 2 * block, DIRECT_ALIGN)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))
}

/// One bounce buffer's worth of a range: the blocks from file offset `start`, `span`
/// bytes, holding `n` bytes of the range from `head` on.
struct Piece {
    start: u64,
    head: usize,
    n: usize,
    span: usize,
}

/// The piece of `offset..offset + len` that starts `done` bytes in.
fn piece(offset: u64, done: usize, len: usize, block: usize) -> Piece {
    let pos = offset + done as u64;
    let start = pos - pos % block as u64;
    let head = (pos - start) as usize;
    let n = (len - done).min(MAX_BOUNCE);
    Piece {
        start,
        head,
        n,
        span: (head + n).div_ceil(block) * block,
    }
}

/// Reads what exists of `offset..offset + buf.len()` of an O_DIRECT file, whatever the
/// alignment, through an aligned bounce buffer; how many bytes that was (fewer at the
/// end of the file).
pub fn read_some(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    with_block_size(|block| read_some_in(file, offset, buf, block))
}

fn read_some_in(file: &File, offset: u64, buf: &mut [u8], block: usize) -> std::io::Result<usize> {
    let len = buf.len();
    let mut bounce = bounce_for(len, block)?;
    let mut done = 0usize;
    while done < len {
        let Piece {
            start,
            head,
            n,
            span,
        } = piece(offset, done, len, block);
        let chunk = &mut bounce.as_mut_slice()[..span];
        let got = read_upto(file, chunk, start)?;
        let avail = got.saturating_sub(head).min(n);
        buf[done..done + avail].copy_from_slice(&chunk[head..head + avail]);
        done += avail;
        if avail < n {
            break;
        }
    }
    Ok(done)
}

/// Writes all of `buf` at `offset` of an O_DIRECT file, whatever the alignment: the
/// device blocks around the range go through an aligned bounce buffer (a partial block
/// is read first), under a lock on that window (see `window_lock`), so a neighbour's
/// write to the same block is never overwritten with stale bytes. The file ends where
/// it ended, or where the write ends.
pub fn write_all(file: &File, offset: u64, buf: &[u8]) -> std::io::Result<()> {
    with_block_size(|block| write_all_in(file, offset, buf, block))
}

fn write_all_in(file: &File, offset: u64, buf: &[u8], block: usize) -> std::io::Result<()> {
    let len = buf.len();
    let aligned = offset.is_multiple_of(block as u64) && len.is_multiple_of(block);
    // Whole blocks written past the end of a regular file would make it longer than
    // the write did (a device's length does not change).
    let meta = file.metadata()?;
    let key = window_lock::FileKey::of_metadata(&meta);
    let file_len = if aligned {
        None
    } else {
        Some(&meta)
            .filter(|m| m.file_type().is_file())
            .map(|m| m.len())
    };
    let mut bounce = bounce_for(len, block)?;
    let mut done = 0usize;
    while done < len {
        let Piece {
            start,
            head,
            n,
            span,
        } = piece(offset, done, len, block);
        let _window = window_lock::lock(key, start, start + span as u64);
        let chunk = &mut bounce.as_mut_slice()[..span];
        if head != 0 || !(head + n).is_multiple_of(block) {
            // The partial blocks at either end keep what they hold.
            chunk.fill(0);
            read_upto(file, &mut chunk[..block], start)?;
            let last = span - block;
            if last > 0 {
                read_upto(file, &mut chunk[last..], start + last as u64)?;
            }
        }
        chunk[head..head + n].copy_from_slice(&buf[done..done + n]);
        file.write_all_at(chunk, start)?;
        done += n;
    }
    if let Some(before) = file_len {
        let want = before.max(offset + len as u64);
        if file.metadata()?.len() != want {
            file.set_len(want)?;
        }
    }
    Ok(())
}

/// Reads or writes `buf` at `offset` of an O_DIRECT file, whatever their alignment
/// (`read_some`, `write_all`); a read past the end of the file is an error.
pub fn direct_io(file: &File, offset: u64, buf: DirectBuf) -> std::io::Result<()> {
    match buf {
        DirectBuf::Read(b) => {
            if read_some(file, offset, b)? < b.len() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "end of image",
                ));
            }
            Ok(())
        }
        DirectBuf::Write(b) => write_all(file, offset, b),
    }
}

/// Reads what there is of `block` at `offset` (the rest, past the end of the file,
/// stays as it is) and says how much that was; an error for a read that fails.
fn read_upto(file: &File, block: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < block.len() {
        match file.read_at(&mut block[got..], offset + got as u64) {
            Ok(0) => break,
            // A read that ends inside a sector ended at the end of the file (and an
            // O_DIRECT read from there would be refused).
            Ok(n) if !(got + n).is_multiple_of(DIRECT_BLOCK) => {
                got += n;
                break;
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{LoopDevice, Scratch};
    use std::sync::Arc;

    /// A 4 KiB-sector loop device opened O_DIRECT (checked: it refuses 512-byte I/O).
    fn four_k_device(tag: &str) -> (Scratch, LoopDevice, File) {
        let backing = Scratch::new(tag, 1 << 20);
        let dev = LoopDevice::over(&backing.path, 4096);
        let file = dev.open_direct();
        let mut b = AlignedBuf::new(DIRECT_BLOCK, DIRECT_ALIGN).unwrap();
        let e = file
            .read_at(&mut b.as_mut_slice()[..DIRECT_BLOCK], 0)
            .unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EINVAL),
            "not a 4 KiB-sector device"
        );
        (backing, dev, file)
    }

    /// On a filesystem over a 4 KiB-sector device, an empty file (all hole: a 512-byte
    /// O_DIRECT read at its start succeeds without the device) still needs 4 KiB.
    #[test]
    fn an_empty_file_on_a_4k_sector_filesystem_is_served_in_4k_blocks() {
        let backing = Scratch::new("direct-4k-fs", 64 << 20);
        let dev = LoopDevice::over(&backing.path, 4096);
        let fs = crate::testing::Ext4Mount::on(&dev);
        let path = fs.dir.join("empty.img");
        std::fs::File::create(&path).unwrap();
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let (block, _) = device_block(file.as_raw_fd()).unwrap();
        assert_eq!(block, 4096);
    }

    #[test]
    fn neighbouring_sectors_of_one_device_block_written_at_once_all_stay() {
        let (_backing, _dev, file) = four_k_device("direct-4k-race");
        let file = Arc::new(file);
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let file = file.clone();
                std::thread::spawn(move || {
                    let at = u64::from(i) * 512;
                    for round in 0..300u32 {
                        let mine = [i.wrapping_mul(31).wrapping_add(round as u8); 512];
                        write_all(&file, at, &mine).unwrap();
                        let mut back = [0u8; 512];
                        assert_eq!(read_some(&file, at, &mut back).unwrap(), 512);
                        assert!(
                            back == mine,
                            "sector {i}, round {round}: a neighbour's write-back lost this write"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn unaligned_reads_and_writes_on_a_4k_sector_device() {
        let (_backing, _dev, file) = four_k_device("direct-4k-rw");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        direct_io(&file, 1000, DirectBuf::Write(&data)).unwrap();
        let mut back = vec![0u8; data.len() + 200];
        direct_io(&file, 900, DirectBuf::Read(&mut back)).unwrap();
        assert!(back[..100].iter().all(|&b| b == 0));
        assert_eq!(&back[100..100 + data.len()], &data[..]);
        // Reading past the end of the device is an error; up to it is not.
        let mut tail = vec![0u8; 600];
        assert_eq!(read_some(&file, (1 << 20) - 500, &mut tail).unwrap(), 500);
        assert!(direct_io(&file, (1 << 20) - 500, DirectBuf::Read(&mut tail)).is_err());
    }
}
