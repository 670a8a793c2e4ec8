//! Guest RAM's dirty-page log in shared memory: one bit per 4 KiB page, indexed by guest
//! physical address, as the vhost-user dirty log is laid out, so that the device daemons
//! (vhost-user SET_LOG_BASE), vmm-core (which ORs in KVM's dirty log at each sync) and
//! the migration agent (which takes the bits it sends) all use the same memfd. Every
//! access is atomic: the writers and the reader run at the same time.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shm::{self, SharedMapping};

pub const PAGE_SIZE: u64 = 4096;
const BITS: u64 = 64;

pub struct PageLog {
    fd: OwnedFd,
    map: SharedMapping,
    words: usize,
}

// SAFETY: the mapping is only ever accessed through atomics (`words`), by any thread or
// process; the fd and the mapping's address and length never change.
unsafe impl Send for PageLog {}
// SAFETY: as for Send.
unsafe impl Sync for PageLog {}

impl PageLog {
    /// Bytes of log covering guest physical addresses below `end`, rounded to whole
    /// 64-bit words.
    pub fn len_for(end: u64) -> u64 {
        end.div_ceil(PAGE_SIZE).div_ceil(BITS) * 8
    }

    /// A new, clear log covering addresses below `end`.
    pub fn create(end: u64) -> std::io::Result<PageLog> {
        let len = Self::len_for(end).max(8);
        let fd = shm::memfd(c"flotilla-dirty-log", len, true)?;
        Self::map(fd, len)
    }

    /// The log another process created: `len` bytes of `fd`, checked against the file.
    pub fn from_fd(fd: OwnedFd, len: u64) -> std::io::Result<PageLog> {
        if len == 0 || !len.is_multiple_of(8) || shm::file_len(fd.as_fd())? < len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a dirty log of {len} bytes does not fit its memfd"),
            ));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: u64) -> std::io::Result<PageLog> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        let map = SharedMapping::new(fd.as_fd(), len)?;
        Ok(PageLog {
            fd,
            map,
            words: len / 8,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.words as u64 * 8
    }

    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned, `words * 8` bytes long, lives as long as
        // self, and is only ever accessed atomically (here and by the other processes).
        unsafe { std::slice::from_raw_parts(self.map.ptr().as_ptr().cast(), self.words) }
    }

    /// Marks pages from `first_page` on, one bit per page of `bits` (KVM's per-slot
    /// dirty log, whose slot starts at a multiple of 64 pages).
    pub fn or_bits(&self, first_page: u64, bits: &[u64]) -> Result<(), String> {
        if !first_page.is_multiple_of(BITS) {
            return Err(format!(
                "page {first_page} does not start a word of the log"
            ));
        }
        let start = (first_page / BITS) as usize;
        let words = self.words();
        let Some(dst) = words.get(start..start + bits.len()) else {
            return Err(format!(
                "pages {first_page}+{} are beyond the log's {} pages",
                bits.len() as u64 * BITS,
                self.words as u64 * BITS
            ));
        };
        for (w, b) in dst.iter().zip(bits) {
            if *b != 0 {
                w.fetch_or(*b, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    /// Marks every page in `[start, end)` of guest physical addresses.
    pub fn mark_range(&self, start: u64, end: u64) {
        let words = self.words();
        for page in start / PAGE_SIZE..end.div_ceil(PAGE_SIZE) {
            if let Some(w) = words.get((page / BITS) as usize) {
                w.fetch_or(1 << (page % BITS), Ordering::AcqRel);
            }
        }
    }

    /// Takes (reads and clears) the word of pages `64 * index ..`.
    pub fn take_word(&self, index: usize) -> u64 {
        match self.words().get(index) {
            Some(w) if w.load(Ordering::Relaxed) != 0 => w.swap(0, Ordering::AcqRel),
            _ => 0,
        }
    }

    /// How many pages are marked.
    pub fn count(&self) -> u64 {
        self.words()
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// How many pages are marked in the words from `word` on.
    pub fn count_from(&self, word: usize) -> u64 {
        self.words()
            .get(word..)
            .unwrap_or(&[])
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Number of words.
    pub fn word_count(&self) -> usize {
        self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_take_and_count() {
        let log = PageLog::create(64 * 4096 * 3).unwrap();
        assert_eq!(log.word_count(), 3);
        log.or_bits(64, &[0b101]).unwrap();
        log.mark_range(4096 * 2, 4096 * 3 + 1);
        assert_eq!(log.count(), 4);
        assert_eq!(log.take_word(0), 0b1100);
        assert_eq!(log.take_word(1), 0b101);
        assert_eq!(log.count(), 0);
    }

    #[test]
    fn refuses_bits_outside_the_log_and_misaligned_starts() {
        let log = PageLog::create(64 * 4096).unwrap();
        assert!(log.or_bits(64, &[1]).is_err());
        assert!(log.or_bits(3, &[1]).is_err());
        // Beyond the end: ignored, never written out of bounds.
        log.mark_range(1 << 40, (1 << 40) + 1);
        assert_eq!(log.count(), 0);
    }

    #[test]
    fn a_second_mapping_sees_the_same_bits() {
        let log = PageLog::create(64 * 4096).unwrap();
        let other = PageLog::from_fd(log.fd().try_clone_to_owned().unwrap(), log.len()).unwrap();
        log.mark_range(0, 1);
        assert_eq!(other.take_word(0), 1);
        assert!(PageLog::from_fd(log.fd().try_clone_to_owned().unwrap(), 16).is_err());
    }
}
