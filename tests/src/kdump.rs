//! A reader of kdump-compressed (diskdump) cores as dump-guest-memory writes them, in
//! makedumpfile's flattened form, written for the tests from the format's description
//! (makedumpfile's diskdump_mod.h, QEMU's dump.h), apart from vmm-core's writer: the
//! records put back in place, the headers' fields by name, the bitmaps, each present
//! page's descriptor and its data decompressed (zlib, LZO1X or raw snappy by the
//! descriptor's flag, as crash and makedumpfile read them).

use std::io::Read;

pub const PAGE: u64 = 4096;
const FLAT_HEADER: usize = 4096;
const DESCRIPTOR: usize = 24;
pub const ZLIB: u32 = 1;
pub const LZO: u32 = 2;
pub const SNAPPY: u32 = 4;

/// A core read whole: the plain (rearranged) file.
#[derive(PartialEq, Eq)]
pub struct KdumpCore {
    image: Vec<u8>,
}

fn le(b: &[u8], at: usize, len: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..len].copy_from_slice(&b[at..at + len]);
    u64::from_le_bytes(v)
}

impl KdumpCore {
    /// Puts the flattened records of `flat` in place; an error for a file that is not
    /// in the flattened form or ends early.
    pub fn from_flattened(flat: &[u8]) -> Result<KdumpCore, String> {
        if flat.len() < FLAT_HEADER || !flat.starts_with(b"makedumpfile\0") {
            return Err("no makedumpfile flattened header".into());
        }
        let be = |at: usize| -> Result<i64, String> {
            let b = flat.get(at..at + 8).ok_or("the records end early")?;
            Ok(i64::from_be_bytes(b.try_into().map_err(|_| "short")?))
        };
        if (be(16)?, be(24)?) != (1, 1) {
            return Err("flattened header of another type or version".into());
        }
        let mut image = Vec::new();
        let mut at = FLAT_HEADER;
        loop {
            let (offset, size) = (be(at)?, be(at + 8)?);
            at += 16;
            if (offset, size) == (-1, -1) {
                break;
            }
            let (offset, size) = (offset as usize, size as usize);
            let data = flat.get(at..at + size).ok_or("a record ends early")?;
            if image.len() < offset + size {
                image.resize(offset + size, 0);
            }
            image[offset..offset + size].copy_from_slice(data);
            at += size;
        }
        if at != flat.len() {
            return Err(format!("{} bytes after the end record", flat.len() - at));
        }
        KdumpCore::from_plain(image)
    }

    /// A core already in the plain form (as `makedumpfile -R` writes it).
    pub fn from_plain(image: Vec<u8>) -> Result<KdumpCore, String> {
        if !image.starts_with(b"KDUMP   ") {
            return Err("no KDUMP signature".into());
        }
        if image.len() < 2 * PAGE as usize {
            return Err("shorter than its headers".into());
        }
        Ok(KdumpCore { image })
    }

    /// disk_dump_header's fields, by name, in file order (utsname's machine as text).
    pub fn header(&self) -> Vec<(&'static str, String)> {
        let h = &self.image;
        let n = |at, len| le(h, at, len).to_string();
        let text = |at: usize, len: usize| {
            String::from_utf8_lossy(&h[at..at + len])
                .trim_end_matches('\0')
                .to_string()
        };
        let uts = [
            "sysname",
            "nodename",
            "release",
            "version",
            "machine",
            "domainname",
        ];
        let mut fields = vec![("signature", text(0, 8)), ("header_version", n(8, 4))];
        for (i, name) in uts.into_iter().enumerate() {
            fields.push((name, text(12 + 65 * i, 65)));
        }
        for (name, at, len) in [
            ("timestamp.tv_sec", 408, 8),
            ("timestamp.tv_usec", 416, 8),
            ("status", 424, 4),
            ("block_size", 428, 4),
            ("sub_hdr_size", 432, 4),
            ("bitmap_blocks", 436, 4),
            ("max_mapnr", 440, 4),
            ("total_ram_blocks", 444, 4),
            ("device_blocks", 448, 4),
            ("written_blocks", 452, 4),
            ("current_cpu", 456, 4),
            ("nr_cpus", 460, 4),
        ] {
            fields.push((name, n(at, len)));
        }
        fields
    }

    /// kdump_sub_header's fields, by name.
    pub fn sub_header(&self) -> Vec<(&'static str, u64)> {
        let at = PAGE as usize;
        [
            ("phys_base", 0, 8),
            ("dump_level", 8, 4),
            ("split", 12, 4),
            ("start_pfn", 16, 8),
            ("end_pfn", 24, 8),
            ("offset_vmcoreinfo", 32, 8),
            ("size_vmcoreinfo", 40, 8),
            ("offset_note", 48, 8),
            ("note_size", 56, 8),
            ("offset_eraseinfo", 64, 8),
            ("size_eraseinfo", 72, 8),
            ("start_pfn_64", 80, 8),
            ("end_pfn_64", 88, 8),
            ("max_mapnr_64", 96, 8),
        ]
        .into_iter()
        .map(|(name, off, len)| (name, le(&self.image, at + off, len)))
        .collect()
    }

    fn field(&self, name: &str) -> u64 {
        let h = self.header();
        let v = h.iter().find(|f| f.0 == name).expect("a header field");
        v.1.parse().expect("a number")
    }

    fn sub(&self, name: &str) -> u64 {
        let s = self.sub_header();
        s.iter()
            .find(|f| f.0 == name)
            .expect("a sub-header field")
            .1
    }

    pub fn status(&self) -> u32 {
        self.field("status") as u32
    }

    /// The ELF notes: (name, type, description size) of each.
    pub fn notes(&self) -> Vec<(String, u32, usize)> {
        let (at, size) = (
            self.sub("offset_note") as usize,
            self.sub("note_size") as usize,
        );
        let notes = &self.image[at..at + size];
        let mut out = Vec::new();
        let mut i = 0;
        while i + 12 <= notes.len() {
            let (namesz, descsz) = (le(notes, i, 4) as usize, le(notes, i + 4, 4) as usize);
            let kind = le(notes, i + 8, 4) as u32;
            let name = String::from_utf8_lossy(&notes[i + 12..i + 12 + namesz]);
            out.push((name.trim_end_matches('\0').to_string(), kind, descsz));
            i += 12 + namesz.div_ceil(4) * 4 + descsz.div_ceil(4) * 4;
        }
        out
    }

    fn bitmap(&self, which: u64) -> &[u8] {
        let block = self.field("block_size");
        let blocks = self.field("bitmap_blocks") / 2;
        let start = (1 + self.field("sub_hdr_size") + which * blocks) * block;
        &self.image[start as usize..(start + blocks * block) as usize]
    }

    /// The page frames the dump holds (bitmap 2's set bits), after checking that the
    /// two bitmaps agree (dump level 1).
    pub fn pages(&self) -> Result<Vec<u64>, String> {
        let (first, second) = (self.bitmap(0), self.bitmap(1));
        if first != second {
            return Err("the two bitmaps differ".into());
        }
        Ok((0..second.len() as u64 * 8)
            .filter(|pfn| second[(pfn / 8) as usize] & (1 << (pfn % 8)) != 0)
            .collect())
    }

    /// Each present page's descriptor: (offset, size, flags), in page order.
    pub fn descriptors(&self) -> Result<Vec<(u64, u32, u32)>, String> {
        let count = self.pages()?.len();
        let start = (1 + self.field("sub_hdr_size") + self.field("bitmap_blocks"))
            * self.field("block_size");
        (0..count)
            .map(|i| {
                let at = start as usize + i * DESCRIPTOR;
                if at + DESCRIPTOR > self.image.len() {
                    return Err(format!("descriptor {i} past the end"));
                }
                let d = &self.image[at..at + DESCRIPTOR];
                Ok((le(d, 0, 8), le(d, 8, 4) as u32, le(d, 12, 4) as u32))
            })
            .collect()
    }

    /// A page's data as stored (compressed or not), by its descriptor.
    pub fn stored(&self, (offset, size, _): (u64, u32, u32)) -> Result<&[u8], String> {
        self.image
            .get(offset as usize..offset as usize + size as usize)
            .ok_or_else(|| "page data past the end".into())
    }

    /// Page data as the descriptor says: decompressed, or as stored.
    pub fn page_data(&self, d: (u64, u32, u32)) -> Result<Vec<u8>, String> {
        let stored = self.stored(d)?;
        let page = match d.2 {
            0 => stored.to_vec(),
            ZLIB => {
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(stored)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("zlib: {e}"))?;
                out
            }
            LZO => {
                let mut out = vec![0u8; PAGE as usize];
                let n = lzokay::decompress::decompress(stored, &mut out)
                    .map_err(|e| format!("lzo: {e}"))?;
                out.truncate(n);
                out
            }
            SNAPPY => snap::raw::Decoder::new()
                .decompress_vec(stored)
                .map_err(|e| format!("snappy: {e}"))?,
            other => return Err(format!("unknown page flags {other:#x}")),
        };
        if page.len() != PAGE as usize {
            return Err(format!("a page of {} bytes", page.len()));
        }
        Ok(page)
    }
}
