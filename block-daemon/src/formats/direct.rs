//! O_DIRECT for the formats: whether a file bypasses the page cache, switching it, and
//! positioned reads and writes of any offset and length on such a file (through an
//! aligned bounce buffer that covers the sectors around the range). The engines move
//! aligned guest data themselves; this serves what the formats move on their own (a raw
//! backing file's copy-on-write reads, zeroes written by hand).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The alignment of the buffers O_DIRECT gets from us (a page: the largest logical
/// block size a disk has, so it suits every one).
pub const DIRECT_ALIGN: usize = 4096;

/// The granularity of the file offsets and lengths `direct_io` moves: a sector, as the
/// guest's requests are (a bigger block would make a partial write read and write back
/// sectors a concurrent request of the guest may be writing).
pub const DIRECT_BLOCK: usize = 512;

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

/// Reads or writes `buf` at `offset` of an O_DIRECT file, whatever their alignment: the
/// aligned blocks around the range go through an aligned bounce buffer (a write of a
/// partial block reads the block first). Bounded: at most `MAX_BOUNCE` bytes at a time.
pub fn direct_io(file: &File, offset: u64, buf: DirectBuf) -> std::io::Result<()> {
    const MAX_BOUNCE: usize = 1 << 20;
    let align = DIRECT_BLOCK as u64;
    let len = match &buf {
        DirectBuf::Read(b) => b.len(),
        DirectBuf::Write(b) => b.len(),
    };
    let bounce_len = len.min(MAX_BOUNCE) + 2 * DIRECT_BLOCK;
    let mut bounce = AlignedBuf::new(bounce_len, DIRECT_ALIGN)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    let file_len = match &buf {
        // A regular file's length; a block device's does not change.
        DirectBuf::Write(_) => Some(file.metadata()?)
            .filter(|m| m.file_type().is_file())
            .map(|m| m.len()),
        DirectBuf::Read(_) => None,
    };
    let mut buf = buf;
    let mut done = 0usize;
    while done < len {
        let pos = offset + done as u64;
        let start = pos - pos % align;
        let head = (pos - start) as usize;
        let n = (len - done).min(MAX_BOUNCE);
        let span = (head + n).div_ceil(DIRECT_BLOCK) * DIRECT_BLOCK;
        let block = &mut bounce.as_mut_slice()[..span];
        match &mut buf {
            DirectBuf::Read(b) => {
                if read_upto(file, block, start)? < head + n {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "end of image",
                    ));
                }
                b[done..done + n].copy_from_slice(&block[head..head + n]);
            }
            DirectBuf::Write(b) => {
                if head != 0 || !n.is_multiple_of(DIRECT_BLOCK) {
                    // The partial blocks at either end keep what they hold.
                    block.fill(0);
                    read_upto(file, &mut block[..DIRECT_BLOCK], start)?;
                    let last = span - DIRECT_BLOCK;
                    if last > 0 {
                        read_upto(file, &mut block[last..], start + last as u64)?;
                    }
                }
                block[head..head + n].copy_from_slice(&b[done..done + n]);
                file.write_all_at(block, start)?;
            }
        }
        done += n;
    }
    // Whole blocks written past the end of the file made it longer than the write did:
    // it ends where it ended, or where the write ends.
    if let Some(before) = file_len {
        let want = before.max(offset + len as u64);
        if file.metadata()?.len() != want {
            file.set_len(want)?;
        }
    }
    Ok(())
}

/// Reads what there is of `block` at `offset` (the rest, past the end of the file,
/// stays as it is) and says how much that was; an error for a read that fails.
fn read_upto(file: &File, block: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < block.len() {
        match file.read_at(&mut block[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
