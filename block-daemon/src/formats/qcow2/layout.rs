//! The qcow2 on-disk layout: magic numbers, field offsets, feature bits, entry masks
//! and the limits QEMU 7.2 enforces (docs/interop/qcow2.txt; block/qcow2.h).

pub const MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"

pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Header field offsets (big-endian fields).
pub const OFF_BACKING_FILE_OFFSET: u64 = 8;
pub const OFF_SIZE: u64 = 24;
pub const OFF_L1_SIZE: u64 = 36;
pub const OFF_REFCOUNT_TABLE_OFFSET: u64 = 48;
pub const OFF_NB_SNAPSHOTS: u64 = 60;
pub const OFF_INCOMPATIBLE: u64 = 72;
pub const OFF_AUTOCLEAR: u64 = 88;
pub const V2_HEADER_LEN: u32 = 72;
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// The v3 header QEMU writes: 104 bytes plus the compression type, padded to 8.
pub const V3_HEADER_LEN: u32 = 112;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
pub const INCOMPAT_MASK: u64 = 0x1f;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;
pub const AUTOCLEAR_MASK: u64 = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW;

pub const COMPRESSION_ZLIB: u8 = 0;
pub const COMPRESSION_ZSTD: u8 = 1;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub const EXT_CRYPTO_HEADER: u32 = 0x0537_be77;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The feature name table QEMU writes into every v3 image: (type, bit, name).
pub const FEATURE_NAMES: [(u8, u8, &str); 8] = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];
pub const FEATURE_ENTRY_LEN: usize = 48;
pub const FEATURE_TYPE_INCOMPATIBLE: u8 = 0;

/// QEMU's caps on what an image may claim.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_SNAPSHOTS: u64 = 65536;
pub const SNAPSHOT_HEADER_LEN: u64 = 40;
pub const MAX_SNAPSHOT_EXTRA_DATA: u32 = 1024;
pub const MAX_SNAPSHOTS_BYTES: u64 = 1024 * MAX_SNAPSHOTS;
pub const MAX_BACKING_FILE_NAME: u32 = 1023;
/// QEMU's bs->backing_format is char[16].
pub const MAX_BACKING_FORMAT_LEN: u32 = 15;

/// L1 and L2 entries.
pub const OFLAG_COPIED: u64 = 1 << 63;
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
pub const OFLAG_ZERO: u64 = 1;
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bits of a standard L2 entry that must be zero (reserved).
pub const L2E_STD_RESERVED: u64 = 0x3f00_0000_0000_01fe;
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

/// Big-endian field access on byte slices already bounds-checked by the caller.
pub fn be16(b: &[u8], at: usize) -> u16 {
    let mut v = [0u8; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(v)
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(v)
}

pub fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Refcount `index` of a refcount block whose entries are `1 << order` bits wide
/// (sub-byte widths pack the lowest bits first, as QEMU does; wider ones are big-endian).
pub fn refcount_get(block: &[u8], index: usize, order: u32) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let byte = block[index / per_byte];
            let shift = (index % per_byte) * bits;
            u64::from((byte >> shift) & ((1u8 << bits) - 1))
        }
        3 => u64::from(block[index]),
        4 => u64::from(be16(block, index * 2)),
        5 => u64::from(be32(block, index * 4)),
        _ => be64(block, index * 8),
    }
}

/// Sets refcount `index` (the caller checked `value <= refcount_max(order)`).
pub fn refcount_set(block: &mut [u8], index: usize, order: u32, value: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (index % per_byte) * bits;
            let mask = ((1u8 << bits) - 1) << shift;
            let byte = &mut block[index / per_byte];
            *byte = (*byte & !mask) | (((value as u8) << shift) & mask);
        }
        3 => block[index] = value as u8,
        4 => put16(block, index * 2, value as u16),
        5 => put32(block, index * 4, value as u32),
        _ => put64(block, index * 8, value),
    }
}

/// The largest refcount an entry of `1 << order` bits holds.
pub fn refcount_max(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << order)) - 1
    }
}
