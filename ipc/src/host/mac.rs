//! MAC addresses as command lines and QMP write them: `52:54:00:12:34:56`.

/// Six hex bytes separated by `:` (one or two digits each); anything else is None.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Lower-case, two digits a byte, as QEMU prints them.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0xab];
        assert_eq!(parse_mac("52:54:00:12:34:ab"), Some(mac));
        assert_eq!(parse_mac("52:54:0:12:34:AB"), Some(mac));
        assert_eq!(format_mac(&mac), "52:54:00:12:34:ab");
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "zz:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
