//! HMP's arguments as QEMU 7.2's monitor reads them from a command's args_type string
//! ("force:-f,device:B"): each KEY:TYPE read in turn into a QMP member KEY, with the
//! monitor's words for what it cannot read. Types: B (block device name), s (string),
//! F (file name), o (a size, MiB when it has no suffix), b (on|off), -X (a flag),
//! i (a 32-bit number), l (a 64-bit number), -X (a flag), -Xs (a flag that takes a
//! string); a '?' after
//! the type: may be left out.

use serde_json::{json, Map, Value};

/// Reads `text` by `spec` for the command `name`: the members, or what QEMU prints
/// before its "Try help" line.
pub fn read(name: &str, spec: &str, text: &str) -> Result<Map<String, Value>, String> {
    let mut rest = text.trim_start();
    let mut members = Map::new();
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (key, ty) = part.split_once(':').unwrap_or((part, "s"));
        rest = rest.trim_start();
        if let Some(flag) = ty.strip_prefix('-') {
            rest = read_flag(name, key, flag, spec, rest, &mut members)?;
            continue;
        }
        let optional = ty.ends_with('?');
        if optional && rest.is_empty() {
            continue;
        }
        match ty.trim_end_matches('?') {
            "o" => {
                let (size, after) = size_mib(rest).ok_or("invalid size\n")?;
                members.insert(key.into(), json!(size));
                rest = after;
            }
            "l" => {
                let (value, after) = number(rest)?;
                members.insert(key.into(), json!(value as i64));
                rest = after;
            }
            "b" => {
                let (word, after) =
                    rest.split_at(rest.find(char::is_whitespace).unwrap_or(rest.len()));
                let value = match word {
                    "on" => true,
                    "off" => false,
                    _ => return Err("Expected 'on' or 'off'\n".into()),
                };
                members.insert(key.into(), json!(value));
                rest = after;
            }
            "i" => {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                let value = crate::qmp::monitor_number::monitor_number(name, &rest[..end])
                    .map_err(|why| why + "\n")?;
                if value >> 32 != 0 {
                    return Err(format!(
                        "'{name}' has failed: integer is for 32-bit values\n"
                    ));
                }
                members.insert(key.into(), json!(value as u32 as i32));
                rest = &rest[end..];
            }
            kind => {
                let (word, after) = string(rest).ok_or_else(|| {
                    let what = match kind {
                        "B" => "block device name",
                        "F" => "filename",
                        _ => "string",
                    };
                    format!("{name}: {what} expected\n")
                })?;
                members.insert(key.into(), json!(word));
                rest = after;
            }
        }
    }
    if !rest.trim().is_empty() {
        return Err(format!(
            "{name}: extraneous characters at the end of line\n"
        ));
    }
    Ok(members)
}

/// A flag `-X` (`flag` "X", or "Xs" when it takes a string) in its place: present, or
/// (QEMU's way) another of the spec's flags there is left for later.
fn read_flag<'a>(
    name: &str,
    key: &str,
    flag: &str,
    spec: &str,
    rest: &'a str,
    members: &mut Map<String, Value>,
) -> Result<&'a str, String> {
    let letter = flag.chars().next().unwrap_or_default();
    let Some(after) = rest.strip_prefix('-') else {
        return Ok(rest);
    };
    let given = after.chars().next().unwrap_or_default();
    if given != letter {
        let later = spec.split(',').any(|p| {
            p.split_once(':')
                .is_some_and(|(_, t)| t.strip_prefix('-').is_some_and(|f| f.starts_with(given)))
        });
        if !later {
            return Err(format!("{name}: unsupported option -{given}\n"));
        }
        return Ok(rest);
    }
    let after = &after[given.len_utf8()..];
    if flag.ends_with('s') && flag.len() > 1 {
        let (word, after) =
            string(after.trim_start()).ok_or_else(|| format!("{name}: string expected\n"))?;
        members.insert(key.into(), json!(word));
        return Ok(after);
    }
    members.insert(key.into(), json!(true));
    Ok(after)
}

/// A 64-bit value as QEMU's monitor's get_expr reads one: sums (+ -) of bitwise terms
/// (& | ^) of products (* / %), unary + - ~, parentheses, 'c' characters and numbers
/// (strtoull in base 0: 0x hex, 0 octal), spaces between them skipped, in 64 bits that
/// wrap. It ends where no operator follows (QEMU's quirk: "1 -1" is 0); the rest is left
/// to the next argument, whose words come from there ("1k 0" fails at 'k'). Not read:
/// QEMU's $registers.
fn number(text: &str) -> Result<(u64, &str), String> {
    let mut e = Expr { text, at: 0 };
    let value = e.sum().map_err(|why| why + "\n")?;
    Ok((value as u64, &text[e.at..]))
}

/// QEMU's monitor expression reader (monitor/hmp.c expr_sum and below) over `text`.
struct Expr<'a> {
    text: &'a str,
    at: usize,
}

impl Expr<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    /// Past the character here, then past spaces (QEMU's next()).
    fn next(&mut self) {
        if let Some(c) = self.peek() {
            self.at += c.len_utf8();
        }
        self.skip_spaces();
    }

    fn skip_spaces(&mut self) {
        let rest = &self.text[self.at..];
        self.at += rest.len() - rest.trim_start().len();
    }

    fn sum(&mut self) -> Result<i64, String> {
        let mut value = self.logic()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.next();
            let rhs = self.logic()?;
            value = match op {
                '+' => value.wrapping_add(rhs),
                _ => value.wrapping_sub(rhs),
            };
        }
        Ok(value)
    }

    fn product(&mut self) -> Result<i64, String> {
        let mut value = self.unary()?;
        while let Some(op @ ('*' | '/' | '%')) = self.peek() {
            self.next();
            let rhs = self.unary()?;
            value = match op {
                '*' => value.wrapping_mul(rhs),
                _ if rhs == 0 => return Err("division by zero".into()),
                '/' => value.wrapping_div(rhs),
                _ => value.wrapping_rem(rhs),
            };
        }
        Ok(value)
    }

    fn logic(&mut self) -> Result<i64, String> {
        let mut value = self.product()?;
        while let Some(op @ ('&' | '|' | '^')) = self.peek() {
            self.next();
            let rhs = self.product()?;
            value = match op {
                '&' => value & rhs,
                '|' => value | rhs,
                _ => value ^ rhs,
            };
        }
        Ok(value)
    }

    fn unary(&mut self) -> Result<i64, String> {
        match self.peek() {
            None => Err("unexpected end of expression".into()),
            Some('+') => {
                self.next();
                self.unary()
            }
            Some('-') => {
                self.next();
                Ok(self.unary()?.wrapping_neg())
            }
            Some('~') => {
                self.next();
                Ok(!self.unary()?)
            }
            Some('(') => {
                self.next();
                let value = self.sum()?;
                if self.peek() != Some(')') {
                    return Err("')' expected".into());
                }
                self.next();
                Ok(value)
            }
            Some('\'') => {
                self.at += 1;
                let c = self.peek().ok_or("character constant expected")?;
                self.at += c.len_utf8();
                if self.peek() != Some('\'') {
                    return Err("missing terminating \' character".into());
                }
                self.next();
                Ok(i64::from(u32::from(c)))
            }
            Some(first) => {
                let rest = &self.text[self.at..];
                let (radix, skip) = match rest.strip_prefix("0x").or(rest.strip_prefix("0X")) {
                    Some(hex) if hex.starts_with(|c: char| c.is_ascii_hexdigit()) => (16, 2),
                    _ if first == '0' => (8, 0),
                    _ => (10, 0),
                };
                let body = &rest[skip..];
                let end = (body.find(|c: char| !c.is_digit(radix))).unwrap_or(body.len());
                if end == 0 {
                    return Err(format!("invalid char '{first}' in expression"));
                }
                let value = u64::from_str_radix(&body[..end], radix)
                    .map_err(|_| "number too large".to_string())?;
                self.at += skip + end;
                self.skip_spaces();
                Ok(value as i64)
            }
        }
    }
}

/// A word, or a string in double quotes with \n, \r, \\, \' and \" escapes (QEMU's
/// get_str); None when there is none.
fn string(text: &str) -> Option<(String, &str)> {
    let text = text.trim_start();
    if text.is_empty() {
        return None;
    }
    let Some(quoted) = text.strip_prefix('"') else {
        let end = text.find(char::is_whitespace).unwrap_or(text.len());
        return Some((text[..end].to_string(), &text[end..]));
    };
    let mut out = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &quoted[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                e @ ('\\' | '\'' | '"') => out.push(e),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

/// QEMU's qemu_strtosz_MiB: a number (decimal, with a fraction; or 0x hex), then an
/// optional unit B, K, M, G, T, P or E (either case), MiB when none; None when it is no
/// size or above int64.
fn size_mib(text: &str) -> Option<(u64, &str)> {
    size(text, 20)
}

/// QEMU's qemu_strtosz with a default unit of 1 << `default_shift` bytes.
pub fn size(text: &str, default_shift: u32) -> Option<(u64, &str)> {
    let (value, after) = if let Some(hex) = text.strip_prefix("0x").or(text.strip_prefix("0X")) {
        let end = hex
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(hex.len());
        (
            u64::from_str_radix(&hex[..end], 16).ok()? as f64,
            &hex[end..],
        )
    } else {
        let end = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        (text[..end].parse::<f64>().ok()?, &text[end..])
    };
    let mut chars = after.chars();
    let (shift, after) = match chars.next().map(|c| c.to_ascii_uppercase()) {
        Some('B') => (0, chars.as_str()),
        Some('K') => (10, chars.as_str()),
        Some('M') => (20, chars.as_str()),
        Some('G') => (30, chars.as_str()),
        Some('T') => (40, chars.as_str()),
        Some('P') => (50, chars.as_str()),
        Some('E') => (60, chars.as_str()),
        _ => (default_shift, after),
    };
    let bytes = value * (1u64 << shift) as f64;
    // A size is whole bytes: a fraction must come to one.
    if !(0.0..=i64::MAX as f64).contains(&bytes) || bytes.fract() != 0.0 {
        return None;
    }
    Some((bytes as u64, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_read_as_qemus_monitor_reads_them() {
        let m = read("block_job_cancel", "force:-f,device:B", "-f j0").unwrap();
        assert_eq!(Value::Object(m), json!({"force": true, "device": "j0"}));
        let m = read("block_resize", "device:B,size:o", "d0 1.5G").unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"device": "d0", "size": 1536u64 << 20})
        );
        let m = read("block_resize", "device:B,size:o", "d0 32").unwrap();
        assert_eq!(m["size"], json!(32u64 << 20));
        assert_eq!(
            read("block_resize", "device:B,size:o", ""),
            Err("block_resize: block device name expected\n".into())
        );
        assert_eq!(
            read("block_resize", "device:B,size:o", "d0 x"),
            Err("invalid size\n".into())
        );
        let spec = "device:B,bps:l,iops:l";
        assert_eq!(
            read("t", spec, "d0 (1+2)*4 -1 5").unwrap()["bps"],
            json!(11)
        );
        assert_eq!(read("t", spec, "d0 1 -1 2").unwrap()["iops"], json!(2));
        assert_eq!(read("t", spec, "d0 6/4 ~0").unwrap()["iops"], json!(-1));
        assert_eq!(
            read("t", spec, "d0 'a' 7%4|8^1").unwrap()["iops"],
            json!(10)
        );
        for (text, why) in [
            ("d0 1/0 0", "division by zero\n"),
            ("d0 (1 0", "')' expected\n"),
            ("d0 'ab' 0", "missing terminating ' character\n"),
        ] {
            assert_eq!(read("t", spec, text), Err(why.into()), "{text}");
        }
        let m = read("t", spec, "d0 0x10 (-1)").unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"device": "d0", "bps": 16, "iops": -1})
        );
        assert_eq!(read("t", spec, "d0 010 0").unwrap()["bps"], json!(8));
        assert_eq!(read("t", spec, "d0 0 0").unwrap()["bps"], json!(0));
        for (text, why) in [
            ("d0 1", "unexpected end of expression\n"),
            ("d0 1k 0", "invalid char 'k' in expression\n"),
            ("d0 x 0", "invalid char 'x' in expression\n"),
            ("d0 1 2k", "t: extraneous characters at the end of line\n"),
            ("d0 99999999999999999999 0", "number too large\n"),
        ] {
            assert_eq!(read("t", spec, text), Err(why.into()), "{text}");
        }
        assert_eq!(
            read("set_link", "name:s,up:b", "n0 maybe"),
            Err("Expected 'on' or 'off'\n".into())
        );
        assert_eq!(
            read("eject", "force:-f,device:B", "-x d0"),
            Err("eject: unsupported option -x\n".into())
        );
        assert_eq!(
            read("object_del", "id:s", "a b"),
            Err("object_del: extraneous characters at the end of line\n".into())
        );
        let m = read("screendump", "filename:F,format:-fs,device:s?", "f -f png").unwrap();
        assert_eq!(Value::Object(m), json!({"filename": "f", "format": "png"}));
        let m = read("chardev-remove", "id:s", r#""a b\"c""#).unwrap();
        assert_eq!(m["id"], "a b\"c");
    }
}
