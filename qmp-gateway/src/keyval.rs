//! QEMU's key=value syntax for command-line options that carry QAPI objects
//! (`-blockdev driver=raw,file.driver=file,file.filename=/p`): dotted keys nest, keys
//! whose parts are 0, 1, 2... make a list, `,,` is a comma inside a value, and a later
//! value for the same key wins, as in QEMU's util/keyval.c. Every value stays a string:
//! what it means (a boolean, a number, a size) is for the reader of the object to say,
//! as QEMU's keyval input visitor does.

use serde_json::{Map, Value};
use thiserror::Error;

/// QEMU's longest key (its buffer holds 127 characters and the NUL).
const MAX_KEY: usize = 127;

/// Why an option string is not keyval, in QEMU's words.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyvalError {
    #[error("Invalid parameter '{0}'")]
    InvalidKey(String),
    #[error("Parameter too long: '{0}'")]
    KeyTooLong(String),
    #[error("Expected '=' after parameter '{0}'")]
    NoValue(String),
    #[error("Parameters '{0}.*' used inconsistently")]
    Inconsistent(String),
    #[error("Parameter '{0}' missing")]
    ListHole(String),
}

/// Splits an option string as QEMU's option parsers do (QemuOpts and keyval alike): a
/// comma ends a part, `,,` is a comma inside one; a trailing comma ends nothing.
pub fn split_options(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                part.push(',');
            }
            ',' => parts.push(std::mem::take(&mut part)),
            c => part.push(c),
        }
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

/// Parses `s` into a JSON object whose leaves are strings. A first part without '='
/// is the value of `implied`, if given (`-blockdev raw,...` is `driver=raw,...`).
pub fn parse(s: &str, implied: Option<&str>) -> Result<Map<String, Value>, KeyvalError> {
    let mut root = Map::new();
    for (i, part) in split_options(s).into_iter().enumerate() {
        let (key, value) = match (part.split_once('='), implied) {
            (Some((k, v)), _) => (k.to_string(), v.to_string()),
            (None, Some(key)) if i == 0 => (key.to_string(), part),
            (None, _) => return Err(KeyvalError::NoValue(part)),
        };
        check_key(&key)?;
        put(&mut root, &key, value)?;
    }
    listify(&mut root, "")?;
    Ok(root)
}

/// An option as QEMU 7.2 takes -device, -object and -netdev: JSON when it starts with '{'
/// (libvirt's form), else QemuOpts' key=value (`qemu_opts`, `implied` the key of a first
/// part without '=').
pub fn json_or_qemu_opts(s: &str, implied: &str) -> Result<Map<String, Value>, serde_json::Error> {
    if s.trim_start().starts_with('{') {
        return serde_json::from_str(s);
    }
    Ok(qemu_opts(s, implied))
}

/// Parses `s` as QEMU's QemuOpts do (-device, -drive): flat keys, every value a string,
/// a later value for a key winning; a first part without '=' is the value of `implied`,
/// and any other part without '=' is a flag: `KEY` is KEY=on.
pub fn qemu_opts(s: &str, implied: &str) -> Map<String, Value> {
    let mut opts = Map::new();
    for (i, part) in split_options(s).into_iter().enumerate() {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None if i == 0 => (implied.to_string(), part),
            None => (part, "on".to_string()),
        };
        opts.insert(key, Value::String(value));
    }
    opts
}

/// QEMU's rule: dot-separated parts of letters, digits, '-' and '_', none empty.
fn check_key(key: &str) -> Result<(), KeyvalError> {
    if key.len() > MAX_KEY {
        return Err(KeyvalError::KeyTooLong(key.to_string()));
    }
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !key.split('.').all(part_ok) {
        return Err(KeyvalError::InvalidKey(key.to_string()));
    }
    Ok(())
}

/// Puts `value` at the dotted `key`; a key that is both a value and an object fails.
fn put(root: &mut Map<String, Value>, key: &str, value: String) -> Result<(), KeyvalError> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut obj = root;
    for (i, part) in parts.iter().enumerate() {
        let prefix = || parts[..=i].join(".");
        if i + 1 == parts.len() {
            if matches!(obj.get(*part), Some(Value::Object(_))) {
                return Err(KeyvalError::Inconsistent(prefix()));
            }
            obj.insert(part.to_string(), Value::String(value));
            return Ok(());
        }
        let entry = obj
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        obj = match entry {
            Value::Object(o) => o,
            _ => return Err(KeyvalError::Inconsistent(prefix())),
        };
    }
    Ok(())
}

/// Objects whose keys are all numbers become lists, which must have no holes.
fn listify(obj: &mut Map<String, Value>, path: &str) -> Result<(), KeyvalError> {
    for (k, v) in obj.iter_mut() {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if let Value::Object(child) = v {
            listify(child, &here)?;
            if !child.is_empty() && child.keys().all(|k| k.bytes().all(|b| b.is_ascii_digit())) {
                let mut items: Vec<(usize, Value)> = Vec::with_capacity(child.len());
                for (k, v) in std::mem::take(child) {
                    let index = k.parse().map_err(|_| KeyvalError::InvalidKey(k.clone()))?;
                    items.push((index, v));
                }
                items.sort_by_key(|(i, _)| *i);
                if let Some(hole) = (0..items.len()).find(|&i| items[i].0 != i) {
                    return Err(KeyvalError::ListHole(format!("{here}.{hole}")));
                }
                *v = Value::Array(items.into_iter().map(|(_, v)| v).collect());
            }
        }
    }
    Ok(())
}

/// QEMU's boolean words (qapi_bool_parse).
pub fn boolean(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// Digits as QEMU's strtol family with base 0 reads them: decimal, 0x hex, 0 octal.
fn magnitude(digits: &str) -> Option<u64> {
    if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16).ok()
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()
    } else {
        digits.parse().ok()
    }
}

/// An integer as QEMU's qemu_strtoi64 with base 0 reads it.
pub fn integer(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(digits) => 0i64.checked_sub_unsigned(magnitude(digits)?),
        None => i64::try_from(magnitude(s.strip_prefix('+').unwrap_or(s))?).ok(),
    }
}

/// A uint64 member's value as QEMU reads it: None if it is not a number, Some(Err) if
/// it is a negative one.
pub fn unsigned(s: &str) -> Option<Result<u64, ()>> {
    match s.strip_prefix('-') {
        Some(digits) => magnitude(digits).map(|_| Err(())),
        None => magnitude(s.strip_prefix('+').unwrap_or(s)).map(Ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Value {
        Value::Object(parse(s, None).unwrap())
    }

    #[test]
    fn dotted_keys_nest_and_commas_double() {
        assert_eq!(
            p("driver=raw,node-name=d0,file.driver=file,file.filename=/a,,b"),
            json!({"driver": "raw", "node-name": "d0",
                   "file": {"driver": "file", "filename": "/a,b"}})
        );
        assert_eq!(p("a=,b=x"), json!({"a": "", "b": "x"}));
        assert_eq!(p("a=1,a=2"), json!({"a": "2"}));
        assert_eq!(p(""), json!({}));
        assert_eq!(p("l.1=b,l.0=a"), json!({"l": ["a", "b"]}));
        let implied = |s: &str| Value::Object(parse(s, Some("driver")).unwrap());
        assert_eq!(implied("raw,a=1"), json!({"driver": "raw", "a": "1"}));
        assert_eq!(implied("raw"), json!({"driver": "raw"}));
        assert_eq!(implied("a=1"), json!({"a": "1"}));
        assert_eq!(split_options("a=1,,2,b=,"), ["a=1,2", "b="]);
        assert_eq!(split_options(""), Vec::<String>::new());
    }

    #[test]
    fn qemu_opts_keep_keys_flat() {
        assert_eq!(
            Value::Object(qemu_opts(
                "virtio-blk-pci,drive=a,,b,x.y=1,flag,drive=c",
                "driver"
            )),
            json!({"driver": "virtio-blk-pci", "drive": "c", "x.y": "1", "flag": "on"})
        );
        assert_eq!(
            Value::Object(qemu_opts("id=a,b=", "driver")),
            json!({"id": "a", "b": ""})
        );
    }

    #[test]
    fn malformed_options_say_what_qemu_says() {
        let e = |s: &str| parse(s, None).unwrap_err().to_string();
        assert_eq!(e("driver"), "Expected '=' after parameter 'driver'");
        assert_eq!(e("a=1,b,c=2"), "Expected '=' after parameter 'b'");
        assert_eq!(e("a..b=1"), "Invalid parameter 'a..b'");
        assert_eq!(e("a b=1"), "Invalid parameter 'a b'");
        assert_eq!(
            e("file=x,file.driver=file"),
            "Parameters 'file.*' used inconsistently"
        );
        assert_eq!(
            e("file.driver=file,file=x"),
            "Parameters 'file.*' used inconsistently"
        );
        assert_eq!(e("l.0=a,l.2=c"), "Parameter 'l.1' missing");
        assert!(e(&format!("{}=1", "k".repeat(128))).starts_with("Parameter too long"));
    }

    #[test]
    fn scalars_as_qemu_reads_them() {
        assert_eq!(boolean("on"), Some(true));
        assert_eq!(boolean("off"), Some(false));
        assert_eq!(boolean("maybe"), None);
        assert_eq!(integer("0x10"), Some(16));
        assert_eq!(integer("010"), Some(8));
        assert_eq!(integer("-3"), Some(-3));
        assert_eq!(integer("9223372036854775808"), None);
        assert_eq!(integer("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(integer("12a"), None);
        assert_eq!(unsigned("0x10"), Some(Ok(16)));
        assert_eq!(unsigned("18446744073709551615"), Some(Ok(u64::MAX)));
        assert_eq!(unsigned("-1"), Some(Err(())));
        assert_eq!(unsigned("1M"), None);
    }
}
