//! The working set of `migrate-dirty`: `count` 4 KiB pages at `base` whose every word says
//! which round last wrote the page. Content C(r) of page p (512 little-endian u64 words):
//! word 0 = r, word 1 = p, word i >= 2 = key(seed, r, p) + i * 0x9E3779B97F4A7C15 (wrapping),
//! key = the splitmix64 finaliser of seed ^ r * K1 ^ p * K2. A page that missed its last
//! write (a dirty page lost by a migration) still holds an older round and fails the check;
//! one in the wrong place fails on word 1 (and the key); zeroes fail on word 2 at the latest.
//! With `rewritten` < 512 (`dirty-words=`) only words 0..rewritten follow the round; the
//! others keep round 0's values, checked every round all the same: two rounds of a page
//! differ in `rewritten` words, as pages a migration sends as XBZRLE deltas do.
//! Everything here runs in ring 3 except `new`.

use crate::arch::memory;

pub const PAGE_BYTES: u64 = 4096;
const WORDS: usize = (PAGE_BYTES / 8) as usize;
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const K1: u64 = 0xD1B5_4A32_D192_ED03;
const K2: u64 = 0xABC9_8388_FB8F_AC03;

/// A word that is not what the page's last round wrote.
#[derive(Clone, Copy)]
pub struct Mismatch {
    pub page: u64,
    pub word: usize,
    pub expected: u64,
    pub found: u64,
    /// Word 0 of the page as found: the round that last wrote it, if it was written whole.
    pub page_round: u64,
}

pub struct WorkingSet {
    pub base: u64,
    pub count: u64,
    seed: u64,
    /// Words 0..rewritten change with the round (1 to WORDS).
    rewritten: usize,
}

fn key(seed: u64, round: u64, page: u64) -> u64 {
    let mut z = seed ^ round.wrapping_mul(K1) ^ page.wrapping_mul(K2);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word `word` of C(round) for `page`.
pub fn expected(seed: u64, round: u64, page: u64, word: usize) -> u64 {
    match word {
        0 => round,
        1 => page,
        _ => key(seed, round, page).wrapping_add((word as u64).wrapping_mul(GOLDEN)),
    }
}

impl WorkingSet {
    /// `mib` MiB from the DMA pool (ring 0), not yet written, whose rounds rewrite words
    /// 0..`rewritten` of each page (at least word 0, at most all). None if the pool is too
    /// small.
    pub fn new(mib: u64, seed: u64, rewritten: usize) -> Option<WorkingSet> {
        let bytes = mib << 20;
        let base = memory::dma_alloc(bytes, PAGE_BYTES)?;
        Some(WorkingSet {
            base,
            count: bytes / PAGE_BYTES,
            seed,
            rewritten: rewritten.clamp(1, WORDS),
        })
    }

    /// Word `word` of `page` in round `round`: C(round)'s, or C(0)'s if no round rewrites it.
    fn expected(&self, round: u64, page: u64, word: usize) -> u64 {
        let round = if word < self.rewritten { round } else { 0 };
        expected(self.seed, round, page, word)
    }

    /// The word the self-test makes stale: `wanted`, or the last one rounds rewrite.
    pub fn stale_word(&self, wanted: usize) -> usize {
        wanted.min(self.rewritten - 1)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn word_ptr(&self, page: u64, word: usize) -> *mut u64 {
        (self.base + page * PAGE_BYTES + 8 * word as u64) as usize as *mut u64
    }

    fn read(&self, page: u64, word: usize) -> u64 {
        // SAFETY: page < count and word < WORDS (callers' loops): inside the working set, DMA
        // pool memory this scenario owns (identity mapped, user-accessible). Volatile, so the
        // check really reads memory instead of what the compiler remembers writing.
        unsafe { core::ptr::read_volatile(self.word_ptr(page, word)) }
    }

    fn write(&self, page: u64, word: usize, value: u64) {
        // SAFETY: as in `read`; nothing else (no device) uses this memory.
        unsafe { core::ptr::write_volatile(self.word_ptr(page, word), value) }
    }

    /// Writes C(round) into `page` without looking at what was there (the first fill).
    pub fn fill(&self, page: u64, round: u64) {
        self.write(page, 0, round);
        self.write(page, 1, page);
        let mut value = key(self.seed, round, page).wrapping_add(2u64.wrapping_mul(GOLDEN));
        for word in 2..WORDS {
            self.write(page, word, value);
            value = value.wrapping_add(GOLDEN);
        }
    }

    /// Checks that `page` holds C(round - 1) and writes C(round) over it, word by word, in one
    /// pass; stops at the first wrong word (the words before it are already rewritten).
    pub fn advance(&self, page: u64, round: u64) -> Result<(), Mismatch> {
        let previous = round.wrapping_sub(1);
        // Word 0 is checked first: when a later word is wrong, the page did hold `previous`.
        let mismatch = |word: usize, expected: u64, found: u64, page_round: u64| Mismatch {
            page,
            word,
            expected,
            found,
            page_round,
        };
        let found = self.read(page, 0);
        if found != previous {
            return Err(mismatch(0, previous, found, found));
        }
        self.write(page, 0, round);
        let found = self.read(page, 1);
        if found != page {
            return Err(mismatch(1, page, found, previous));
        }
        self.write(page, 1, page);
        let mut old = key(self.seed, previous, page).wrapping_add(2u64.wrapping_mul(GOLDEN));
        let mut new = key(self.seed, round, page).wrapping_add(2u64.wrapping_mul(GOLDEN));
        for word in 2..self.rewritten {
            let found = self.read(page, word);
            if found != old {
                return Err(mismatch(word, old, found, previous));
            }
            self.write(page, word, new);
            old = old.wrapping_add(GOLDEN);
            new = new.wrapping_add(GOLDEN);
        }
        // The words no round rewrites still hold round 0's values.
        let first_kept = self.rewritten.max(2);
        let mut kept =
            key(self.seed, 0, page).wrapping_add((first_kept as u64).wrapping_mul(GOLDEN));
        for word in first_kept..WORDS {
            let found = self.read(page, word);
            if found != kept {
                return Err(mismatch(word, kept, found, previous));
            }
            kept = kept.wrapping_add(GOLDEN);
        }
        Ok(())
    }

    /// Whether `page` holds C(round) exactly (a check that writes nothing).
    pub fn holds(&self, page: u64, round: u64) -> bool {
        (0..WORDS).all(|word| self.read(page, word) == self.expected(round, page, word))
    }

    /// The self-test's stand-in for a lost page: word `word` of `page` (which holds C(round))
    /// goes back to its value in C(round - 1) (a word rounds rewrite: see `stale_word`).
    pub fn make_stale(&self, page: u64, word: usize, round: u64) {
        self.write(page, word, self.expected(round.wrapping_sub(1), page, word));
    }
}
