//! Creating an empty qcow2 image in a file the caller opened (qemu-img create's
//! layout: header in cluster 0, the refcount table from cluster 1, its refcount blocks
//! after it, then the L1 table), with the option checks and texts of QEMU 7.2's
//! qcow2_co_create.

use std::fs::File;

use crate::formats::qcow2::io::write_at;
use crate::formats::qcow2::layout::{
    put32, put64, refcount_set, COMPAT_LAZY_REFCOUNTS, EXT_BACKING_FORMAT, EXT_FEATURE_TABLE,
    FEATURE_ENTRY_LEN, FEATURE_NAMES, MAGIC, MAX_BACKING_FILE_NAME, MAX_BACKING_FORMAT_LEN,
    V2_HEADER_LEN, V3_HEADER_LEN,
};
use crate::formats::FormatError;

/// The image's compatibility level (qemu-img's compat option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat {
    /// "0.10": version 2.
    V0_10,
    /// "1.1": version 3.
    V1_1,
}

/// qemu-img create's qcow2 options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    pub size: u64,
    pub cluster_size: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub compat: Compat,
    pub refcount_bits: u32,
    pub lazy_refcounts: bool,
}

impl Default for CreateOptions {
    fn default() -> CreateOptions {
        CreateOptions {
            size: 0,
            cluster_size: 65536,
            backing_file: None,
            backing_format: None,
            compat: Compat::V1_1,
            refcount_bits: 16,
            lazy_refcounts: false,
        }
    }
}

fn invalid(msg: &str) -> FormatError {
    FormatError::Invalid(msg.to_string())
}

/// Checks the options as qcow2_co_create does.
fn check(opts: &CreateOptions) -> Result<(u32, u32), FormatError> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(invalid(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if !opts.size.is_multiple_of(512) {
        return Err(invalid("Image size must be a multiple of 512 bytes"));
    }
    if opts.size > i64::MAX as u64 {
        return Err(invalid("Image size is too large for this cluster size"));
    }
    let rb = opts.refcount_bits;
    if rb == 0 || rb > 64 || !rb.is_power_of_two() {
        return Err(invalid(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if opts.compat == Compat::V0_10 && rb != 16 {
        return Err(invalid(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)",
        ));
    }
    if opts.compat == Compat::V0_10 && opts.lazy_refcounts {
        return Err(invalid(
            "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)",
        ));
    }
    if opts.backing_file.is_none() && opts.backing_format.is_some() {
        return Err(invalid(
            "Backing format cannot be used without backing file",
        ));
    }
    if let Some(b) = &opts.backing_file {
        if b.len() > MAX_BACKING_FILE_NAME as usize {
            return Err(invalid("Backing file name too long"));
        }
    }
    if let Some(f) = &opts.backing_format {
        if f.len() > MAX_BACKING_FORMAT_LEN as usize {
            return Err(invalid("Backing format name too long"));
        }
    }
    Ok((cs.trailing_zeros(), rb.trailing_zeros()))
}

/// Cluster 0: header, extensions (the feature name table only where it fits, as QEMU
/// does), end marker, backing file name.
fn header_cluster(
    opts: &CreateOptions,
    cluster_bits: u32,
    refcount_order: u32,
    l1: (u64, u64),
    reftable: (u64, u64),
) -> Result<Vec<u8>, FormatError> {
    let cs = 1usize << cluster_bits;
    let v3 = opts.compat == Compat::V1_1;
    let mut exts: Vec<u8> = Vec::new();
    if let Some(f) = &opts.backing_format {
        push_ext(&mut exts, EXT_BACKING_FORMAT, f.as_bytes());
    }
    let hlen = if v3 { V3_HEADER_LEN } else { V2_HEADER_LEN } as usize;
    let name_len = opts.backing_file.as_ref().map_or(0, |b| b.len());
    if v3 {
        let mut table = Vec::with_capacity(FEATURE_NAMES.len() * FEATURE_ENTRY_LEN);
        for (kind, bit, name) in FEATURE_NAMES {
            let mut e = [0u8; FEATURE_ENTRY_LEN];
            e[0] = kind;
            e[1] = bit;
            e[2..2 + name.len()].copy_from_slice(name.as_bytes());
            table.extend_from_slice(&e);
        }
        if hlen + exts.len() + 8 + table.len() + 8 + name_len <= cs {
            push_ext(&mut exts, EXT_FEATURE_TABLE, &table);
        }
    }
    exts.extend_from_slice(&[0u8; 8]); // end of extensions
    if hlen + exts.len() + name_len > cs {
        return Err(invalid("Header does not fit in the first cluster"));
    }
    let mut b = vec![0u8; cs];
    put32(&mut b, 0, MAGIC);
    put32(&mut b, 4, if v3 { 3 } else { 2 });
    if let Some(name) = &opts.backing_file {
        let at = hlen + exts.len();
        put64(&mut b, 8, at as u64);
        put32(&mut b, 16, name.len() as u32);
        b[at..at + name.len()].copy_from_slice(name.as_bytes());
    }
    put32(&mut b, 20, cluster_bits);
    put64(&mut b, 24, opts.size);
    put32(&mut b, 36, l1.1 as u32);
    put64(&mut b, 40, l1.0);
    put64(&mut b, 48, reftable.0);
    put32(&mut b, 56, reftable.1 as u32);
    if v3 {
        let compat = if opts.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        };
        put64(&mut b, 80, compat);
        put32(&mut b, 96, refcount_order);
        put32(&mut b, 100, V3_HEADER_LEN);
    }
    b[hlen..hlen + exts.len()].copy_from_slice(&exts);
    Ok(b)
}

fn push_ext(out: &mut Vec<u8>, magic: u32, data: &[u8]) {
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// Writes an empty image of `opts` into `file` (truncating what was there).
pub fn create(file: &File, opts: &CreateOptions) -> Result<(), FormatError> {
    let (cluster_bits, refcount_order) = check(opts)?;
    let cs = 1u64 << cluster_bits;
    let l2_entries = cs / 8;
    let l1_entries = opts.size.div_ceil(cs * l2_entries);
    if l1_entries * 8 > 32 << 20 {
        return Err(invalid("Image size is too large for this cluster size"));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(cs);
    let per_block = (cs * 8) >> refcount_order;
    // Refcount table and blocks sized to cover every cluster this function writes.
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let total = 1 + rt + rb + l1_clusters;
        let nrb = total.div_ceil(per_block);
        let nrt = (nrb * 8).div_ceil(cs);
        if nrb == rb && nrt == rt {
            break;
        }
        (rt, rb) = (nrt.max(1), nrb.max(1));
    }
    let total = 1 + rt + rb + l1_clusters;
    let reftable_off = cs;
    let blocks_off = reftable_off + rt * cs;
    let l1_off = blocks_off + rb * cs;

    let header = header_cluster(
        opts,
        cluster_bits,
        refcount_order,
        (l1_off, l1_entries),
        (reftable_off, rt),
    )?;
    file.set_len(0)?;
    let mut table = vec![0u8; (rt * cs) as usize];
    for i in 0..rb {
        put64(&mut table, (i * 8) as usize, blocks_off + i * cs);
    }
    let mut blocks = vec![0u8; (rb * cs) as usize];
    for c in 0..total {
        let blk = (c / per_block) as usize;
        let idx = (c % per_block) as usize;
        let at = blk * cs as usize;
        refcount_set(&mut blocks[at..at + cs as usize], idx, refcount_order, 1);
    }
    write_at(file, reftable_off, &table)?;
    write_at(file, blocks_off, &blocks)?;
    file.set_len(total * cs)?;
    // The header last: a file without it is not an image.
    write_at(file, 0, &header)?;
    Ok(())
}
