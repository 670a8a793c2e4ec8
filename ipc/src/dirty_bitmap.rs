//! A disk's dirty bitmap in shared memory: one bit per `granularity` bytes of the disk,
//! set when a write, write-zeroes or discard reaches them (QEMU's block-dirty-bitmap).
//! The gateway creates it (a memfd) and keeps it; each of the disk's daemons in turn maps
//! it and marks into it, so that no mark is lost with a daemon that is SIGKILLed, and the
//! gateway counts it for query-block without asking a daemon.
//!
//! The memory is shared with a sandboxed daemon, so nothing read from it is trusted: any
//! bits are a valid bitmap, and bits past the disk's last chunk are ignored. The memfd is
//! sealed against shrinking, so a daemon cannot make the gateway's mapping fault.

use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shm::{self, SharedMapping};

/// The finest and coarsest granularity (bytes per bit), as QEMU allows them.
pub const MIN_GRANULARITY: u64 = 512;
pub const MAX_GRANULARITY: u64 = 1 << 31;

/// Bitmaps a disk's daemon marks into at most: each costs a mapping and a little time
/// per write.
pub const MAX_BITMAPS_PER_DISK: usize = 64;

/// The largest bitmap mapped (a 1 TiB disk at 512 bytes per bit): a size that would need
/// more is refused rather than allocated.
pub const MAX_BITMAP_BYTES: u64 = 256 << 20;

/// The memory all dirty bitmaps together may take (the gateway's bound over every
/// disk; a daemon loading an image's stored bitmaps holds to it too).
pub const MAX_BITMAP_MEMORY: u64 = 1 << 30;

const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BitmapError {
    #[error("dirty bitmap: {0}")]
    Io(#[from] std::io::Error),
    #[error("granularity {0} is not a power of 2 between {MIN_GRANULARITY} and {MAX_GRANULARITY}")]
    Granularity(u64),
    #[error("a dirty bitmap of {size} bytes at {granularity} bytes per bit needs more than {MAX_BITMAP_BYTES} bytes")]
    TooLarge { size: u64, granularity: u64 },
    #[error("dirty bitmap memory is {len} bytes, {need} needed")]
    TooSmall { len: u64, need: u64 },
    #[error("dirty bitmaps of {ours} and {theirs} bytes per bit cannot be merged")]
    Incompatible { ours: u64, theirs: u64 },
}

/// Whether `granularity` is one QEMU takes.
pub fn valid_granularity(granularity: u64) -> bool {
    granularity.is_power_of_two() && (MIN_GRANULARITY..=MAX_GRANULARITY).contains(&granularity)
}

/// Bits (chunks of `granularity` bytes) covering `size` bytes.
fn chunks(size: u64, granularity: u64) -> u64 {
    size.div_ceil(granularity)
}

/// The memory a bitmap of `size` bytes at `granularity` needs: whole pages, at least one.
pub fn bytes_for(size: u64, granularity: u64) -> Result<u64, BitmapError> {
    if !valid_granularity(granularity) {
        return Err(BitmapError::Granularity(granularity));
    }
    let words = chunks(size, granularity).div_ceil(64);
    let bytes = (words * 8).div_ceil(PAGE).max(1) * PAGE;
    if bytes > MAX_BITMAP_BYTES {
        return Err(BitmapError::TooLarge { size, granularity });
    }
    Ok(bytes)
}

/// A mapping of a dirty bitmap covering `size` bytes of a disk.
pub struct SharedBitmap {
    map: SharedMapping,
    /// The memfd, kept by its creator (the gateway) to hand each daemon; a daemon keeps
    /// only its mapping.
    fd: Option<OwnedFd>,
    size: u64,
    granularity: u64,
}

// SAFETY: the memory is only accessed through atomics.
unsafe impl Send for SharedBitmap {}
// SAFETY: as for Send: every access from any thread (or process) is atomic.
unsafe impl Sync for SharedBitmap {}

impl std::fmt::Debug for SharedBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBitmap")
            .field("size", &self.size)
            .field("granularity", &self.granularity)
            .finish()
    }
}

impl SharedBitmap {
    /// A new, clean bitmap.
    pub fn create(size: u64, granularity: u64) -> Result<SharedBitmap, BitmapError> {
        let fd = shm::memfd(
            c"flotilla-dirty-bitmap",
            bytes_for(size, granularity)?,
            true,
        )?;
        let mut bitmap = SharedBitmap::map(fd.as_fd(), size, granularity)?;
        bitmap.fd = Some(fd);
        Ok(bitmap)
    }

    /// Maps the bitmap in `fd` (a memfd of at least `bytes_for(size, granularity)`); the
    /// fd itself is not kept.
    pub fn map(
        fd: BorrowedFd<'_>,
        size: u64,
        granularity: u64,
    ) -> Result<SharedBitmap, BitmapError> {
        let need = bytes_for(size, granularity)?;
        let len = shm::file_len(fd)?;
        if len < need {
            return Err(BitmapError::TooSmall { len, need });
        }
        Ok(SharedBitmap {
            map: SharedMapping::new(fd, need as usize)?,
            fd: None,
            size,
            granularity,
        })
    }

    /// The memfd, to hand a daemon (the creator's mapping only).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// The disk bytes it covers.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Disk bytes per bit.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Bits in use: chunks of `granularity` bytes covering the disk.
    pub fn chunks(&self) -> u64 {
        chunks(self.size, self.granularity)
    }

    fn words(&self) -> &[AtomicU64] {
        let n = self.chunks().div_ceil(64) as usize;
        // SAFETY: mapped for our lifetime, page-aligned (so aligned for AtomicU64), and
        // `n` words fit in the mapping (bytes_for); atomics are valid for any bits.
        unsafe { std::slice::from_raw_parts(self.map.ptr().cast::<AtomicU64>().as_ptr(), n) }
    }

    /// Marks the chunks `offset..offset + len` touches (what lies past the disk's end is
    /// left out).
    pub fn mark(&self, offset: u64, len: u64) {
        let chunks = self.chunks();
        if len == 0 || offset >= self.size {
            return;
        }
        let first = offset / self.granularity;
        let last = (offset.saturating_add(len - 1) / self.granularity).min(chunks - 1);
        let words = self.words();
        let (mut bit, end) = (first, last + 1);
        while bit < end {
            let word = (bit / 64) as usize;
            let lo = bit % 64;
            let hi = (end - word as u64 * 64).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            words[word].fetch_or(mask, Ordering::Relaxed);
            bit = word as u64 * 64 + hi;
        }
    }

    /// Whether the chunk holding byte `offset` is dirty.
    pub fn is_dirty(&self, offset: u64) -> bool {
        if offset >= self.size {
            return false;
        }
        let bit = offset / self.granularity;
        self.words()[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
    }

    /// Every chunk clean again.
    #[cfg(test)]
    fn clear(&self) {
        for w in self.words() {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// Word `i` of `words`, without the bits past chunk `chunks` (whatever a daemon
    /// left there means nothing).
    fn word_within(words: &[AtomicU64], i: usize, chunks: u64) -> u64 {
        let v = words[i].load(Ordering::Relaxed);
        let past = (i as u64 + 1) * 64;
        if past > chunks {
            v & ((1u64 << (64 - (past - chunks))) - 1)
        } else {
            v
        }
    }

    /// The words that may have a bit set: those in memory that was ever written. With
    /// the fd (the gateway's mapping), holes are skipped, since reading them would
    /// allocate them (256 MiB for a clean bitmap of a 1 TiB disk at 512 bytes per bit);
    /// without it, all of them.
    fn written_words(&self) -> Vec<Range<usize>> {
        let n = self.words().len();
        let Some(fd) = &self.fd else {
            return std::iter::once(0..n).collect();
        };
        match shm::data_ranges(fd.as_fd(), n as u64 * 8) {
            Ok(ranges) => ranges
                .into_iter()
                .map(|r| (r.start / 8) as usize..(r.end.div_ceil(8) as usize).min(n))
                .collect(),
            // Slower, never wrong.
            Err(_) => std::iter::once(0..n).collect(),
        }
    }

    /// Dirty bytes, a whole granularity per dirty chunk (as QEMU counts them).
    pub fn dirty_bytes(&self) -> u64 {
        let (chunks, words) = (self.chunks(), self.words());
        let bits: u64 = self
            .written_words()
            .into_iter()
            .flatten()
            .map(|i| u64::from(Self::word_within(words, i, chunks).count_ones()))
            .sum();
        bits * self.granularity
    }

    /// Every chunk dirty (a job that copies the whole disk).
    pub fn mark_all(&self) {
        self.mark(0, self.size);
    }

    /// Moves every dirty chunk of this bitmap into `into` (same size; `into`'s chunks
    /// may be coarser: a job's that copies whole clusters of its target): each word is
    /// taken and cleaned at once, so a chunk marked meanwhile is in one of the two, never
    /// in neither.
    pub fn take_into(&self, into: &SharedBitmap) -> Result<(), BitmapError> {
        if into.size != self.size || into.granularity < self.granularity {
            return Err(BitmapError::Incompatible {
                ours: into.granularity,
                theirs: self.granularity,
            });
        }
        let same = into.granularity == self.granularity;
        let (chunks, from, to) = (self.chunks(), self.words(), into.words());
        for i in self.written_words().into_iter().flatten() {
            let v = from[i].swap(0, Ordering::Relaxed);
            let past = (i as u64 + 1) * 64;
            let v = if past > chunks {
                v & ((1u64 << (64 - (past - chunks))) - 1)
            } else {
                v
            };
            if v == 0 {
                continue;
            }
            if same {
                to[i].fetch_or(v, Ordering::Relaxed);
            } else {
                into.mark_word(i, v, self.granularity);
            }
        }
        Ok(())
    }

    /// Marks what the set bits `v` of word `i` of a bitmap of granularity `granularity`
    /// cover.
    fn mark_word(&self, i: usize, mut v: u64, granularity: u64) {
        while v != 0 {
            let bit = u64::from(v.trailing_zeros());
            v &= v - 1;
            self.mark((i as u64 * 64 + bit) * granularity, granularity);
        }
    }

    /// The first dirty chunk at or after chunk `from`.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        let (chunks, words) = (self.chunks(), self.words());
        let mut i = (from / 64) as usize;
        let mut skip = from % 64;
        while i < words.len() {
            let v = Self::word_within(words, i, chunks) >> skip << skip;
            if v != 0 {
                return Some(i as u64 * 64 + u64::from(v.trailing_zeros()));
            }
            (i, skip) = (i + 1, 0);
        }
        None
    }

    /// The bits, least significant first (bit n: chunk n), as qcow2 stores them:
    /// `chunks().div_ceil(8)` bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (chunks, words) = (self.chunks(), self.words());
        let mut out = vec![0u8; chunks.div_ceil(8) as usize];
        for i in self.written_words().into_iter().flatten() {
            let bytes = Self::word_within(words, i, chunks).to_le_bytes();
            let at = i * 8;
            let n = bytes.len().min(out.len().saturating_sub(at));
            out[at..at + n].copy_from_slice(&bytes[..n]);
        }
        out
    }

    /// Marks the chunks whose bits `bytes` sets (laid out as `to_bytes`'); bits past
    /// the disk's end are left out.
    pub fn mark_bytes(&self, bytes: &[u8]) {
        let (chunks, words) = (self.chunks(), self.words());
        for (i, word) in words.iter().enumerate() {
            let at = i * 8;
            if at >= bytes.len() {
                break;
            }
            let mut le = [0u8; 8];
            let n = (bytes.len() - at).min(8);
            le[..n].copy_from_slice(&bytes[at..at + n]);
            let mut v = u64::from_le_bytes(le);
            let past = (i as u64 + 1) * 64;
            if past > chunks {
                v &= (1u64 << (64 - (past - chunks))) - 1;
            }
            if v != 0 {
                word.fetch_or(v, Ordering::Relaxed);
            }
        }
    }

    /// Takes over a memfd another process created (a daemon's loaded bitmap): mapped,
    /// and kept to hand on as this process's own.
    pub fn adopt(fd: OwnedFd, size: u64, granularity: u64) -> Result<SharedBitmap, BitmapError> {
        let mut bitmap = SharedBitmap::map(fd.as_fd(), size, granularity)?;
        bitmap.fd = Some(fd);
        Ok(bitmap)
    }

    /// Chunk `chunk` clean again.
    pub fn clean_chunk(&self, chunk: u64) {
        if chunk < self.chunks() {
            self.words()[(chunk / 64) as usize].fetch_and(!(1 << (chunk % 64)), Ordering::Relaxed);
        }
    }

    /// Marks every chunk `other` has dirty, as far as both cover the disk (a grown
    /// copy, or marks to give back to a bitmap cleared by a transaction or a job that
    /// failed; the job's chunks may be coarser).
    pub fn merge_from(&self, other: &SharedBitmap) -> Result<(), BitmapError> {
        if other.granularity != self.granularity {
            let (chunks, theirs) = (other.chunks(), other.words());
            for i in other.written_words().into_iter().flatten() {
                let v = Self::word_within(theirs, i, chunks);
                if v != 0 {
                    self.mark_word(i, v, other.granularity);
                }
            }
            return Ok(());
        }
        if other.granularity != self.granularity {
            return Err(BitmapError::Incompatible {
                ours: self.granularity,
                theirs: other.granularity,
            });
        }
        let chunks = self.chunks().min(other.chunks());
        let (mine, theirs) = (self.words(), other.words());
        let common = chunks.div_ceil(64) as usize;
        for i in other
            .written_words()
            .into_iter()
            .flatten()
            .take_while(|&i| i < common)
        {
            let v = Self::word_within(theirs, i, chunks);
            if v != 0 {
                mine[i].fetch_or(v, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second_mapping(b: &SharedBitmap) -> SharedBitmap {
        SharedBitmap::map(b.fd().unwrap(), b.size(), b.granularity()).unwrap()
    }

    #[test]
    fn bytes_out_and_in_are_qcow2s_layout() {
        // 100 chunks: 13 bytes, the last with 4 bits in use.
        let b = SharedBitmap::create(100 * 512, 512).unwrap();
        b.mark(0, 1);
        b.mark(9 * 512, 1);
        b.mark(99 * 512, 1);
        let bytes = b.to_bytes();
        assert_eq!(bytes.len(), 13);
        assert_eq!((bytes[0], bytes[1], bytes[12]), (0x01, 0x02, 0x08));
        let c = SharedBitmap::create(100 * 512, 512).unwrap();
        let mut with_tail = bytes.clone();
        with_tail[12] |= 0xf0; // past the end: ignored
        c.mark_bytes(&with_tail);
        assert_eq!(c.to_bytes(), bytes);
        assert_eq!(c.dirty_bytes(), 3 * 512);
    }

    #[test]
    fn marks_cover_every_chunk_a_range_touches_and_stop_at_the_end() {
        let b = SharedBitmap::create(1 << 20, 4096).unwrap();
        b.mark(4095, 2); // the last byte of chunk 0 and the first of chunk 1
        assert_eq!(b.dirty_bytes(), 8192);
        assert!(b.is_dirty(0) && b.is_dirty(4096) && !b.is_dirty(8192));
        b.mark(0, 0);
        assert_eq!(b.dirty_bytes(), 8192, "nothing written, nothing marked");
        b.mark((1 << 20) - 512, u64::MAX);
        assert_eq!(b.dirty_bytes(), 3 * 4096, "clipped at the disk's end");
        b.mark(1 << 20, 4096);
        b.mark(u64::MAX, 1);
        assert_eq!(b.dirty_bytes(), 3 * 4096, "past the end: nothing");
        b.mark(0, 1 << 20);
        assert_eq!(b.dirty_bytes(), 1 << 20);
        b.clear();
        assert_eq!(b.dirty_bytes(), 0);
    }

    #[test]
    fn ranges_across_word_boundaries() {
        // 200 chunks: three whole words and part of a fourth.
        let b = SharedBitmap::create(200 * 512, 512).unwrap();
        for (offset, len) in [(63 * 512, 2 * 512), (100 * 512, 90 * 512), (199 * 512, 512)] {
            b.clear();
            b.mark(offset, len);
            let expected: Vec<u64> = (offset / 512..(offset + len) / 512).collect();
            let dirty: Vec<u64> = (0..200).filter(|c| b.is_dirty(c * 512)).collect();
            assert_eq!(dirty, expected, "mark({offset}, {len})");
            assert_eq!(b.dirty_bytes(), len);
        }
    }

    #[test]
    fn a_disk_that_is_not_a_whole_number_of_chunks_counts_its_last_chunk_whole() {
        let b = SharedBitmap::create(65536 + 512, 65536).unwrap();
        b.mark(65536, 512);
        assert_eq!(b.dirty_bytes(), 65536);
    }

    #[test]
    fn two_mappings_share_the_marks_and_either_outlives_the_other() {
        let gateway = SharedBitmap::create(1 << 30, 65536).unwrap();
        let daemon = second_mapping(&gateway);
        daemon.mark(3 << 20, 4096);
        drop(daemon);
        assert_eq!(gateway.dirty_bytes(), 65536);
        let next_daemon = second_mapping(&gateway);
        assert!(next_daemon.fd().is_none(), "a daemon keeps no fd");
        gateway.clear();
        assert_eq!(next_daemon.dirty_bytes(), 0);
    }

    #[test]
    fn bits_past_the_last_chunk_are_not_counted() {
        let b = SharedBitmap::create(10 * 512, 512).unwrap();
        // A misbehaving daemon sets every bit of the word.
        b.words()[0].store(u64::MAX, Ordering::Relaxed);
        assert_eq!(b.dirty_bytes(), 10 * 512);
    }

    #[test]
    fn a_merge_marks_what_either_has_as_far_as_both_cover() {
        // 130 chunks merged into a copy grown to 300, and back into one of 100.
        let small = SharedBitmap::create(130 * 512, 512).unwrap();
        small.mark(0, 512);
        small.mark(64 * 512, 512);
        small.mark(129 * 512, 512);
        // A daemon's stray bit past the small one's end is not carried over.
        small.words()[2].fetch_or(1 << 5, Ordering::Relaxed);
        let grown = SharedBitmap::create(300 * 512, 512).unwrap();
        grown.mark(200 * 512, 512);
        grown.merge_from(&small).unwrap();
        let dirty: Vec<u64> = (0..300).filter(|c| grown.is_dirty(c * 512)).collect();
        assert_eq!(dirty, [0, 64, 129, 200]);
        let shrunk = SharedBitmap::create(100 * 512, 512).unwrap();
        shrunk.merge_from(&grown).unwrap();
        assert_eq!(shrunk.dirty_bytes(), 2 * 512);
        // Into coarser chunks: the chunks that hold a fine one's marks.
        let coarse = SharedBitmap::create(130 * 512, 4096).unwrap();
        coarse.merge_from(&small).unwrap();
        let dirty: Vec<u64> = (0..coarse.chunks())
            .filter(|c| coarse.is_dirty(c * 4096))
            .collect();
        assert_eq!(dirty, [0, 8, 16]);
    }

    /// Pages of `b`'s memfd that hold memory.
    fn resident_pages(b: &SharedBitmap) -> u64 {
        let len = crate::shm::file_len(b.fd().unwrap()).unwrap();
        crate::shm::data_ranges(b.fd().unwrap(), len)
            .unwrap()
            .iter()
            .map(|r| (r.end - r.start).div_ceil(PAGE))
            .sum()
    }

    #[test]
    fn counting_and_merging_read_only_the_pages_that_were_written() {
        // 256 MiB of bitmap memory: a 1 TiB disk at 512 bytes per bit.
        let big = SharedBitmap::create(1 << 40, 512).unwrap();
        assert_eq!(big.dirty_bytes(), 0);
        assert_eq!(
            resident_pages(&big),
            0,
            "counting a clean bitmap allocated it"
        );
        let daemon = second_mapping(&big);
        daemon.mark(0, 512);
        daemon.mark((1 << 40) - 512, 512);
        assert_eq!(big.dirty_bytes(), 1024);
        assert_eq!(resident_pages(&big), 2);
        let copy = SharedBitmap::create(1 << 40, 512).unwrap();
        copy.merge_from(&big).unwrap();
        assert_eq!(copy.dirty_bytes(), 1024);
        assert_eq!((resident_pages(&big), resident_pages(&copy)), (2, 2));
    }

    #[test]
    fn chunks_are_taken_whole_found_in_order_and_cleaned_one_by_one() {
        let dirty = SharedBitmap::create(130 * 512, 512).unwrap();
        let copying = SharedBitmap::create(130 * 512, 512).unwrap();
        assert_eq!(dirty.next_dirty(0), None);
        dirty.mark_all();
        assert_eq!(dirty.dirty_bytes(), 130 * 512);
        dirty.take_into(&copying).unwrap();
        assert_eq!((dirty.dirty_bytes(), copying.dirty_bytes()), (0, 130 * 512));
        let mut found = Vec::new();
        let mut at = 0;
        while let Some(c) = copying.next_dirty(at) {
            found.push(c);
            if c % 2 == 0 {
                copying.clean_chunk(c);
            }
            at = c + 1;
        }
        assert_eq!(found, (0..130).collect::<Vec<u64>>());
        assert_eq!(copying.next_dirty(0), Some(1));
        assert_eq!(copying.next_dirty(64), Some(65));
        assert_eq!(copying.next_dirty(129), Some(129));
        assert_eq!(copying.next_dirty(130), None);
        // A stray bit past the end is neither taken nor found.
        dirty.words()[2].fetch_or(1 << 10, Ordering::Relaxed);
        dirty.take_into(&copying).unwrap();
        assert_eq!(copying.dirty_bytes(), 65 * 512);
        assert_eq!(dirty.next_dirty(0), None);
        let other = SharedBitmap::create(131 * 512, 512).unwrap();
        assert!(dirty.take_into(&other).is_err(), "sizes differ");
    }

    #[test]
    fn a_fine_bitmap_goes_into_coarser_chunks_and_comes_back_covering_them() {
        // 4 KiB chunks into 64 KiB ones (a backup that writes its target's clusters
        // whole), over a disk that ends inside a coarse chunk.
        let size = 3 * 65536 + 4096;
        let fine = SharedBitmap::create(size, 4096).unwrap();
        let coarse = SharedBitmap::create(size, 65536).unwrap();
        fine.mark(4096, 1);
        fine.mark(2 * 65536 + 8192, 4096);
        fine.mark(3 * 65536, 1);
        fine.take_into(&coarse).unwrap();
        assert_eq!(fine.dirty_bytes(), 0, "taken");
        let found: Vec<u64> = (0..coarse.chunks())
            .filter(|&c| coarse.is_dirty(c * 65536))
            .collect();
        assert_eq!(found, [0, 2, 3]);
        // Given back (the job failed): every fine chunk a coarse one covers.
        fine.merge_from(&coarse).unwrap();
        assert_eq!(fine.dirty_bytes(), 2 * 65536 + 4096);
        assert!(fine.is_dirty(65535) && !fine.is_dirty(65536) && fine.is_dirty(size - 1));
        // The other way round is refused: a coarse mark cannot be split.
        assert!(coarse.take_into(&fine).is_err());
    }

    #[test]
    fn bad_granularities_sizes_and_short_memory_are_refused() {
        for g in [0, 256, 1000, 1 << 32] {
            assert!(
                matches!(SharedBitmap::create(1 << 20, g), Err(BitmapError::Granularity(x)) if x == g),
                "granularity {g}"
            );
        }
        assert!(matches!(
            SharedBitmap::create(u64::MAX, 512),
            Err(BitmapError::TooLarge { .. })
        ));
        let b = SharedBitmap::create(1 << 20, 512).unwrap();
        assert!(matches!(
            SharedBitmap::map(b.fd().unwrap(), 1 << 30, 512),
            Err(BitmapError::TooSmall { .. })
        ));
    }

    #[test]
    fn the_memory_cannot_be_shrunk_under_the_gateway() {
        let b = SharedBitmap::create(1 << 20, 512).unwrap();
        let file = std::fs::File::from(b.fd().unwrap().try_clone_to_owned().unwrap());
        let err = file.set_len(0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert!(file.set_len(1 << 20).is_ok(), "growing stays possible");
    }

    #[test]
    fn an_empty_disk_maps_a_page_and_marks_nothing() {
        let b = SharedBitmap::create(0, 65536).unwrap();
        b.mark(0, 4096);
        assert_eq!(b.dirty_bytes(), 0);
        assert!(!b.is_dirty(0));
    }
}
