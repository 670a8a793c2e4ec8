//! A number argument as QEMU's human monitor reads one (HMP `balloon N`, `cpu N`):
//! strtoull in base 0 (0x hex, 0 octal), an optional minus (the 64 bits it wraps to), and
//! QEMU's words for what is not a number.

/// The number `text` holds, or the monitor's message; `command` names the command in the
/// message for characters after the number.
pub fn monitor_number(command: &str, text: &str) -> Result<u64, String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    match digits.chars().next() {
        None => return Err("unexpected end of expression".into()),
        Some(first) if !first.is_ascii_digit() => {
            return Err(format!("invalid char '{first}' in expression"))
        }
        Some(_) => {}
    }
    let (radix, body) = match digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
        Some(hex) => (16, hex),
        None if digits.len() > 1 && digits.starts_with('0') => (8, &digits[1..]),
        None => (10, digits),
    };
    if body.is_empty() || !body.chars().all(|ch| ch.is_digit(radix)) {
        return Err(format!(
            "{command}: extraneous characters at the end of line"
        ));
    }
    let value = u64::from_str_radix(body, radix).map_err(|_| "number too large".to_string())?;
    Ok(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_qemus_monitor_reads_them() {
        let n = |s: &str| monitor_number("cpu", s);
        assert_eq!(n("64"), Ok(64));
        assert_eq!(n("0x40"), Ok(64));
        assert_eq!(n("0X10"), Ok(16));
        assert_eq!(n("010"), Ok(8));
        assert_eq!(n("0"), Ok(0));
        assert_eq!(n("-1"), Ok(u64::MAX));
        assert_eq!(n(""), Err("unexpected end of expression".into()));
        assert_eq!(n("abc"), Err("invalid char 'a' in expression".into()));
        assert_eq!(
            monitor_number("balloon", "64M"),
            Err("balloon: extraneous characters at the end of line".into())
        );
        assert_eq!(
            n("1x"),
            Err("cpu: extraneous characters at the end of line".into())
        );
        assert_eq!(n("9999999999999999999999"), Err("number too large".into()));
        assert!((n("9223372036854775808").unwrap() as i64) < 0);
    }
}
