//! Positioned reads and writes of an image file with the checks every metadata access
//! needs: a structure that lies (even partly) beyond the end of the file is an invalid
//! image, not a short read.
//!
//! The daemon may put the image's file description in O_DIRECT mode (cache=none): then
//! I/O of any size and alignment goes through `formats::direct`'s bounce buffer (whole
//! 512-byte sectors, 4096-byte blocks where the device needs them, read, changed and
//! written back under a lock on that window, so clusters smaller than a device block
//! do not lose a neighbour's write).
//!
//! The open image knows its mode (`Meta::direct`, read once at open) and passes it in
//! (`*_in` functions), saving an `fcntl` per metadata access; the plain functions ask
//! the file (header parsing, image creation). Should the mode be switched on after
//! the image was opened, a plain write or read that O_DIRECT refuses (EINVAL) asks the
//! file again and goes through the bounce buffer.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::formats::{direct, host_file, FormatError};

/// The file's current length (a block device's size: its `metadata().len()` is 0).
pub fn file_len(file: &File) -> Result<u64, FormatError> {
    Ok(host_file::length(file)?)
}

/// Whether `file`'s description is in O_DIRECT mode (one `fcntl`).
pub fn is_direct(file: &File) -> bool {
    direct::is_direct(file).unwrap_or(false)
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

/// Whether a plain access that failed with `e` must be retried through the bounce
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
    direct::read_some(file, offset, buf)
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
    direct::write_all(file, offset, buf)?;
    Ok(())
}
