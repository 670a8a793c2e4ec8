//! Positioned reads and writes of an image file with the checks every metadata access
//! needs: a structure that lies (even partly) beyond the end of the file is an invalid
//! image, not a short read.
//!
//! The daemon may put the image's file description in O_DIRECT mode (cache=none): then
//! I/O of any size and alignment goes through `formats::direct`'s bounce buffer (whole
//! 512-byte sectors, 4096-byte blocks where the device needs them, read, changed and
//! written back under a lock on that window, so clusters smaller than a device block
//! do not lose a neighbour's write).

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::formats::{direct, host_file, FormatError};

/// The file's current length (a block device's size: its `metadata().len()` is 0).
pub fn file_len(file: &File) -> Result<u64, FormatError> {
    Ok(host_file::length(file)?)
}

fn is_direct(file: &File) -> bool {
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

/// Reads the bytes at `offset`; how many exist (fewer at the end of the file).
fn read_upto(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    if is_direct(file) {
        direct::read_some(file, offset, buf)
    } else {
        pread_some(file, offset, buf)
    }
}

/// Reads `buf.len()` bytes at `offset`; `what` names the structure in the error.
pub fn read_meta(file: &File, offset: u64, buf: &mut [u8], what: &str) -> Result<(), FormatError> {
    if offset.checked_add(buf.len() as u64).is_none() {
        return Err(FormatError::Invalid(format!("{what} offset invalid")));
    }
    let n = read_upto(file, offset, buf)?;
    if n < buf.len() {
        return Err(FormatError::Invalid(format!(
            "{what} lies beyond the end of the image file"
        )));
    }
    Ok(())
}

/// Reads data bytes at `offset`; what lies beyond the end of the file reads as zeroes
/// (a preallocated or truncated tail, as QEMU's file driver reads it).
pub fn read_data(file: &File, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
    let n = read_upto(file, offset, buf)?;
    buf[n..].fill(0);
    Ok(())
}

/// Writes all of `buf` at `offset`.
pub fn write_at(file: &File, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
    if is_direct(file) {
        direct::write_all(file, offset, buf)?;
    } else {
        file.write_all_at(buf, offset)?;
    }
    Ok(())
}
