//! Kernel command line: `scenario=NAME` picks the scenario; other `key=value` words are the
//! scenarios' parameters (`seed=`, `rounds=`, `bench_ms=`...). Unknown words are ignored
//! (QEMU microvm, for one, appends its own).

use crate::console;
use core::ops::RangeInclusive;

/// The value of the first `scenario=` word, if any.
pub fn scenario(cmdline: &[u8]) -> Option<&[u8]> {
    param(cmdline, "scenario")
}

/// The value of the first `key=value` word with this key, if any.
pub fn param<'a>(cmdline: &'a [u8], key: &str) -> Option<&'a [u8]> {
    cmdline
        .split(|b| b.is_ascii_whitespace())
        .find_map(|word| word.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
}

/// Hexadecimal digits, with or without a `0x` prefix (at most 16 digits).
pub fn parse_hex(text: &[u8]) -> Option<u64> {
    let digits = text
        .strip_prefix(b"0x")
        .or_else(|| text.strip_prefix(b"0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &c| {
        let digit = (c as char).to_digit(16)?;
        Some((value << 4) | u64::from(digit))
    })
}

/// Decimal digits, or hexadecimal with a `0x` prefix.
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.starts_with(b"0x") || text.starts_with(b"0X") {
        return parse_hex(text);
    }
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |value, &c| {
        let digit = (c as char).to_digit(10)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A numeric parameter (decimal, or hex with 0x): Ok(None) if absent; Err after a
/// `GUEST ERROR <scenario>: bad KEY=VALUE (a number from A to B)` line if it does not
/// parse or is outside `range`.
pub fn number_in(
    cmdline: &[u8],
    key: &str,
    range: RangeInclusive<u64>,
    scenario: &str,
) -> Result<Option<u64>, ()> {
    let Some(text) = param(cmdline, key) else {
        return Ok(None);
    };
    match parse_u64(text) {
        Some(value) if range.contains(&value) => Ok(Some(value)),
        _ => {
            console::error(scenario)
                .s(": bad ")
                .s(key)
                .s("=")
                .ascii(text)
                .s(" (a number from ")
                .dec(*range.start())
                .s(" to ")
                .dec(*range.end())
                .s(")")
                .end();
            Err(())
        }
    }
}
