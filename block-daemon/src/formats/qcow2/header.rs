//! The qcow2 header (versions 2 and 3): parsed and checked as QEMU 7.2's qcow2_do_open
//! checks it, with QEMU's error texts. `Header::read` is cheap and safe on any file (the
//! gateway calls it to fill image info and to find backing files); what this
//! implementation cannot serve (encryption, external data files, zstd, extended L2) is
//! refused separately by `Header::check_supported`, so image info still works on them.

use std::fs::File;

use crate::formats::qcow2::extensions::{self, FeatureName};
use crate::formats::qcow2::io::{file_len, read_meta};
use crate::formats::qcow2::layout::{
    be32, be64, AUTOCLEAR_MASK, COMPAT_LAZY_REFCOUNTS, COMPRESSION_ZLIB, COMPRESSION_ZSTD,
    FEATURE_TYPE_INCOMPATIBLE, INCOMPAT_COMPRESSION, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE,
    INCOMPAT_DIRTY, INCOMPAT_EXTL2, INCOMPAT_MASK, MAGIC, MAX_BACKING_FILE_NAME, MAX_CLUSTER_BITS,
    MAX_L1_BYTES, MAX_REFTABLE_BYTES, MAX_SNAPSHOTS, MIN_CLUSTER_BITS, SNAPSHOT_HEADER_LEN,
    V2_HEADER_LEN, V3_MIN_HEADER_LEN,
};
use crate::formats::FormatError;

/// A parsed, checked qcow2 header with its extensions and backing file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    /// The virtual size in bytes.
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    /// 0 zlib, 1 zstd.
    pub compression_type: u8,
    pub extended_l2: bool,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub feature_names: Vec<FeatureName>,
    /// The bitmaps extension (persistent dirty bitmaps: see `bitmaps`).
    pub bitmaps: Option<crate::formats::qcow2::extensions::BitmapsExtension>,
    pub data_file: Option<String>,
    pub unknown_extensions: Vec<(u32, Vec<u8>)>,
}

/// Fails with QEMU's "%s too large" / "%s offset invalid" (qcow2_validate_table).
pub fn validate_table(
    offset: u64,
    entries: u64,
    entry_len: u64,
    max_bytes: u64,
    cluster_size: u64,
    name: &str,
) -> Result<(), FormatError> {
    if entries > max_bytes / entry_len {
        return Err(FormatError::Invalid(format!("{name} too large")));
    }
    if (i64::MAX as u64) - entries * entry_len < offset || !offset.is_multiple_of(cluster_size) {
        return Err(FormatError::Invalid(format!("{name} offset invalid")));
    }
    Ok(())
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    pub fn dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    pub fn corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    /// Entries of one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// L1 entries needed for `size` bytes of guest data.
    pub fn l1_entries_for(&self, size: u64) -> u64 {
        let per_l1 = self.cluster_size() * self.l2_entries();
        size.div_ceil(per_l1)
    }

    /// Reads and checks the header of `file` (QEMU's qcow2_do_open checks, in its
    /// order, with its texts).
    pub fn read(file: &File) -> Result<Header, FormatError> {
        let mut b = [0u8; 112];
        let flen = file_len(file)?;
        if flen < u64::from(V2_HEADER_LEN) {
            return Err(FormatError::Invalid("Image is not in qcow2 format".into()));
        }
        let n = flen.min(b.len() as u64) as usize;
        read_meta(file, 0, &mut b[..n], "qcow2 header")?;
        if be32(&b, 0) != MAGIC {
            return Err(FormatError::Invalid("Image is not in qcow2 format".into()));
        }
        let version = be32(&b, 4);
        if !(2..=3).contains(&version) {
            return Err(FormatError::Unsupported(format!(
                "Unsupported qcow2 version {version}"
            )));
        }
        let cluster_bits = be32(&b, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(FormatError::Invalid(format!(
                "Unsupported cluster size: 2^{cluster_bits}"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be64(&b, 8),
            backing_file_size: be32(&b, 16),
            cluster_bits,
            size: be64(&b, 24),
            crypt_method: be32(&b, 32),
            l1_size: be32(&b, 36),
            l1_table_offset: be64(&b, 40),
            refcount_table_offset: be64(&b, 48),
            refcount_table_clusters: be32(&b, 56),
            nb_snapshots: be32(&b, 60),
            snapshots_offset: be64(&b, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: COMPRESSION_ZLIB,
            extended_l2: false,
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
            bitmaps: None,
            data_file: None,
            unknown_extensions: Vec::new(),
        };
        if version == 3 {
            if n < V3_MIN_HEADER_LEN as usize {
                return Err(FormatError::Invalid("qcow2 header too short".into()));
            }
            h.incompatible_features = be64(&b, 72);
            h.compatible_features = be64(&b, 80);
            h.autoclear_features = be64(&b, 88);
            h.refcount_order = be32(&b, 96);
            h.header_length = be32(&b, 100);
            if h.header_length < V3_MIN_HEADER_LEN {
                return Err(FormatError::Invalid("qcow2 header too short".into()));
            }
        }
        if u64::from(h.header_length) > cluster_size {
            return Err(FormatError::Invalid(
                "qcow2 header exceeds cluster size".into(),
            ));
        }
        if h.header_length > 104 {
            if n <= 104 {
                return Err(FormatError::Invalid("qcow2 header too short".into()));
            }
            h.compression_type = b[104];
        }
        if h.backing_file_offset > cluster_size {
            return Err(FormatError::Invalid("Invalid backing file offset".into()));
        }
        let ext_end = if h.backing_file_offset != 0 {
            h.backing_file_offset
        } else {
            cluster_size
        }
        .min(flen);

        // validate_compression_type
        if h.compression_type != COMPRESSION_ZLIB && h.compression_type != COMPRESSION_ZSTD {
            return Err(FormatError::Unsupported(format!(
                "qcow2: unknown compression type: {}",
                h.compression_type
            )));
        }
        let flagged = h.incompatible_features & INCOMPAT_COMPRESSION != 0;
        if h.compression_type == COMPRESSION_ZLIB && flagged {
            return Err(FormatError::Invalid(
                "qcow2: Compression type incompatible feature bit must not be set".into(),
            ));
        }
        if h.compression_type != COMPRESSION_ZLIB && !flagged {
            return Err(FormatError::Invalid(
                "qcow2: Compression type incompatible feature bit must be set".into(),
            ));
        }

        let unknown = h.incompatible_features & !INCOMPAT_MASK;
        if unknown != 0 {
            let names = extensions::read(file, u64::from(h.header_length), ext_end, false)
                .map(|e| e.feature_names)
                .unwrap_or_default();
            return Err(FormatError::Unsupported(unsupported_features(
                &names, unknown,
            )));
        }
        h.extended_l2 = h.incompatible_features & INCOMPAT_EXTL2 != 0;

        if h.refcount_order > 6 {
            return Err(FormatError::Invalid(
                "Reference count entry width too large; may not exceed 64 bits".into(),
            ));
        }
        if h.refcount_table_clusters == 0 {
            return Err(FormatError::Invalid(
                "Image does not contain a reference count table".into(),
            ));
        }
        validate_table(
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters),
            cluster_size,
            MAX_REFTABLE_BYTES,
            cluster_size,
            "Reference count table",
        )?;
        validate_table(
            h.snapshots_offset,
            u64::from(h.nb_snapshots),
            SNAPSHOT_HEADER_LEN,
            SNAPSHOT_HEADER_LEN * MAX_SNAPSHOTS,
            cluster_size,
            "Snapshot table",
        )?;
        validate_table(
            h.l1_table_offset,
            u64::from(h.l1_size),
            8,
            MAX_L1_BYTES,
            cluster_size,
            "Active L1 table",
        )?;
        let l1_needed = h.l1_entries_for(h.size);
        if l1_needed > i32::MAX as u64 {
            return Err(FormatError::Invalid("Image is too big".into()));
        }
        if u64::from(h.l1_size) < l1_needed {
            return Err(FormatError::Invalid("L1 table is too small".into()));
        }

        let ext = extensions::read(file, u64::from(h.header_length), ext_end, true)?;
        h.backing_format = ext.backing_format;
        h.feature_names = ext.feature_names;
        h.bitmaps = ext.bitmaps;
        h.data_file = ext.data_file;
        h.unknown_extensions = ext.unknown;

        if h.backing_file_offset != 0 {
            let len = h.backing_file_size;
            if u64::from(len)
                > u64::from(MAX_BACKING_FILE_NAME).min(cluster_size - h.backing_file_offset)
            {
                return Err(FormatError::Invalid("Backing file name too long".into()));
            }
            let mut name = vec![0u8; len as usize];
            read_meta(file, h.backing_file_offset, &mut name, "Backing file name")?;
            let name = String::from_utf8(name)
                .map_err(|_| FormatError::Invalid("Backing file name is not valid UTF-8".into()))?;
            // QEMU treats an empty name as no backing file.
            h.backing_file = (!name.is_empty()).then_some(name);
        }
        Ok(h)
    }

    /// Refuses what this implementation cannot serve, with QEMU's words where QEMU
    /// has them.
    pub fn check_supported(&self) -> Result<(), FormatError> {
        if self.crypt_method != 0 {
            return Err(FormatError::Unsupported(format!(
                "qcow2: encrypted images are not supported (encryption method {})",
                self.crypt_method
            )));
        }
        if self.incompatible_features & INCOMPAT_DATA_FILE != 0 || self.data_file.is_some() {
            return Err(FormatError::Unsupported(
                "qcow2: images with an external data file are not supported".into(),
            ));
        }
        if self.compression_type == COMPRESSION_ZSTD {
            // QEMU built without zstd says exactly this.
            return Err(FormatError::Unsupported(format!(
                "qcow2: unknown compression type: {}",
                self.compression_type
            )));
        }
        if self.extended_l2 {
            return Err(FormatError::Unsupported(
                "qcow2: images with extended L2 entries (subclusters) are not supported".into(),
            ));
        }
        Ok(())
    }

    /// The autoclear bits a writable open keeps (QEMU clears the ones it does not know).
    pub fn known_autoclear(&self) -> u64 {
        self.autoclear_features & AUTOCLEAR_MASK
    }
}

/// QEMU's report_unsupported_feature text.
fn unsupported_features(names: &[FeatureName], mut mask: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    // QEMU stops at the first entry without a name.
    for f in names.iter().take_while(|f| !f.name.is_empty()) {
        if f.kind == FEATURE_TYPE_INCOMPATIBLE && f.bit < 64 && mask & (1u64 << f.bit) != 0 {
            parts.push(f.name.chars().take(46).collect());
            mask &= !(1u64 << f.bit);
        }
    }
    if mask != 0 {
        parts.push(format!("Unknown incompatible feature: {mask:x}"));
    }
    format!("Unsupported qcow2 feature(s): {}", parts.join(", "))
}
