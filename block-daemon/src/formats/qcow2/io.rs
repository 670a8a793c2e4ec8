//! Positioned reads and writes of an image file with the checks every metadata access
//! needs: a structure that lies (even partly) beyond the end of the file is an invalid
//! image, not a short read.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::formats::FormatError;

/// The file's current length.
pub fn file_len(file: &File) -> Result<u64, FormatError> {
    Ok(file.metadata()?.len())
}

/// Reads `buf.len()` bytes at `offset`; `what` names the structure in the error.
pub fn read_meta(file: &File, offset: u64, buf: &mut [u8], what: &str) -> Result<(), FormatError> {
    if offset.checked_add(buf.len() as u64).is_none() {
        return Err(FormatError::Invalid(format!("{what} offset invalid")));
    }
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FormatError::Invalid(format!("{what} lies beyond the end of the image file"))
        } else {
            FormatError::Io(e)
        }
    })
}

/// Reads data bytes at `offset`; what lies beyond the end of the file reads as zeroes
/// (a preallocated or truncated tail, as QEMU's file driver reads it).
pub fn read_data(file: &File, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
    let mut done = 0;
    while done < buf.len() {
        let n = match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            buf[done..].fill(0);
            return Ok(());
        }
        done += n;
    }
    Ok(())
}

/// Writes all of `buf` at `offset`.
pub fn write_at(file: &File, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
    file.write_all_at(buf, offset)?;
    Ok(())
}
