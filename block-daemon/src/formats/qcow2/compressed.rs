//! Compressed clusters: the L2 descriptor's host range and the raw deflate (zlib
//! without header, as QEMU writes with window bits -12) decompression, checked to
//! produce exactly one cluster as QEMU's qcow2_zlib_decompress requires.

use flate2::{Decompress, FlushDecompress, Status};

use crate::formats::FormatError;

/// Where a compressed cluster's bytes lie: (host offset, length in bytes).
pub fn host_range(entry: u64, cluster_bits: u32) -> (u64, u64) {
    let shift = 62 - (cluster_bits - 8);
    let offset = entry & ((1u64 << shift) - 1);
    let sectors = ((entry >> shift) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
    (offset, sectors * 512 - (offset & 511))
}

/// The host clusters a compressed cluster's sectors touch (its refcount holders):
/// first cluster index and count.
pub fn host_clusters(entry: u64, cluster_bits: u32) -> (u64, u64) {
    let (offset, len) = host_range(entry, cluster_bits);
    let start = offset & !511;
    let end = (offset + len).next_multiple_of(512);
    let first = start >> cluster_bits;
    let last = (end - 1) >> cluster_bits;
    (first, last - first + 1)
}

/// Inflates `input` into `out` (one cluster); fails unless it fills `out` exactly.
pub fn decompress(input: &[u8], out: &mut [u8]) -> Result<(), FormatError> {
    let mut d = Decompress::new(false);
    let status = d.decompress(input, out, FlushDecompress::Finish);
    let full = d.total_out() == out.len() as u64;
    match status {
        Ok(Status::StreamEnd) | Ok(Status::BufError) | Ok(Status::Ok) if full => Ok(()),
        _ => Err(FormatError::Invalid(
            "qcow2: compressed cluster does not decompress to one cluster".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{decompress, host_clusters, host_range};
    use flate2::{Compress, Compression, FlushCompress};

    #[test]
    fn descriptor_and_inflate() {
        // 64 KiB clusters: 8 bits of sector count above bit 54.
        let e = (2u64 << 54) | 0x1_0100;
        assert_eq!(host_range(e, 16), (0x1_0100, 3 * 512 - 0x100));
        assert_eq!(host_clusters(e, 16), (1, 1));
        let e = (1u64 << 54) | 0x1_fe00;
        assert_eq!(host_clusters(e, 16), (1, 2));

        let data: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
        let mut c = Compress::new(Compression::default(), false);
        let mut z = vec![0u8; 8192];
        c.compress(&data, &mut z, FlushCompress::Finish).unwrap();
        z.truncate(c.total_out() as usize);
        let mut out = vec![0u8; 4096];
        decompress(&z, &mut out).unwrap();
        assert_eq!(out, data);
        let mut big = vec![0u8; 8192];
        assert!(
            decompress(&z, &mut big).is_err(),
            "short output is an error"
        );
        assert!(decompress(&z[..z.len() / 2], &mut out).is_err());
    }
}
