//! The kdump-compressed (diskdump) core dump-guest-memory writes for kdump-zlib,
//! kdump-lzo and kdump-snappy, laid out as QEMU 7.2 writes it for an x86_64 guest, in
//! makedumpfile's flattened form (QEMU's too: a stream of (offset, size, data) records
//! that also goes down a pipe; `makedumpfile -R` turns it into the plain file). The
//! plain file: disk_dump_header (block 0), kdump_sub_header and the vCPUs' ELF notes
//! (block 1 on), the two page bitmaps (equal: dump level 1, every RAM page is in the
//! dump), one page descriptor per RAM page, then the pages' data: one shared zero page
//! first, then each other page compressed where that makes it smaller and as it is
//! where not. Memory held while writing is bounded: one chunk of guest memory, one
//! bitmap block, and a buffer each for descriptors and data, whatever the guest's size.

use std::io::Write;

use vm_memory::GuestMemoryMmap;

use super::elf::{self, put32, put64, CpuRegs};

pub const PAGE: u64 = 4096;
const BITS_PER_BLOCK: u64 = PAGE * 8;
const HEADER_SIZE: usize = 464;
const SUB_HEADER_SIZE: usize = 104;
const DESCRIPTOR_SIZE: u64 = 24;
/// The header's version QEMU writes (the one with 64-bit page counts).
const HEADER_VERSION: u32 = 6;
/// Every page is dumped (makedumpfile's level 1 excludes only zero pages, and those are
/// kept as the shared zero page).
const DUMP_LEVEL: u32 = 1;
/// The flattened form's header block.
const FLAT_SIGNATURE: &[u8] = b"makedumpfile";
const FLAT_HEADER_SIZE: usize = 4096;
/// Descriptors and page data are gathered up to this much before a record goes out.
const DESCRIPTOR_BUFFER: usize = 64 << 10;
const DATA_BUFFER: usize = 1 << 20;
/// Guest memory is read this much at a time.
const CHUNK: u64 = 1 << 20;

/// The kdump formats' compressions, with the header's and descriptors' flag for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Zlib,
    Lzo,
    Snappy,
}

impl Compression {
    fn flag(self) -> u32 {
        match self {
            Compression::Zlib => 1,
            Compression::Lzo => 2,
            Compression::Snappy => 4,
        }
    }
}

/// A kdump-compressed core planned: where each part goes, for these RAM blocks.
pub struct Kdump {
    compression: Compression,
    /// disk_dump_header, kdump_sub_header and the notes, each at its offset.
    head: Vec<(u64, Vec<u8>)>,
    /// RAM blocks (start, length), by address, page aligned.
    blocks: Vec<(u64, u64)>,
    /// One bitmap's length in bytes (whole blocks).
    bitmap_len: u64,
    bitmap_at: u64,
    pages_at: u64,
    pages: u64,
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// Plans the core of RAM `blocks` (by address) with `cpus`' notes.
pub fn plan(
    blocks: &[(u64, u64)],
    cpus: &[CpuRegs],
    compression: Compression,
) -> Result<Kdump, String> {
    if let Some(&(start, len)) = blocks
        .iter()
        .find(|(start, len)| start % PAGE != 0 || len % PAGE != 0)
    {
        return Err(format!(
            "dump: RAM block at {start:#x} of {len:#x} bytes is not in whole pages"
        ));
    }
    let Some(&(last_start, last_len)) = blocks.last() else {
        return Err("dump: no guest memory to dump".into());
    };
    // QEMU's max_mapnr: the page frame after the last block's end.
    let max_mapnr = (last_start + last_len) / PAGE;
    let bitmap_len = div_ceil(div_ceil(max_mapnr, 8), PAGE) * PAGE;
    let notes = elf::notes(cpus);
    let sub_hdr_blocks = div_ceil((SUB_HEADER_SIZE + notes.len()) as u64, PAGE);
    let bitmap_blocks = bitmap_len / PAGE * 2;

    let mut h = Vec::with_capacity(HEADER_SIZE);
    h.extend_from_slice(b"KDUMP   ");
    put32(&mut h, HEADER_VERSION);
    // utsname: six fields of 65 bytes, of which only `machine` (the fifth) is known.
    let mut utsname = [0u8; 6 * 65];
    utsname[4 * 65..4 * 65 + 6].copy_from_slice(b"x86_64");
    h.extend_from_slice(&utsname);
    // Padding to the timestamp, which QEMU leaves 0 (no time is known to the guest's
    // tools either way).
    h.resize(424, 0);
    put32(&mut h, compression.flag());
    put32(&mut h, PAGE as u32);
    put32(&mut h, sub_hdr_blocks as u32);
    put32(&mut h, bitmap_blocks as u32);
    put32(&mut h, max_mapnr.min(u64::from(u32::MAX)) as u32);
    // total_ram_blocks, device_blocks, written_blocks, current_cpu: unused, as QEMU's.
    h.resize(460, 0);
    put32(&mut h, cpus.len() as u32);

    let notes_at = PAGE + SUB_HEADER_SIZE as u64;
    let mut sub = Vec::with_capacity(SUB_HEADER_SIZE);
    put64(&mut sub, 0); // phys_base: unknown without the guest's vmcoreinfo
    put32(&mut sub, DUMP_LEVEL);
    // split, start_pfn, end_pfn, offset and size of vmcoreinfo (none): 0.
    sub.resize(48, 0);
    put64(&mut sub, notes_at);
    put64(&mut sub, notes.len() as u64);
    // eraseinfo, start_pfn_64, end_pfn_64: 0.
    sub.resize(96, 0);
    put64(&mut sub, max_mapnr);

    let bitmap_at = (1 + sub_hdr_blocks) * PAGE;
    Ok(Kdump {
        compression,
        head: vec![(0, h), (PAGE, sub), (notes_at, notes)],
        blocks: blocks.to_vec(),
        bitmap_len,
        bitmap_at,
        pages_at: bitmap_at + bitmap_blocks * PAGE,
        pages: blocks.iter().map(|b| b.1 / PAGE).sum(),
    })
}

/// The flattened form: records of (offset, size) in big endian, then the data.
struct Flat<W: Write> {
    out: W,
}

impl<W: Write> Flat<W> {
    fn start(mut out: W) -> std::io::Result<Flat<W>> {
        let mut header = vec![0u8; FLAT_HEADER_SIZE];
        header[..FLAT_SIGNATURE.len()].copy_from_slice(FLAT_SIGNATURE);
        // Type 1, version 1.
        header[16..24].copy_from_slice(&1u64.to_be_bytes());
        header[24..32].copy_from_slice(&1u64.to_be_bytes());
        out.write_all(&header)?;
        Ok(Flat { out })
    }

    fn record(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.out.write_all(&offset.to_be_bytes())?;
        self.out.write_all(&(data.len() as u64).to_be_bytes())?;
        self.out.write_all(data)
    }

    fn end(mut self) -> std::io::Result<()> {
        self.out.write_all(&[0xff; 16])?;
        self.out.flush()
    }
}

/// Records gathered in a buffer for consecutive offsets, sent when it fills.
struct Gathered {
    at: u64,
    buf: Vec<u8>,
    limit: usize,
}

impl Gathered {
    fn new(at: u64, limit: usize) -> Gathered {
        Gathered {
            at,
            buf: Vec::with_capacity(limit),
            limit,
        }
    }

    fn add<W: Write>(&mut self, flat: &mut Flat<W>, data: &[u8]) -> std::io::Result<()> {
        if self.buf.len() + data.len() > self.limit {
            self.flush(flat)?;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush<W: Write>(&mut self, flat: &mut Flat<W>) -> std::io::Result<()> {
        flat.record(self.at, &self.buf)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// One compressor for the whole dump, its state reused page after page.
enum Compressor {
    Zlib(flate2::Compress),
    Lzo(Box<lzokay::compress::Dict>),
    Snappy(Box<snap::raw::Encoder>),
}

impl Compressor {
    fn new(c: Compression) -> Compressor {
        match c {
            // QEMU's compress2 with Z_BEST_SPEED: a zlib stream at level 1.
            Compression::Zlib => {
                Compressor::Zlib(flate2::Compress::new(flate2::Compression::fast(), true))
            }
            Compression::Lzo => Compressor::Lzo(lzokay::compress::Dict::new()),
            Compression::Snappy => Compressor::Snappy(Box::new(snap::raw::Encoder::new())),
        }
    }

    /// How long the room `out` needs to be.
    fn room(c: Compression) -> usize {
        match c {
            Compression::Zlib => PAGE as usize,
            Compression::Lzo => lzokay::compress::compress_worst_size(PAGE as usize),
            Compression::Snappy => snap::raw::max_compress_len(PAGE as usize),
        }
    }

    /// `page` compressed into `out`: its length, or None where that is not smaller than
    /// the page (it is stored as it is then, as QEMU stores it).
    fn compress(&mut self, page: &[u8], out: &mut [u8]) -> Option<usize> {
        let len = match self {
            Compressor::Zlib(z) => {
                z.reset();
                // A stream that does not end within a page is no smaller.
                match z.compress(
                    page,
                    &mut out[..page.len() - 1],
                    flate2::FlushCompress::Finish,
                ) {
                    Ok(flate2::Status::StreamEnd) => z.total_out() as usize,
                    _ => return None,
                }
            }
            Compressor::Lzo(dict) => lzokay::compress::compress_no_alloc(page, out, dict).ok()?,
            Compressor::Snappy(s) => s.compress(page, out).ok()?,
        };
        (len < page.len()).then_some(len)
    }
}

impl Kdump {
    /// Bytes of guest memory the core holds.
    pub fn total(&self) -> u64 {
        self.pages * PAGE
    }

    /// Writes the core into `out`, reading guest memory from `mem`; `done` is told of
    /// each piece of guest memory written, in bytes.
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        out: impl Write,
        mut done: impl FnMut(u64),
    ) -> std::io::Result<()> {
        let mut flat = Flat::start(out)?;
        for (offset, data) in &self.head {
            flat.record(*offset, data)?;
        }
        self.write_bitmaps(&mut flat)?;

        let data_at = self.pages_at + self.pages * DESCRIPTOR_SIZE;
        let mut descriptors = Gathered::new(self.pages_at, DESCRIPTOR_BUFFER);
        let mut data = Gathered::new(data_at, DATA_BUFFER);
        // Every zero page points at one page of zeroes, the first of the data.
        let zero = [0u8; PAGE as usize];
        data.add(&mut flat, &zero)?;
        let zero_descriptor = descriptor(data_at, PAGE as u32, 0);
        let mut next_data = data_at + PAGE;
        let mut compressor = Compressor::new(self.compression);
        let mut packed = vec![0u8; Compressor::room(self.compression)];
        let mut chunk = vec![0u8; CHUNK as usize];
        super::chunks::each_chunk(mem, &self.blocks, &mut chunk, |buf| {
            for page in buf.chunks(PAGE as usize) {
                if page == zero {
                    descriptors.add(&mut flat, &zero_descriptor)?;
                    continue;
                }
                let (stored, flags) = match compressor.compress(page, &mut packed) {
                    Some(len) => (&packed[..len], self.compression.flag()),
                    None => (page, 0),
                };
                data.add(&mut flat, stored)?;
                let d = descriptor(next_data, stored.len() as u32, flags);
                descriptors.add(&mut flat, &d)?;
                next_data += stored.len() as u64;
            }
            done(buf.len() as u64);
            Ok(())
        })?;
        descriptors.flush(&mut flat)?;
        data.flush(&mut flat)?;
        flat.end()
    }

    /// Both bitmaps, a block at a time: a bit per page frame, set for RAM.
    fn write_bitmaps<W: Write>(&self, flat: &mut Flat<W>) -> std::io::Result<()> {
        let mut block = vec![0u8; PAGE as usize];
        for index in 0..self.bitmap_len / PAGE {
            block.fill(0);
            let (first, end) = (index * BITS_PER_BLOCK, (index + 1) * BITS_PER_BLOCK);
            for &(start, len) in &self.blocks {
                let from = (start / PAGE).max(first);
                let to = ((start + len) / PAGE).min(end);
                for pfn in from..to {
                    let bit = pfn - first;
                    block[(bit / 8) as usize] |= 1 << (bit % 8);
                }
            }
            flat.record(self.bitmap_at + index * PAGE, &block)?;
            flat.record(self.bitmap_at + self.bitmap_len + index * PAGE, &block)?;
        }
        Ok(())
    }
}

/// A page descriptor: where its data is, how long, how compressed; no page flags.
fn descriptor(offset: u64, size: u32, flags: u32) -> [u8; DESCRIPTOR_SIZE as usize] {
    let mut d = [0u8; DESCRIPTOR_SIZE as usize];
    d[..8].copy_from_slice(&offset.to_le_bytes());
    d[8..12].copy_from_slice(&size.to_le_bytes());
    d[12..16].copy_from_slice(&flags.to_le_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn headers_sit_where_readers_look() {
        let cpus = [CpuRegs::default(), CpuRegs::default()];
        let k = plan(
            &[(0, 0x10_0000), (0x20_0000, 0x10_0000)],
            &cpus,
            Compression::Snappy,
        )
        .unwrap();
        let h = &k.head[0].1;
        assert_eq!(h.len(), HEADER_SIZE);
        assert_eq!(&h[272..278], b"x86_64");
        assert_eq!(u32_at(h, 424), 4, "snappy's flag");
        assert_eq!(u32_at(h, 436), 2, "two bitmaps of a block each");
        assert_eq!(u32_at(h, 440), 0x300, "max_mapnr");
        assert_eq!(u32_at(h, 460), 2, "nr_cpus");
        assert_eq!(k.head[1].1.len(), SUB_HEADER_SIZE);
        assert_eq!(k.head[2].0, 4096 + 104);
        assert_eq!(k.pages, 0x200);
        assert_eq!(k.pages_at, 4 * PAGE);
        assert!(plan(&[(0, 0x1800)], &cpus, Compression::Zlib).is_err());
    }

    /// A core of two RAM blocks with a hole between (as with a DIMM): the records put
    /// in place, the bitmap has exactly the blocks' pages, and each descriptor's data is
    /// the page (the shared zero page for zero pages).
    #[test]
    fn blocks_with_a_hole_between_are_mapped_page_by_page() {
        use std::io::Read;
        use vm_memory::{Bytes, GuestAddress};
        let blocks = [(0, 0x4000), (0x10_0000, 0x2000)];
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x10_0000), 0x2000),
        ])
        .unwrap();
        let text: Vec<u8> = (0..PAGE).map(|i| (i % 7) as u8 + 1).collect();
        mem.write_slice(&text, GuestAddress(0x1000)).unwrap();
        mem.write_slice(&text[..100], GuestAddress(0x10_1000))
            .unwrap();
        let core = plan(&blocks, &[CpuRegs::default()], Compression::Zlib).unwrap();
        let mut flat = Vec::new();
        let mut written = 0;
        core.write(&mem, &mut flat, |n| written += n).unwrap();
        assert_eq!(written, 0x6000);
        // Put the records in place.
        let mut image = vec![0u8; 0];
        let mut at = FLAT_HEADER_SIZE;
        loop {
            let offset = i64::from_be_bytes(flat[at..at + 8].try_into().unwrap());
            let size = i64::from_be_bytes(flat[at + 8..at + 16].try_into().unwrap());
            at += 16;
            if (offset, size) == (-1, -1) {
                break;
            }
            let (offset, size) = (offset as usize, size as usize);
            image.resize(image.len().max(offset + size), 0);
            image[offset..offset + size].copy_from_slice(&flat[at..at + size]);
            at += size;
        }
        assert_eq!(at, flat.len());
        let bitmap = &image[core.bitmap_at as usize..][..PAGE as usize];
        let set: Vec<u64> = (0..PAGE * 8)
            .filter(|p| bitmap[(p / 8) as usize] & (1 << (p % 8)) != 0)
            .collect();
        assert_eq!(set, vec![0, 1, 2, 3, 0x100, 0x101]);
        let mut expected = vec![vec![0u8; PAGE as usize]; 6];
        expected[1] = text.clone();
        expected[5][..100].copy_from_slice(&text[..100]);
        for (i, page) in expected.iter().enumerate() {
            let d = &image[core.pages_at as usize + i * 24..][..24];
            let offset = u64::from_le_bytes(d[..8].try_into().unwrap()) as usize;
            let size = u32::from_le_bytes(d[8..12].try_into().unwrap()) as usize;
            let flags = u32::from_le_bytes(d[12..16].try_into().unwrap());
            let stored = &image[offset..offset + size];
            let data = match flags {
                0 => stored.to_vec(),
                _ => {
                    let mut out = Vec::new();
                    flate2::read::ZlibDecoder::new(stored)
                        .read_to_end(&mut out)
                        .unwrap();
                    out
                }
            };
            assert!(data == *page, "page {i}");
        }
    }

    #[test]
    fn each_compressor_keeps_only_what_is_smaller() {
        let text: Vec<u8> = (0..PAGE).map(|i| (i % 7) as u8 + 1).collect();
        // xorshift: incompressible bytes.
        let mut x = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..PAGE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for c in [Compression::Zlib, Compression::Lzo, Compression::Snappy] {
            let mut z = Compressor::new(c);
            let mut out = vec![0u8; Compressor::room(c)];
            let len = z.compress(&text, &mut out).unwrap();
            assert!(len < 400, "{c:?}: {len}");
            assert_eq!(z.compress(&noise, &mut out), None, "{c:?}");
            // The state is reused: the same page again gives the same bytes.
            let again = z.compress(&text, &mut vec![0u8; out.len()]).unwrap();
            assert_eq!(again, len, "{c:?}");
        }
    }
}
