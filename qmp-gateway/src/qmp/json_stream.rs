//! Splits a QMP input byte stream into top-level JSON values without trusting it: an
//! object may arrive in pieces, several may arrive in one read, nothing needs a newline.
//! Bytes are only buffered up to a size limit and nesting is only followed to a depth
//! limit; past either, the rest of that value is skipped (its structure still tracked so
//! the stream resynchronises) and one error is reported for it.

/// Largest JSON value accepted (QMP commands are a few hundred bytes).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Deepest nesting accepted (serde_json's own recursion limit).
pub const MAX_NESTING: usize = 128;

#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// The complete text of one top-level value.
    Value(Vec<u8>),
    /// A value broke a limit; its remaining bytes are being skipped.
    TooLarge,
    TooDeep,
}

#[derive(Default)]
pub struct JsonStream {
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Skipping the rest of a value that broke a limit.
    skipping: bool,
}

fn is_delimiter(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | b'{' | b'}' | b'[' | b']' | b'"' | b',' | b':'
    )
}

impl JsonStream {
    /// Feeds bytes; returns the values (and limit errors) they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Item> {
        let mut out = Vec::new();
        for &b in bytes {
            self.byte(b, &mut out);
        }
        out
    }

    fn push(&mut self, b: u8, out: &mut Vec<Item>) {
        if self.skipping {
            return;
        }
        if self.buf.len() >= MAX_VALUE_BYTES {
            self.buf = Vec::new();
            self.skipping = true;
            out.push(Item::TooLarge);
            return;
        }
        self.buf.push(b);
    }

    /// Ends the current top-level value.
    fn finish(&mut self, out: &mut Vec<Item>) {
        if self.skipping {
            self.skipping = false;
        } else if !self.buf.is_empty() {
            out.push(Item::Value(std::mem::take(&mut self.buf)));
        }
        self.buf.clear();
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Item>) {
        if self.in_string {
            self.push(b, out);
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.depth == 0 {
                    self.finish(out);
                }
            }
            return;
        }
        if self.depth == 0 {
            // Between values, or inside a top-level scalar (number, keyword): a scalar
            // ends at the first delimiter, as in QEMU's lexer.
            if is_delimiter(b) && !self.buf.is_empty() {
                self.finish(out);
            }
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => {}
                b'{' | b'[' => {
                    self.depth = 1;
                    self.push(b, out);
                }
                b'"' => {
                    self.in_string = true;
                    self.push(b, out);
                }
                // A stray closer, comma or colon is a value of its own that will not
                // parse: the client hears about it at once.
                b'}' | b']' | b',' | b':' => {
                    self.push(b, out);
                    self.finish(out);
                }
                _ => self.push(b, out),
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth > MAX_NESTING && !self.skipping {
                    self.buf = Vec::new();
                    self.skipping = true;
                    out.push(Item::TooDeep);
                }
            }
            b'}' | b']' => self.depth -= 1,
            _ => {}
        }
        self.push(b, out);
        if self.depth == 0 {
            self.finish(out);
        }
    }

    /// Bytes held for the value in progress (bounded by `MAX_VALUE_BYTES`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(items: Vec<Item>) -> Vec<String> {
        items
            .into_iter()
            .map(|i| match i {
                Item::Value(v) => String::from_utf8(v).unwrap(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn objects_split_across_reads_and_packed_in_one() {
        let mut s = JsonStream::default();
        assert!(s.feed(br#"{"execute": "qu"#).is_empty());
        assert_eq!(values(s.feed(br#"it"}"#)), vec![r#"{"execute": "quit"}"#]);
        assert_eq!(
            values(s.feed(br#"{"a":1}{"b":[2,{"c":"}"}]}  {"d":"\"{"}"#)),
            vec![r#"{"a":1}"#, r#"{"b":[2,{"c":"}"}]}"#, r#"{"d":"\"{"}"#]
        );
    }

    #[test]
    fn top_level_scalars_end_at_a_delimiter() {
        let mut s = JsonStream::default();
        assert!(s.feed(b"42").is_empty());
        assert_eq!(
            values(s.feed(b" \"str\" true{")),
            vec!["42", "\"str\"", "true"]
        );
        assert_eq!(values(s.feed(b"}")), vec!["{}"]);
        assert_eq!(values(s.feed(b"]")), vec!["]"]);
    }

    #[test]
    fn huge_values_are_skipped_and_the_stream_recovers() {
        let mut s = JsonStream::default();
        let mut big = b"{\"x\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'a', 3 * MAX_VALUE_BYTES));
        let items = s.feed(&big);
        assert_eq!(items, vec![Item::TooLarge]);
        assert!(s.buffered() == 0);
        assert!(s.feed(b"\"}").is_empty());
        assert_eq!(values(s.feed(b"{\"ok\":1}")), vec!["{\"ok\":1}"]);
    }

    #[test]
    fn deep_nesting_is_one_error_and_the_stream_recovers() {
        let mut s = JsonStream::default();
        let mut deep = vec![b'['; 100_000];
        deep.extend(vec![b']'; 100_000]);
        assert_eq!(s.feed(&deep), vec![Item::TooDeep]);
        assert_eq!(values(s.feed(b"{}")), vec!["{}"]);
    }

    #[test]
    fn a_huge_top_level_string_is_bounded() {
        let mut s = JsonStream::default();
        let mut big = vec![b'"'];
        big.extend(std::iter::repeat_n(b'a', 10 << 20));
        big.push(b'"');
        assert_eq!(s.feed(&big), vec![Item::TooLarge]);
        assert_eq!(values(s.feed(b"{}")), vec!["{}"]);
    }
}
