//! Compressed clusters: the L2 descriptor's host range and the raw deflate (zlib
//! without header, as QEMU writes with window bits -12) decompression, checked to
//! produce exactly one cluster as QEMU's qcow2_zlib_decompress requires; and the
//! compression of a cluster QEMU can read back.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::formats::qcow2::layout::OFLAG_COMPRESSED;
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

/// The L2 descriptor of a compressed cluster whose `len` bytes start at host `offset`
/// (the sectors it touches past the first, above the offset: QEMU's layout).
pub fn descriptor(offset: u64, len: u64, cluster_bits: u32) -> u64 {
    let shift = 62 - (cluster_bits - 8);
    let more_sectors = ((offset + len - 1) >> 9) - (offset >> 9);
    OFLAG_COMPRESSED | (more_sectors << shift) | offset
}

/// QEMU inflates with a 4 KiB window (window bits -12): no match may reach further
/// back. The deflate backend here keeps a 32 KiB window, so the cluster is deflated in
/// pieces of this size with the dictionary reset after each (a full flush).
const WINDOW: usize = 4096;

/// Deflates one cluster as QEMU can read it back; None if the result is longer than
/// `limit` (QEMU then writes the cluster uncompressed).
pub fn compress(input: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut c = Compress::new(Compression::default(), false);
    // Room for incompressible input: deflate's stored blocks add a few bytes each.
    let mut out = Vec::with_capacity(input.len() + input.len() / WINDOW * 16 + 64);
    let pieces = input.chunks(WINDOW);
    let n = pieces.len();
    for (i, piece) in pieces.enumerate() {
        let flush = if i + 1 == n {
            FlushCompress::Finish
        } else {
            FlushCompress::Full
        };
        let before = c.total_in();
        loop {
            let taken = (c.total_in() - before) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(WINDOW);
            }
            let status = c.compress_vec(&piece[taken..], &mut out, flush).ok()?;
            let done = (c.total_in() - before) as usize == piece.len();
            if done && (status == Status::StreamEnd || flush != FlushCompress::Finish) {
                // A full flush ends on a byte boundary once the output had room.
                if flush == FlushCompress::Finish || out.capacity() > out.len() {
                    break;
                }
            }
        }
    }
    (out.len() <= limit).then_some(out)
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
    use super::{compress, decompress, descriptor, host_clusters, host_range, WINDOW};
    use crate::formats::qcow2::layout::OFLAG_COMPRESSED;
    use flate2::{Compress, Compression, FlushCompress};

    #[test]
    fn descriptors_name_the_bytes_written() {
        for (offset, len) in [(0x1_0000u64, 1u64), (0x1_0100, 0x400), (0x2_ffff, 2)] {
            let e = descriptor(offset, len, 16);
            assert_ne!(e & OFLAG_COMPRESSED, 0);
            let (at, n) = host_range(e & !OFLAG_COMPRESSED, 16);
            assert_eq!(at, offset);
            assert!(n >= len && n - len < 512, "{offset:#x} {len}: {n}");
        }
    }

    /// The longest distance a raw deflate stream's matches reach back (a minimal
    /// inflater's walk over the codes, enough for what the compressor emits).
    fn farthest_match(data: &[u8]) -> usize {
        struct Bits<'a> {
            data: &'a [u8],
            at: usize,
        }
        impl Bits<'_> {
            fn take(&mut self, n: u32) -> u32 {
                let mut v = 0;
                for i in 0..n {
                    let byte = self.data[self.at / 8];
                    v |= u32::from((byte >> (self.at % 8)) & 1) << i;
                    self.at += 1;
                }
                v
            }
        }
        // Canonical Huffman decoding from code lengths.
        fn table(lengths: &[u8]) -> Vec<(u32, u8, u16)> {
            let mut out = Vec::new();
            let mut code = 0u32;
            for len in 1..=15u8 {
                for (sym, &l) in lengths.iter().enumerate() {
                    if l == len {
                        out.push((code, len, sym as u16));
                        code += 1;
                    }
                }
                code <<= 1;
            }
            out
        }
        fn decode(b: &mut Bits, t: &[(u32, u8, u16)]) -> u16 {
            let (mut code, mut len) = (0u32, 0u8);
            loop {
                code = (code << 1) | b.take(1);
                len += 1;
                if let Some(&(_, _, sym)) = t.iter().find(|&&(c, l, _)| c == code && l == len) {
                    return sym;
                }
            }
        }
        const LEN_BASE: [u16; 29] = [
            3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99,
            115, 131, 163, 195, 227, 258,
        ];
        const LEN_EXTRA: [u8; 29] = [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
        ];
        const DIST_BASE: [u32; 30] = [
            1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
            1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
        ];
        let mut b = Bits { data, at: 0 };
        let mut far = 0;
        loop {
            let last = b.take(1);
            match b.take(2) {
                0 => {
                    b.at = b.at.next_multiple_of(8);
                    let len = b.take(16) as usize;
                    b.take(16);
                    b.at += len * 8;
                }
                kind => {
                    let (lit, dist) = if kind == 1 {
                        let mut l = vec![8u8; 144];
                        l.extend([9u8; 112]);
                        l.extend([7u8; 24]);
                        l.extend([8u8; 8]);
                        (table(&l), table(&[5u8; 30]))
                    } else {
                        let hlit = b.take(5) as usize + 257;
                        let hdist = b.take(5) as usize + 1;
                        let hclen = b.take(4) as usize + 4;
                        const ORDER: [usize; 19] = [
                            16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
                        ];
                        let mut cl = [0u8; 19];
                        for &i in ORDER.iter().take(hclen) {
                            cl[i] = b.take(3) as u8;
                        }
                        let ct = table(&cl);
                        let mut lengths = Vec::new();
                        while lengths.len() < hlit + hdist {
                            match decode(&mut b, &ct) {
                                s @ 0..=15 => lengths.push(s as u8),
                                16 => {
                                    let prev = *lengths.last().unwrap();
                                    let n = 3 + b.take(2);
                                    lengths.extend(std::iter::repeat_n(prev, n as usize));
                                }
                                17 => {
                                    let n = 3 + b.take(3);
                                    lengths.extend(std::iter::repeat_n(0, n as usize));
                                }
                                _ => {
                                    let n = 11 + b.take(7);
                                    lengths.extend(std::iter::repeat_n(0, n as usize));
                                }
                            }
                        }
                        (table(&lengths[..hlit]), table(&lengths[hlit..]))
                    };
                    loop {
                        let sym = decode(&mut b, &lit);
                        if sym < 256 {
                            continue;
                        }
                        if sym == 256 {
                            break;
                        }
                        let i = (sym - 257) as usize;
                        let _len = LEN_BASE[i] + b.take(u32::from(LEN_EXTRA[i])) as u16;
                        let d = decode(&mut b, &dist) as usize;
                        let extra = if d < 4 { 0 } else { (d as u32 - 2) / 2 };
                        far = far.max((DIST_BASE[d] + b.take(extra)) as usize);
                    }
                }
            }
            if last == 1 {
                return far;
            }
        }
    }

    #[test]
    fn clusters_compress_within_qemus_window_and_inflate_back() {
        // 6000 random bytes and 4000 of a 50-byte motif, repeated: a 32 KiB window
        // matches the random bytes 10000 bytes back, a 4 KiB one only the motif.
        let mut seed = 0x1234_5678u32;
        let mut unit: Vec<u8> = (0..6000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (seed >> 24) as u8
            })
            .collect();
        unit.extend((0..4000).map(|i| (i % 50) as u8));
        let cluster: Vec<u8> = unit.iter().cycle().take(65536).copied().collect();
        let mut plain = Compress::new(Compression::default(), false);
        let mut z = Vec::with_capacity(70000);
        plain
            .compress_vec(&cluster, &mut z, FlushCompress::Finish)
            .unwrap();
        assert!(
            farthest_match(&z) > WINDOW,
            "the backend alone reaches further"
        );
        let ours = compress(&cluster, 65535).expect("it shrinks");
        assert!(farthest_match(&ours) <= WINDOW);
        let mut back = vec![0u8; 65536];
        decompress(&ours, &mut back).unwrap();
        assert_eq!(back, cluster);
        // Zeroes shrink to almost nothing; noise does not shrink below the limit.
        let zeroes = compress(&[0u8; 65536], 65535).unwrap();
        assert!(zeroes.len() < 1024, "{}", zeroes.len());
        let noise: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut back = vec![0u8; 65536];
        if let Some(z) = compress(&noise, 65535) {
            decompress(&z, &mut back).unwrap();
            assert_eq!(back, noise);
        }
        assert!(compress(&noise, 100).is_none());
    }

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
