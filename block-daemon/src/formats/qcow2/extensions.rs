//! The header extensions between the header and the backing file name (or the end of
//! cluster 0): backing format, feature name table, bitmaps, external data file, crypto
//! header, and unknown ones (kept, so a header rewrite could preserve them).

use std::fs::File;

use crate::formats::qcow2::io::read_meta;
use crate::formats::qcow2::layout::{
    be32, be64, EXT_BACKING_FORMAT, EXT_BITMAPS, EXT_CRYPTO_HEADER, EXT_DATA_FILE, EXT_END,
    EXT_FEATURE_TABLE, FEATURE_ENTRY_LEN, MAX_BACKING_FORMAT_LEN,
};
use crate::formats::FormatError;

/// One entry of the feature name table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    pub bit: u8,
    pub name: String,
}

/// The bitmaps extension: where the bitmap directory is (see `bitmaps`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapsExtension {
    pub nb_bitmaps: u32,
    pub directory_size: u64,
    pub directory_offset: u64,
}

/// What the extensions say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub backing_format: Option<String>,
    pub feature_names: Vec<FeatureName>,
    /// The bitmaps extension, if present.
    pub bitmaps: Option<BitmapsExtension>,
    pub data_file: Option<String>,
    pub crypto_header: bool,
    /// Extensions this implementation does not know: (magic, data).
    pub unknown: Vec<(u32, Vec<u8>)>,
}

/// Parses the extensions in `start..end` of the file (QEMU's qcow2_read_extensions).
/// `strict`: fail on a malformed known extension (a normal open); a lenient parse only
/// gathers feature names for an error message.
pub fn read(file: &File, start: u64, end: u64, strict: bool) -> Result<Extensions, FormatError> {
    let mut ext = Extensions::default();
    let mut offset = start;
    while offset < end {
        let mut head = [0u8; 8];
        read_meta(file, offset, &mut head, "Header extension")?;
        let magic = be32(&head, 0);
        let len = be32(&head, 4);
        offset += 8;
        if offset > end || u64::from(len) > end - offset {
            return Err(FormatError::Invalid("Header extension too large".into()));
        }
        // `end` is at most one cluster (2 MiB) into the file: the length is bounded.
        let mut data = vec![0u8; len as usize];
        read_meta(file, offset, &mut data, "Header extension")?;
        match magic {
            EXT_END => return Ok(ext),
            EXT_BACKING_FORMAT => {
                if len > MAX_BACKING_FORMAT_LEN {
                    if strict {
                        return Err(FormatError::Invalid(format!(
                            "ERROR: ext_backing_format: len={len} too large (>={})",
                            MAX_BACKING_FORMAT_LEN + 1
                        )));
                    }
                } else {
                    ext.backing_format = Some(c_string(&data));
                }
            }
            EXT_FEATURE_TABLE => {
                ext.feature_names = data
                    .chunks_exact(FEATURE_ENTRY_LEN)
                    .map(|e| FeatureName {
                        kind: e[0],
                        bit: e[1],
                        name: c_string(&e[2..]),
                    })
                    .collect();
            }
            EXT_BITMAPS => {
                if len != 24 {
                    if strict {
                        return Err(FormatError::Invalid(
                            "bitmaps_ext: Invalid extension length".into(),
                        ));
                    }
                } else {
                    ext.bitmaps = Some(BitmapsExtension {
                        nb_bitmaps: be32(&data, 0),
                        directory_size: be64(&data, 8),
                        directory_offset: be64(&data, 16),
                    });
                }
            }
            EXT_DATA_FILE => ext.data_file = Some(c_string(&data)),
            EXT_CRYPTO_HEADER => ext.crypto_header = true,
            other => ext.unknown.push((other, data)),
        }
        offset += (u64::from(len) + 7) & !7;
    }
    Ok(ext)
}

/// Bytes up to the first NUL, as text (invalid UTF-8 replaced: names are for display).
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}
