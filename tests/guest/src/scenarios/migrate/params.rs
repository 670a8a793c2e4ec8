//! The parameters of `migrate-dirty` (numbers are decimal, or hex with 0x). A value that does
//! not parse or is out of range is a `GUEST ERROR mig: bad KEY=VALUE (...)` line and the
//! scenario runs nothing.

use crate::{cmdline, console};
use core::ops::RangeInclusive;

/// Largest working set: the DMA pool the pages come from is at most 1 GiB.
const MAX_DIRTY_MIB: u64 = 1024;
const DEFAULT_DIRTY_MIB: u64 = 64;
const DEFAULT_REPORT_MS: u64 = 100;
/// Longest `mig-report-ms=` (an hour).
const MAX_REPORT_MS: u64 = 3_600_000;
/// The words of a page (`dirty-words=` at most, and by default).
pub const PAGE_WORDS: u64 = 512;

pub struct Params {
    /// `dirty-mib=`: size of the working set.
    pub dirty_mib: u64,
    /// `dirty-pages-per-ms=`: the most pages dirtied per millisecond (None: as fast as the CPU
    /// goes).
    pub pages_per_ms: Option<u64>,
    /// `dirty-words=`: how many words of each page (from word 0) a round rewrites (the
    /// others keep round 0's values).
    pub dirty_words: Option<u64>,
    /// `mig-rounds=`: stop after this many rounds (None: never).
    pub rounds: Option<u64>,
    /// `mig-report-ms=`: least time between two `GUEST MIG round` lines.
    pub report_ms: u64,
    /// `mig-selftest=1`: make one word stale after round SELFTEST_ROUND.
    pub selftest: bool,
    /// `mig-blk=1`: block I/O on virtio-blk device 0 alongside.
    pub blk: bool,
    /// `mig-net=1`: echoes through virtio-net device 0 alongside.
    pub net: bool,
    /// `seed=<hex>` (default: from the TSC, so that every boot writes different data).
    pub seed: Option<u64>,
}

fn bad(key: &str, text: &[u8]) -> console::Line {
    console::error("mig: bad ")
        .s(key)
        .s("=")
        .ascii(text)
        .s(" (")
}

fn number(cmdline: &[u8], key: &str, range: RangeInclusive<u64>) -> Result<Option<u64>, ()> {
    cmdline::number_in(cmdline, key, range, "mig")
}

fn flag(cmdline: &[u8], key: &str) -> Result<bool, ()> {
    Ok(number(cmdline, key, 0..=1)? == Some(1))
}

impl Params {
    /// Reads every parameter; Err after an error line for the first bad one.
    pub fn read(cmdline: &[u8]) -> Result<Params, ()> {
        let seed = match cmdline::param(cmdline, "seed") {
            None => None,
            Some(text) => match cmdline::parse_hex(text) {
                Some(seed) => Some(seed),
                None => {
                    bad("seed", text).s("hexadecimal, at most 16 digits)").end();
                    return Err(());
                }
            },
        };
        Ok(Params {
            dirty_mib: number(cmdline, "dirty-mib", 1..=MAX_DIRTY_MIB)?
                .unwrap_or(DEFAULT_DIRTY_MIB),
            pages_per_ms: number(cmdline, "dirty-pages-per-ms", 1..=1 << 32)?,
            dirty_words: number(cmdline, "dirty-words", 1..=PAGE_WORDS)?,
            rounds: number(cmdline, "mig-rounds", 1..=u64::MAX)?,
            report_ms: number(cmdline, "mig-report-ms", 1..=MAX_REPORT_MS)?
                .unwrap_or(DEFAULT_REPORT_MS),
            selftest: flag(cmdline, "mig-selftest")?,
            blk: flag(cmdline, "mig-blk")?,
            net: flag(cmdline, "mig-net")?,
            seed,
        })
    }
}
