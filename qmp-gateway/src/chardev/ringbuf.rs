//! The ringbuf (and memory) backend's buffer, and the text forms ringbuf-write and
//! ringbuf-read take and give, as QEMU 7.2 has them: a ring that keeps the newest bytes
//! (a write past its size drops the oldest), read by consuming; base64 as glib decodes it
//! (after QEMU's check of the characters); and utf8 as QEMU's JSON writer turns the raw
//! bytes into a string (its modified UTF-8: a NUL ends the text, an invalid sequence is
//! one U+FFFD, "\xC0\x80" is U+0000).

use std::collections::VecDeque;

/// QEMU's default ringbuf size.
pub const DEFAULT_SIZE: usize = 64 * 1024;

/// A ring of `size` bytes (a power of two) holding the newest bytes written.
pub struct Ring {
    size: usize,
    bytes: VecDeque<u8>,
}

impl Ring {
    pub fn new(size: usize) -> Ring {
        Ring {
            size,
            bytes: VecDeque::new(),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Appends `data`; what no longer fits goes from the front (the oldest).
    pub fn write(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.size)..];
        let over = (self.bytes.len() + data.len()).saturating_sub(self.size);
        self.bytes.drain(..over);
        self.bytes.extend(data);
    }

    /// Takes up to `max` of the oldest bytes.
    pub fn read(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.bytes.len());
        self.bytes.drain(..n).collect()
    }
}

/// The bytes ringbuf-write's utf8 `data` stands for: QEMU's JSON parser keeps a string
/// in modified UTF-8, where U+0000 is "\xC0\x80".
pub fn utf8_bytes(data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for b in data.bytes() {
        if b == 0 {
            out.extend_from_slice(&[0xc0, 0x80]);
        } else {
            out.push(b);
        }
    }
    out
}

/// ringbuf-read's utf8 answer for `bytes`: the text QEMU's JSON writer makes of them.
pub fn utf8_text(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    let mut rest = bytes;
    // The C string ends at the first NUL.
    if let Some(nul) = rest.iter().position(|&b| b == 0) {
        rest = &rest[..nul];
    }
    while !rest.is_empty() {
        let (cp, used) = mod_utf8_codepoint(rest);
        text.push(cp.and_then(char::from_u32).unwrap_or('\u{fffd}'));
        rest = &rest[used..];
    }
    text
}

/// QEMU's mod_utf8_codepoint (util/unicode.c) over at most 6 bytes: the code point at
/// the start of `s` (None: invalid) and how many bytes it took.
fn mod_utf8_codepoint(s: &[u8]) -> (Option<u32>, usize) {
    const MIN_CP: [u32; 5] = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];
    let byte = s[0];
    if byte < 0x80 {
        return (Some(byte.into()), 1);
    }
    if byte >= 0xfe || byte & 0x40 == 0 {
        // Impossible bytes, or a continuation byte where a sequence should start.
        return (None, 1);
    }
    let len = byte.leading_ones() as usize;
    let mut cp = u32::from(byte) & ((0x80 >> len) - 1);
    let mut used = 1;
    for i in 1..len {
        let next = if i < 6 {
            s.get(i).copied().unwrap_or(0)
        } else {
            0
        };
        if next & 0xc0 != 0x80 {
            return (None, used);
        }
        used += 1;
        cp = (cp << 6) | u32::from(next & 0x3f);
    }
    let invalid = cp > 0x10ffff
        || (0xfdd0..=0xfdef).contains(&cp)
        || cp & 0xfffe == 0xfffe
        || (0xd800..=0xdfff).contains(&cp)
        || (cp < MIN_CP[len - 2] && !(cp == 0 && len == 2));
    (if invalid { None } else { Some(cp) }, used)
}

/// Why ringbuf-write's base64 data was refused (QEMU's qbase64_decode words).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Base64Error {
    #[error("Base64 data contains invalid characters")]
    InvalidCharacters,
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Decodes as QEMU does: only base64 characters, '=' and '\n' are allowed; then glib's
/// g_base64_decode, which takes '=' as a zero that drops its byte, and drops a last
/// group of fewer than four characters.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let rank = |c: u8| -> Option<u32> {
        match c {
            b'=' => Some(0),
            _ => BASE64.iter().position(|&b| b == c).map(|p| p as u32),
        }
    };
    if !text
        .bytes()
        .all(|c| c == b'\n' || c == b'=' || rank(c).is_some())
    {
        return Err(Base64Error::InvalidCharacters);
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut v, mut i, mut last) = (0u32, 0, [0u8; 2]);
    for c in text.bytes() {
        let Some(r) = rank(c) else { continue };
        last = [c, last[0]];
        v = (v << 6) | r;
        i += 1;
        if i == 4 {
            out.push((v >> 16) as u8);
            if last[1] != b'=' {
                out.push((v >> 8) as u8);
            }
            if last[0] != b'=' {
                out.push(v as u8);
            }
            (v, i) = (0, 0);
        }
    }
    Ok(out)
}

/// Standard base64 with padding (g_base64_encode).
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(BASE64[((v >> (18 - 6 * k)) & 0x3f) as usize].into());
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_bytes_and_reading_consumes() {
        let mut r = Ring::new(4);
        r.write(b"ab");
        r.write(b"cdef");
        assert_eq!(r.read(100), b"cdef");
        assert_eq!(r.read(100), b"");
        r.write(b"0123456789");
        assert_eq!(r.read(1), b"6");
        assert_eq!(r.read(9), b"789");
    }

    #[test]
    fn utf8_text_is_what_qemus_json_writer_makes() {
        assert_eq!(utf8_text("añ€😀".as_bytes()), "añ€😀");
        // A NUL ends it; C0 80 is U+0000; a lone FF, a continuation byte, a cut
        // sequence, an overlong form, a surrogate and a noncharacter are U+FFFD each.
        assert_eq!(utf8_text(b"ab\0cd"), "ab");
        assert_eq!(utf8_text(b"a\xc0\x80b"), "a\0b");
        assert_eq!(utf8_text(b"\xff\x80x"), "\u{fffd}\u{fffd}x");
        assert_eq!(utf8_text(b"\xe2\x82x"), "\u{fffd}x");
        assert_eq!(utf8_text(b"\xc1\xbf"), "\u{fffd}");
        assert_eq!(utf8_text(b"\xed\xa0\x80"), "\u{fffd}");
        assert_eq!(utf8_text(b"\xef\xbf\xbe"), "\u{fffd}");
        assert_eq!(utf8_bytes("a\0b"), b"a\xc0\x80b");
    }

    #[test]
    fn base64_as_glib_after_qemus_character_check() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("/w==").unwrap(), [0xff]);
        // A last group short of four characters gives nothing.
        assert_eq!(base64_decode("QQ").unwrap(), b"");
        assert_eq!(base64_decode("Q!Q"), Err(Base64Error::InvalidCharacters));
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(base64_encode(b"hi"), "aGk=");
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(&[0xfb, 0xff, 0x00]), "+/8A");
    }
}
