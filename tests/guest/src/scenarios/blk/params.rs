//! The block scenarios' command-line parameters: numbers with a default, and the pattern seed
//! the data scenarios require.

use crate::{cmdline, console};

/// The number (decimal, or hex with 0x) of `key=`, or `default`.
pub fn param(cmdline: &[u8], key: &str, default: u64) -> u64 {
    cmdline::param(cmdline, key)
        .and_then(cmdline::parse_u64)
        .unwrap_or(default)
}

/// The hex `seed=` of the pattern scenarios; None after an error line if it is missing.
pub fn seed(cmdline: &[u8]) -> Option<u64> {
    let seed = cmdline::param(cmdline, "seed").and_then(cmdline::parse_hex);
    if seed.is_none() {
        console::error("blk: this scenario needs seed=<hex>").end();
    }
    seed
}
