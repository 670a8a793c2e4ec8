//! Persistent dirty bitmaps in qcow2's bitmaps extension, laid out as QEMU stores them
//! (qemu-img info lists them, QEMU loads them): the extension names a directory of
//! entries, each naming a bitmap table whose entries name the clusters holding the
//! bitmap's bits (an entry of 0: a cluster of zero bits, not stored).
//!
//! The daemon that serves an image loads its bitmaps at its first open and marks each
//! in use in the image at once: if the daemon or the gateway dies, the image says the
//! bits are stale, as QEMU's in_use flag does. A clean close stores them back: new
//! clusters for bits, tables and directory, the extension naming them, the autoclear
//! bit set, and only then the old clusters freed (a crash midway leaks, never loses).
//! An image whose extension lacks the autoclear bit was written by a program that did
//! not keep the bitmaps: they are not trusted (and not freed: they leak, as QEMU's).

use crate::formats::qcow2::extensions::BitmapsExtension;
use crate::formats::qcow2::header_cluster;
use crate::formats::qcow2::layout::{
    be16, be32, be64, put16, put32, put64, AUTOCLEAR_BITMAPS, EXT_BITMAPS, OFF_AUTOCLEAR,
};
use crate::formats::qcow2::meta::Meta;
use crate::formats::FormatError;

/// The most bitmaps an image may hold for us: a disk marks into at most this many.
pub const MAX_STORED: u32 = ipc::dirty_bitmap::MAX_BITMAPS_PER_DISK as u32;
/// QEMU's limits: the name's length, the granularities it takes.
const MAX_NAME: usize = 1023;
const GRANULARITY_BITS: std::ops::RangeInclusive<u8> = 9..=31;
const ENTRY_HEADER: usize = 24;
const FLAG_IN_USE: u32 = 1 << 0;
const FLAG_AUTO: u32 = 1 << 1;
const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
const TYPE_DIRTY_TRACKING: u8 = 1;
/// Bits 9-55 of a bitmap table entry: the cluster's offset.
const TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 0 of an entry without an offset: the cluster reads as all ones.
const TABLE_ALL_ONES: u64 = 1;

/// A bitmap as the image holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBitmap {
    pub name: String,
    /// Disk bytes per bit.
    pub granularity: u64,
    /// The auto flag: it records every write.
    pub recording: bool,
    /// The in_use flag: its bits may be stale (it was not stored back after its load).
    pub in_use: bool,
    /// Its bits, least significant first: bit n covers disk bytes from n * granularity.
    pub bits: Vec<u8>,
}

/// The bytes a bitmap of `size` disk bytes at `granularity` takes.
pub fn bits_len(size: u64, granularity: u64) -> u64 {
    size.div_ceil(granularity).div_ceil(8)
}

/// One directory entry as read.
struct Entry {
    table_offset: u64,
    table_size: u32,
    flags: u32,
    granularity: u64,
    name: String,
}

fn invalid(what: impl Into<String>) -> FormatError {
    FormatError::Invalid(format!("qcow2 bitmaps: {}", what.into()))
}

impl Meta {
    /// The bitmaps extension, if it is to be trusted (its autoclear bit is set).
    fn trusted_bitmaps(&self) -> Option<BitmapsExtension> {
        self.header
            .bitmaps
            .filter(|_| self.header.autoclear_features & AUTOCLEAR_BITMAPS != 0)
    }

    /// The directory's entries (bounded: at most `MAX_STORED`, each checked).
    fn bitmap_directory(&self, ext: &BitmapsExtension) -> Result<Vec<Entry>, FormatError> {
        let cs = self.cluster_size();
        if ext.nb_bitmaps > MAX_STORED {
            return Err(invalid(format!(
                "the image stores {} bitmaps; at most {MAX_STORED} are supported",
                ext.nb_bitmaps
            )));
        }
        let most = u64::from(ext.nb_bitmaps) * (ENTRY_HEADER + MAX_NAME + 7) as u64;
        if ext.directory_size > most || !ext.directory_offset.is_multiple_of(cs) {
            return Err(invalid("the bitmap directory is malformed"));
        }
        let mut dir = vec![0u8; ext.directory_size as usize];
        self.read(ext.directory_offset, &mut dir, "Bitmap directory")?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        for _ in 0..ext.nb_bitmaps {
            let head = dir
                .get(at..at + ENTRY_HEADER)
                .ok_or_else(|| invalid("the bitmap directory is truncated"))?;
            let flags = be32(head, 12);
            let kind = head[16];
            let granularity_bits = head[17];
            let name_size = usize::from(be16(head, 18));
            let extra = be32(head, 20) as usize;
            let end = at + ENTRY_HEADER + extra + name_size;
            let name = dir
                .get(at + ENTRY_HEADER + extra..end)
                .ok_or_else(|| invalid("the bitmap directory is truncated"))?;
            let name = String::from_utf8_lossy(name).into_owned();
            if name_size == 0 || name_size > MAX_NAME {
                return Err(invalid("a bitmap's name is empty or too long"));
            }
            if flags & !(FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE) != 0
                || kind != TYPE_DIRTY_TRACKING
                || !GRANULARITY_BITS.contains(&granularity_bits)
            {
                return Err(invalid(format!(
                    "bitmap '{name}' has flags, a type or a granularity this daemon does not know"
                )));
            }
            if extra != 0 {
                return Err(invalid(format!("bitmap '{name}' has extra data")));
            }
            let entry = Entry {
                table_offset: be64(head, 0),
                table_size: be32(head, 8),
                flags,
                granularity: 1 << granularity_bits,
                name,
            };
            let want = bits_len(self.size, entry.granularity).div_ceil(cs);
            if u64::from(entry.table_size) != want
                || !entry.table_offset.is_multiple_of(cs)
                || bits_len(self.size, entry.granularity) > ipc::dirty_bitmap::MAX_BITMAP_BYTES
            {
                return Err(invalid(format!(
                    "bitmap '{}' does not fit the disk",
                    entry.name
                )));
            }
            entries.push(entry);
            at = end.next_multiple_of(8);
        }
        Ok(entries)
    }

    /// The entries of a bitmap's table.
    fn bitmap_table(&self, e: &Entry) -> Result<Vec<u64>, FormatError> {
        let mut raw = vec![0u8; e.table_size as usize * 8];
        self.read(e.table_offset, &mut raw, "Bitmap table")?;
        Ok((0..e.table_size as usize)
            .map(|i| be64(&raw, i * 8))
            .collect())
    }

    /// Every cluster the trusted bitmaps take: directory, tables, bits (first, count).
    fn bitmap_clusters(&self) -> Result<Vec<(u64, u64)>, FormatError> {
        let Some(ext) = self.trusted_bitmaps() else {
            return Ok(Vec::new());
        };
        let cs = self.cluster_size();
        let mut out = vec![(
            self.cluster_of(ext.directory_offset),
            ext.directory_size.div_ceil(cs),
        )];
        for e in self.bitmap_directory(&ext)? {
            let table_bytes = u64::from(e.table_size) * 8;
            out.push((self.cluster_of(e.table_offset), table_bytes.div_ceil(cs)));
            for entry in self.bitmap_table(&e)? {
                let offset = entry & TABLE_OFFSET_MASK;
                if offset != 0 {
                    out.push((self.cluster_of(offset), 1));
                }
            }
        }
        Ok(out)
    }

    /// Adds the clusters the bitmaps take to the metadata no data may go to.
    pub fn note_bitmap_clusters(&mut self) -> Result<(), FormatError> {
        for (first, n) in self.bitmap_clusters()? {
            self.metadata.extend(first..first + n);
        }
        Ok(())
    }

    /// The bitmaps the image stores (none unless trusted), then, for a writable image,
    /// each marked in use in the file: until they are stored back, the image says
    /// their bits may be stale.
    pub fn load_bitmaps(&mut self) -> Result<Vec<StoredBitmap>, FormatError> {
        let Some(ext) = self.trusted_bitmaps() else {
            return Ok(Vec::new());
        };
        let cs = self.cluster_size();
        let entries = self.bitmap_directory(&ext)?;
        let mut out = Vec::with_capacity(entries.len());
        for e in &entries {
            let len = bits_len(self.size, e.granularity) as usize;
            let mut bits = vec![0u8; len];
            // A bitmap in use is stale: its bits are not read (QEMU's count is 0 too).
            let table = match e.flags & FLAG_IN_USE {
                0 => self.bitmap_table(e)?,
                _ => Vec::new(),
            };
            for (i, entry) in table.into_iter().enumerate() {
                let piece = &mut bits[i * cs as usize..((i + 1) * cs as usize).min(len)];
                let offset = entry & TABLE_OFFSET_MASK;
                if offset != 0 {
                    if !offset.is_multiple_of(cs) {
                        return Err(invalid(format!("bitmap '{}' has a bad table", e.name)));
                    }
                    self.read(offset, piece, "Bitmap data")?;
                } else if entry & TABLE_ALL_ONES != 0 {
                    piece.fill(0xff);
                }
            }
            // Bits past the disk's end mean nothing.
            let chunks = self.size.div_ceil(e.granularity);
            if chunks % 8 != 0 {
                if let Some(last) = bits.last_mut() {
                    *last &= (1u8 << (chunks % 8)) - 1;
                }
            }
            out.push(StoredBitmap {
                name: e.name.clone(),
                granularity: e.granularity,
                recording: e.flags & FLAG_AUTO != 0,
                in_use: e.flags & FLAG_IN_USE != 0,
                bits,
            });
        }
        if self.writable && out.iter().any(|b| !b.in_use) {
            let mut dir = vec![0u8; ext.directory_size as usize];
            self.read(ext.directory_offset, &mut dir, "Bitmap directory")?;
            let mut at = 0usize;
            for _ in &entries {
                let flags = be32(&dir, at + 12) | FLAG_IN_USE;
                put32(&mut dir, at + 12, flags);
                let end = at + ENTRY_HEADER + usize::from(be16(&dir, at + 18));
                at = end.next_multiple_of(8);
            }
            self.write(ext.directory_offset, &dir)?;
            self.sync()?;
        }
        Ok(out)
    }

    /// Replaces what the image stores with `bitmaps` (none: the extension goes). The
    /// new clusters are written and durable before the header names them, and the old
    /// ones are freed after.
    pub fn store_bitmaps(&mut self, bitmaps: &[StoredBitmap]) -> Result<(), FormatError> {
        self.check_writable()?;
        if self.version < 3 && !bitmaps.is_empty() {
            return Err(FormatError::Unsupported(
                "Cannot store dirty bitmaps in qcow2 v2 files".into(),
            ));
        }
        if bitmaps.len() > MAX_STORED as usize {
            return Err(invalid(format!("at most {MAX_STORED} bitmaps are stored")));
        }
        let old = self.bitmap_clusters()?;
        let cs = self.cluster_size() as usize;
        let mut dir = Vec::new();
        for b in bitmaps {
            if b.name.is_empty() || b.name.len() > MAX_NAME {
                return Err(invalid("a bitmap's name is empty or too long"));
            }
            let granularity_bits = b.granularity.trailing_zeros() as u8;
            if !b.granularity.is_power_of_two() || !GRANULARITY_BITS.contains(&granularity_bits) {
                return Err(invalid(format!("bitmap '{}': bad granularity", b.name)));
            }
            if b.bits.len() as u64 != bits_len(self.size, b.granularity) {
                return Err(invalid(format!(
                    "bitmap '{}' does not fit the disk",
                    b.name
                )));
            }
            let pieces: Vec<&[u8]> = b.bits.chunks(cs).collect();
            let stored = pieces.iter().filter(|p| p.iter().any(|&x| x != 0)).count() as u64;
            let mut table = vec![0u8; pieces.len() * 8];
            if stored > 0 {
                let first = self.alloc_clusters(stored)?;
                let mut at = first;
                let mut cluster = vec![0u8; cs];
                for (i, p) in pieces.iter().enumerate() {
                    if p.iter().any(|&x| x != 0) {
                        cluster[..p.len()].copy_from_slice(p);
                        cluster[p.len()..].fill(0);
                        self.write(at, &cluster)?;
                        put64(&mut table, i * 8, at);
                        at += cs as u64;
                    }
                }
                let first_cluster = self.cluster_of(first);
                self.metadata.extend(first_cluster..first_cluster + stored);
            }
            let table_offset = self.write_new(&table)?;
            let mut entry = vec![0u8; (ENTRY_HEADER + b.name.len()).next_multiple_of(8)];
            put64(&mut entry, 0, table_offset);
            put32(&mut entry, 8, pieces.len() as u32);
            let flags = match (b.recording, b.in_use) {
                (true, true) => FLAG_AUTO | FLAG_IN_USE,
                (true, false) => FLAG_AUTO,
                (false, true) => FLAG_IN_USE,
                (false, false) => 0,
            };
            put32(&mut entry, 12, flags);
            entry[16] = TYPE_DIRTY_TRACKING;
            entry[17] = granularity_bits;
            put16(&mut entry, 18, b.name.len() as u16);
            entry[ENTRY_HEADER..ENTRY_HEADER + b.name.len()].copy_from_slice(b.name.as_bytes());
            dir.extend_from_slice(&entry);
        }
        let ext = if bitmaps.is_empty() {
            None
        } else {
            let offset = self.write_new(&dir)?;
            let mut ext = [0u8; 24];
            put32(&mut ext, 0, bitmaps.len() as u32);
            put64(&mut ext, 8, dir.len() as u64);
            put64(&mut ext, 16, offset);
            Some(ext)
        };
        self.sync()?;
        // The autoclear bit is never set while the extension is missing (QEMU takes
        // that for an error): it goes first, and comes back last.
        let autoclear = self.header.autoclear_features & !AUTOCLEAR_BITMAPS;
        self.write(OFF_AUTOCLEAR, &autoclear.to_be_bytes())?;
        self.sync()?;
        self.header.autoclear_features = autoclear;
        header_cluster::set_extension(&self.file, EXT_BITMAPS, ext.as_ref().map(|e| &e[..]))?;
        if ext.is_some() {
            let autoclear = autoclear | AUTOCLEAR_BITMAPS;
            self.write(OFF_AUTOCLEAR, &autoclear.to_be_bytes())?;
            self.sync()?;
            self.header.autoclear_features = autoclear;
        }
        self.header.bitmaps = ext.map(|e| BitmapsExtension {
            nb_bitmaps: be32(&e, 0),
            directory_size: be64(&e, 8),
            directory_offset: be64(&e, 16),
        });
        for (first, n) in old {
            for c in first..first + n {
                self.metadata.remove(&c);
            }
            self.free_clusters(first, n)?;
        }
        self.sync()
    }

    /// `bytes` written into new clusters (metadata from now on); their offset.
    fn write_new(&mut self, bytes: &[u8]) -> Result<u64, FormatError> {
        let cs = self.cluster_size() as usize;
        let n = bytes.len().div_ceil(cs).max(1);
        let offset = self.alloc_clusters(n as u64)?;
        let mut buf = bytes.to_vec();
        buf.resize(n * cs, 0);
        self.write(offset, &buf)?;
        let first = self.cluster_of(offset);
        self.metadata.extend(first..first + n as u64);
        Ok(offset)
    }
}
