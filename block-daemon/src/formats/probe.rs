//! Format probing for a backing file named without a format: "qcow2" when the file
//! starts with the qcow2 magic and a version of 2 or more (QEMU's qcow2_probe), an
//! error for version 1 (QEMU's old qcow format, which QEMU would pick), else "raw".

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::formats::qcow2::layout::MAGIC;
use crate::formats::FormatError;

/// "qcow2" or "raw".
pub fn probe(file: &File) -> Result<&'static str, FormatError> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < b.len() {
        match file.read_at(&mut b[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    // QEMU reads its probe buffer padded with zeroes: eight bytes decide.
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let version = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    if got == 8 && magic == MAGIC && version >= 2 {
        Ok("qcow2")
    } else if got == 8 && magic == MAGIC && version == 1 {
        // QEMU's qcow (version 1) driver claims it: not raw, and not served here.
        Err(FormatError::Unsupported(
            "Image format qcow (version 1) is not supported".into(),
        ))
    } else {
        Ok("raw")
    }
}
