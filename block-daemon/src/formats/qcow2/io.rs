//! Positioned reads and writes of an image file with the checks every metadata access
//! needs: a structure that lies (even partly) beyond the end of the file is an invalid
//! image, not a short read.
//!
//! The daemon may put the image's file description in O_DIRECT mode (cache=none), so
//! I/O of any size and alignment is done through an aligned bounce buffer in that
//! case: whole 512-byte sectors (4096 bytes where the device needs them), read,
//! changed and written back. With clusters of at least 512 bytes a sector never
//! straddles two clusters, so this never touches a neighbour's bytes (with clusters
//! smaller than a 4096-byte device block it could race with a direct write to the
//! neighbouring cluster; such devices with such images are not supported).
//!
//! The open image knows its mode (`Meta::direct`, read once at open) and passes it in
//! (`*_in` functions), saving an `fcntl` per metadata access; the plain functions ask
//! the file (header parsing, image creation). Should the mode be switched on after
//! the image was opened, a plain write or read that O_DIRECT refuses (EINVAL) asks the
//! file again and goes through the aligned buffer.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::formats::FormatError;

/// The file's current length.
pub fn file_len(file: &File) -> Result<u64, FormatError> {
    Ok(file.metadata()?.len())
}

/// Whether `file`'s description is in O_DIRECT mode (one `fcntl`).
pub fn is_direct(file: &File) -> bool {
    // SAFETY: F_GETFL on an fd this File owns; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_DIRECT != 0
}

/// A zeroed buffer of `len` bytes whose start is 4096-aligned.
struct Aligned {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let mem = vec![0u8; len + 4096];
        let start = mem.as_ptr().align_offset(4096);
        Aligned { mem, start, len }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

/// Reads what exists of `offset..offset + buf.len()`; the count read (short at EOF).
fn pread_some(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Runs `f` on the aligned span covering `offset..offset + len` (512-byte sectors,
/// 4096-byte blocks if the device refuses those); `f` gets the span's offset and an
/// aligned buffer holding what the file has there (zeroes past its end), and returns
/// whether to write the buffer back. `overwrite`: `f` replaces all of
/// `offset..offset + len`, so a span that is exactly that range is not read first.
fn with_aligned_span(
    file: &File,
    offset: u64,
    len: usize,
    overwrite: bool,
    mut f: impl FnMut(u64, &mut [u8]) -> bool,
) -> std::io::Result<()> {
    let mut last = None;
    for align in [512u64, 4096] {
        let start = offset & !(align - 1);
        let end = (offset + len as u64).next_multiple_of(align);
        let mut b = Aligned::new((end - start) as usize);
        let whole = overwrite && start == offset && end == offset + len as u64;
        let read = if whole {
            Ok(0)
        } else {
            pread_some(file, start, b.bytes())
        };
        let r = read.and_then(|_| {
            if f(start, b.bytes()) {
                file.write_all_at(b.bytes(), start)
            } else {
                Ok(())
            }
        });
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL)))
}

/// Whether a plain access that failed with `e` must be retried through the aligned
/// buffer (O_DIRECT was switched on since `direct` was read).
fn switched_to_direct(e: &std::io::Error, file: &File) -> bool {
    e.raw_os_error() == Some(libc::EINVAL) && is_direct(file)
}

/// Reads the bytes at `offset`; how many exist (fewer at the end of the file).
/// `direct`: the file's mode as its opener knows it.
fn read_upto(file: &File, offset: u64, buf: &mut [u8], direct: bool) -> std::io::Result<usize> {
    if !direct {
        match pread_some(file, offset, buf) {
            Err(e) if switched_to_direct(&e, file) => {}
            other => return other,
        }
    }
    let flen = file.metadata()?.len();
    let len = buf.len();
    with_aligned_span(file, offset, len, false, |start, span| {
        let at = (offset - start) as usize;
        buf.copy_from_slice(&span[at..at + len]);
        false
    })?;
    Ok(flen.saturating_sub(offset).min(len as u64) as usize)
}

/// Reads `buf.len()` bytes at `offset`; `what` names the structure in the error.
pub fn read_meta(file: &File, offset: u64, buf: &mut [u8], what: &str) -> Result<(), FormatError> {
    read_meta_in(file, is_direct(file), offset, buf, what)
}

/// `read_meta` of a file whose mode the caller knows (`direct`).
pub fn read_meta_in(
    file: &File,
    direct: bool,
    offset: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<(), FormatError> {
    if offset.checked_add(buf.len() as u64).is_none() {
        return Err(FormatError::Invalid(format!("{what} offset invalid")));
    }
    let n = read_upto(file, offset, buf, direct)?;
    if n < buf.len() {
        return Err(FormatError::Invalid(format!(
            "{what} lies beyond the end of the image file"
        )));
    }
    Ok(())
}

/// Reads data bytes at `offset`; what lies beyond the end of the file reads as zeroes
/// (a preallocated or truncated tail, as QEMU's file driver reads it).
/// `direct`: the file's mode as the caller knows it.
pub fn read_data(
    file: &File,
    direct: bool,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), FormatError> {
    let n = read_upto(file, offset, buf, direct)?;
    buf[n..].fill(0);
    Ok(())
}

/// Writes all of `buf` at `offset`.
pub fn write_at(file: &File, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
    write_at_in(file, is_direct(file), offset, buf)
}

/// `write_at` to a file whose mode the caller knows (`direct`).
pub fn write_at_in(file: &File, direct: bool, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
    if !direct {
        match file.write_all_at(buf, offset) {
            Err(e) if switched_to_direct(&e, file) => {}
            other => return Ok(other?),
        }
    }
    with_aligned_span(file, offset, buf.len(), true, |start, span| {
        let at = (offset - start) as usize;
        span[at..at + buf.len()].copy_from_slice(buf);
        true
    })?;
    Ok(())
}
