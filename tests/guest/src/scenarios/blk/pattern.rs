//! The data pattern of the block scenarios: sector S of pattern P(seed) is 64 little-endian
//! u64 words, word i = (seed ^ (S << 16) ^ i) * 0x9E3779B97F4A7C15 (wrapping). Filling and
//! checking run in ring 3.

use crate::console::Line;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const WORDS_PER_SECTOR: usize = 64;

pub fn fill(addr: u64, first_sector: u64, sectors: u64, seed: u64) {
    // SAFETY: `addr` is a DMA buffer of at least `sectors` sectors owned by the caller and not
    // in flight.
    let words = unsafe {
        core::slice::from_raw_parts_mut(
            addr as usize as *mut u64,
            sectors as usize * WORDS_PER_SECTOR,
        )
    };
    for (s, sector) in words.chunks_exact_mut(WORDS_PER_SECTOR).enumerate() {
        let base = seed ^ ((first_sector + s as u64) << 16);
        for (i, word) in sector.iter_mut().enumerate() {
            *word = (base ^ i as u64).wrapping_mul(GOLDEN);
        }
    }
}

#[derive(Clone, Copy)]
pub struct Mismatch {
    pub sector: u64,
    pub word: usize,
    pub got: u64,
    pub want: u64,
}

impl Mismatch {
    /// Appends ` sector=N word=I got=0x.. want=0x..`.
    pub fn print(&self, line: Line) -> Line {
        line.s(" sector=")
            .dec(self.sector)
            .s(" word=")
            .dec(self.word as u64)
            .s(" got=")
            .hex(self.got)
            .s(" want=")
            .hex(self.want)
    }
}

/// Mismatching sectors of a buffer read from `first_sector`, and the first mismatch.
pub fn check(addr: u64, first_sector: u64, sectors: u64, seed: u64) -> (u64, Option<Mismatch>) {
    // SAFETY: as in `fill`; the device finished writing the buffer (completion reaped).
    let words = unsafe {
        core::slice::from_raw_parts(
            addr as usize as *const u64,
            sectors as usize * WORDS_PER_SECTOR,
        )
    };
    let mut bad = 0;
    let mut first = None;
    for (s, sector) in words.chunks_exact(WORDS_PER_SECTOR).enumerate() {
        let number = first_sector + s as u64;
        let base = seed ^ (number << 16);
        let wrong = sector
            .iter()
            .enumerate()
            .position(|(i, &word)| word != (base ^ i as u64).wrapping_mul(GOLDEN));
        if let Some(word) = wrong {
            bad += 1;
            first.get_or_insert(Mismatch {
                sector: number,
                word,
                got: sector[word],
                want: (base ^ word as u64).wrapping_mul(GOLDEN),
            });
        }
    }
    (bad, first)
}
