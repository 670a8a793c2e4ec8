//! QEMU's size syntax, as QEMU 7.2 reads a size in -m, -object and -chardev
//! (util/cutils.c's qemu_strtosz): the one parser of sizes on our command lines.

/// Why a text is not a size; `option_message` gives QEMU's words for an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("not a size")]
    Invalid,
    #[error("a size of 2^64 bytes or more")]
    OutOfRange,
}

impl SizeError {
    /// What QEMU says of option `name` given `value` (QemuOpts' parse_option_size).
    pub fn option_message(self, name: &str, value: &str) -> String {
        match self {
            SizeError::Invalid => {
                format!("Parameter '{name}' expects a non-negative number below 2^64")
            }
            SizeError::OutOfRange => {
                format!("Value '{value}' is out of range for parameter '{name}'")
            }
        }
    }
}

/// A size: an unsigned decimal number, which may have a fraction, or a hexadecimal one
/// (`0x`, no fraction), then an optional suffix B, K, M, G, T, P or E (any case, powers
/// of 1024); without one, `default_unit` bytes. Leading white space and a `+` are taken
/// (strtoull's); a minus sign is not. A fraction needs a unit above a byte and is rounded
/// to the nearest byte, halves up.
pub fn parse_size(text: &str, default_unit: u64) -> Result<u64, SizeError> {
    let unsigned = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let unsigned = unsigned.strip_prefix('+').unwrap_or(unsigned);
    let decimal_end = unsigned
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(unsigned.len());
    if decimal_end == 0 {
        return Err(SizeError::Invalid);
    }
    let (decimal, mut rest) = unsigned.split_at(decimal_end);
    let mut whole: u64 = decimal.parse().map_err(|_| SizeError::OutOfRange)?;
    // The fraction as QEMU keeps it: 64.64 fixed point, from a double.
    let mut fraction: u64 = 0;
    if whole == 0 && rest.starts_with(['x', 'X']) {
        let hex_end = rest[1..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .map_or(rest.len(), |i| i + 1);
        // "0x" without digits is the number 0 followed by "x".
        if hex_end > 1 {
            whole =
                u64::from_str_radix(&rest[1..hex_end], 16).map_err(|_| SizeError::OutOfRange)?;
            rest = &rest[hex_end..];
            if rest.starts_with('.') {
                return Err(SizeError::Invalid);
            }
        }
    } else if let Some(after_point) = rest.strip_prefix('.') {
        let digits_end = after_point
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after_point.len());
        let digits = &after_point[..digits_end];
        if !digits.is_empty() {
            let value: f64 = format!("0.{digits}")
                .parse()
                .map_err(|_| SizeError::Invalid)?;
            // Below 1, so the product is below 2^64 (a cast saturates at worst).
            fraction = (value * 18_446_744_073_709_551_616.0) as u64;
        }
        rest = &after_point[digits_end..];
    }
    let mut suffix = rest.chars();
    let unit = match suffix.next().map(|c| c.to_ascii_lowercase()) {
        Some('b') => 1,
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some('t') => 1 << 40,
        Some('p') => 1 << 50,
        Some('e') => 1 << 60,
        _ => {
            suffix = rest.chars();
            default_unit
        }
    };
    if !suffix.as_str().is_empty() || (unit == 1 && fraction != 0) {
        return Err(SizeError::Invalid);
    }
    let unit = u128::from(unit);
    let scaled_fraction = u128::from(fraction) * unit;
    // The fraction's bytes, rounded: a half (bit 63 of what is below a byte) goes up.
    let fraction_bytes = (scaled_fraction >> 64) + ((scaled_fraction >> 63) & 1);
    let bytes = u128::from(whole) * unit + fraction_bytes;
    u64::try_from(bytes).map_err(|_| SizeError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Each form as qemu-system-x86_64 7.2 takes (or refuses) it in
    /// `-chardev ringbuf,id=r,size=...` and `-object memory-backend-ram,size=...`.
    #[test]
    fn qemu_forms() {
        let cases: &[(&str, Result<u64, SizeError>)] = &[
            ("64k", Ok(64 << 10)),
            ("64K", Ok(64 << 10)),
            ("64m", Ok(64 << 20)),
            ("1g", Ok(1 << 30)),
            ("1T", Ok(1 << 40)),
            ("1P", Ok(1 << 50)),
            ("1E", Ok(1 << 60)),
            ("8E", Ok(1 << 63)),
            ("64b", Ok(64)),
            ("64B", Ok(64)),
            ("0", Ok(0)),
            ("4096", Ok(4096)),
            ("1.5M", Ok(3 << 19)),
            ("1.5k", Ok(1536)),
            ("0.25k", Ok(256)),
            ("0.5k", Ok(512)),
            ("1.5e", Ok(3 << 59)),
            // Rounded to the nearest byte: 1024.512 and 2047.8976.
            ("1.0005k", Ok(1025)),
            ("1.9999k", Ok(2048)),
            ("0.0009765625k", Ok(1)),
            ("1.", Ok(1)),
            ("4096.0", Ok(4096)),
            ("0x1000", Ok(0x1000)),
            ("0X10", Ok(16)),
            // Deprecated in QEMU (a warning), still taken.
            ("0x10k", Ok(16 << 10)),
            (" 64", Ok(64)),
            ("+4", Ok(4)),
            ("18446744073709551615", Ok(u64::MAX)),
            ("-1", Err(SizeError::Invalid)),
            (" -1", Err(SizeError::Invalid)),
            ("", Err(SizeError::Invalid)),
            ("k", Err(SizeError::Invalid)),
            ("0x", Err(SizeError::Invalid)),
            ("0x1.8k", Err(SizeError::Invalid)),
            (".5k", Err(SizeError::Invalid)),
            ("1.5", Err(SizeError::Invalid)),
            ("1.5b", Err(SizeError::Invalid)),
            ("1.e5", Err(SizeError::Invalid)),
            ("1e3", Err(SizeError::Invalid)),
            ("64KiB", Err(SizeError::Invalid)),
            ("64x", Err(SizeError::Invalid)),
            ("1.5M1", Err(SizeError::Invalid)),
            ("64 ", Err(SizeError::Invalid)),
            ("18446744073709551616", Err(SizeError::OutOfRange)),
            ("16E", Err(SizeError::OutOfRange)),
            ("0x10000000000000000", Err(SizeError::OutOfRange)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text, 1), *want, "{text:?}");
        }
    }

    /// -m's default unit: a fraction without a suffix is a fraction of a MiB.
    #[test]
    fn default_unit() {
        assert_eq!(parse_size("512", MIB), Ok(512 * MIB));
        assert_eq!(parse_size("1.5", MIB), Ok(3 * MIB / 2));
        assert_eq!(parse_size("1.5b", MIB), Err(SizeError::Invalid));
        assert_eq!(
            parse_size("17592186044416", MIB),
            Err(SizeError::OutOfRange)
        );
    }

    #[test]
    fn messages() {
        assert_eq!(
            SizeError::Invalid.option_message("size", "-1"),
            "Parameter 'size' expects a non-negative number below 2^64"
        );
        assert_eq!(
            SizeError::OutOfRange.option_message("size", "16E"),
            "Value '16E' is out of range for parameter 'size'"
        );
    }
}
