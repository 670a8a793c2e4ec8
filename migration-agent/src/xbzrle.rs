//! XBZRLE (QMP's xbzrle capability): a page the cache holds from an earlier pass is sent
//! as the difference from that copy, which is what the destination's memory holds. The
//! difference is a sequence of (unchanged run, changed run + its new bytes), each length
//! a ULEB128, as QEMU encodes it. The cache is direct-mapped (page number modulo its
//! slots) and bounded by xbzrle-cache-size; a page sent whole is cached as the very
//! bytes sent, so a later delta is against exactly what the destination has. A page
//! that did not change since goes not at all (QEMU skips it too). The counters are
//! QEMU's: `pages` are the cache's hits (deltas, pages unchanged, and overflows: deltas
//! too long, sent whole), `bytes` what they cost (a delta with its length and type, 3
//! bytes; a page for an overflow).

use ipc::PassReport;

use crate::stream::PAGE;

/// A delta longer than this goes whole (QEMU's threshold is the same idea: a delta
/// that saves too little is not worth the destination's work).
const MAX_DELTA: usize = PAGE - PAGE / 8;

pub enum Encoded<'a> {
    /// The destination has the page as it is now: nothing to send.
    Unchanged,
    Delta(&'a [u8]),
    /// Send this copy whole (it is cached).
    Whole(&'a [u8]),
}

/// What a delta costs in QEMU's count: its bytes, its type and its 16-bit length.
const DELTA_HEADER: u64 = 3;

struct Slot {
    page: u64,
    data: Box<[u8]>,
}

pub struct Xbzrle {
    slots: Vec<Option<Slot>>,
    copy: Vec<u8>,
    delta: Vec<u8>,
    pages: u64,
    bytes: u64,
    cache_miss: u64,
    overflow: u64,
}

fn put_uleb(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn get_uleb(input: &[u8], at: &mut usize) -> Option<usize> {
    let mut v = 0usize;
    for shift in (0..21).step_by(7) {
        let b = *input.get(*at)?;
        *at += 1;
        v |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Bytes 0x01 and 0x80 in each byte of a word, to find a zero byte in one.
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// How many bytes from `at` on `old` and `new` have in common (blocks compared whole
/// first: one memcmp for 64 bytes).
fn unchanged_run(old: &[u8], new: &[u8], at: usize) -> usize {
    let (mut i, len) = (at, new.len().min(old.len()));
    while i + 64 <= len && old[i..i + 64] == new[i..i + 64] {
        i += 64;
    }
    while i + 8 <= len && old[i..i + 8] == new[i..i + 8] {
        i += 8;
    }
    while i < len && old[i] == new[i] {
        i += 1;
    }
    i - at
}

/// How many bytes from `at` on differ between `old` and `new` (a word at a time while no
/// byte of their XOR is zero, as QEMU's encoder goes).
fn changed_run(old: &[u8], new: &[u8], at: usize) -> usize {
    let (mut i, len) = (at, new.len().min(old.len()));
    while i + 8 <= len {
        let x = word(old, i) ^ word(new, i);
        if x.wrapping_sub(LOW_BITS) & !x & HIGH_BITS != 0 {
            break;
        }
        i += 8;
    }
    while i < len && old[i] != new[i] {
        i += 1;
    }
    i - at
}

/// The delta from `old` to `new` (pages) into `out`; None when it would be longer than
/// `max`.
pub fn encode(old: &[u8], new: &[u8], out: &mut Vec<u8>, max: usize) -> Option<()> {
    out.clear();
    let mut i = 0;
    while i < new.len() {
        let zrun = unchanged_run(old, new, i);
        i += zrun;
        if i == new.len() {
            // A trailing unchanged run is implied.
            break;
        }
        let nzrun = changed_run(old, new, i);
        put_uleb(out, zrun);
        put_uleb(out, nzrun);
        out.extend_from_slice(&new[i..i + nzrun]);
        i += nzrun;
        if out.len() > max {
            return None;
        }
    }
    Some(())
}

/// Applies a delta to `page` in place; false (page partly written) when the delta is
/// malformed or runs past the page.
pub fn decode(delta: &[u8], page: &mut [u8]) -> bool {
    let (mut at, mut i) = (0, 0);
    while at < delta.len() {
        let (Some(zrun), Some(nzrun)) = (get_uleb(delta, &mut at), get_uleb(delta, &mut at)) else {
            return false;
        };
        i += zrun;
        let (Some(src), Some(dst)) = (delta.get(at..at + nzrun), page.get_mut(i..i + nzrun)) else {
            return false;
        };
        dst.copy_from_slice(src);
        at += nzrun;
        i += nzrun;
    }
    true
}

impl Xbzrle {
    /// A cache of `cache_size` bytes (whole pages, at least one).
    pub fn new(cache_size: u64) -> Xbzrle {
        let slots = (cache_size / PAGE as u64).max(1) as usize;
        Xbzrle {
            slots: (0..slots).map(|_| None).collect(),
            copy: vec![0; PAGE],
            delta: Vec::with_capacity(PAGE),
            pages: 0,
            bytes: 0,
            cache_miss: 0,
            overflow: 0,
        }
    }

    fn slot(&self, page: u64) -> usize {
        (page % self.slots.len() as u64) as usize
    }

    /// How page `page`, now `content` (live guest memory), goes out.
    pub fn encode(&mut self, page: u64, content: &[u8]) -> Encoded<'_> {
        // One copy: the guest may write the page while we look at it, and what is
        // cached must be exactly what is sent.
        self.copy.copy_from_slice(content);
        let s = self.slot(page);
        let delta = match &self.slots[s] {
            Some(slot) if slot.page == page => {
                self.pages += 1;
                let fits = encode(&slot.data, &self.copy, &mut self.delta, MAX_DELTA).is_some();
                if !fits {
                    self.overflow += 1;
                    self.bytes += PAGE as u64;
                }
                fits
            }
            _ => {
                self.cache_miss += 1;
                false
            }
        };
        if delta && self.delta.is_empty() {
            return Encoded::Unchanged;
        }
        let entry = self.slots[s].get_or_insert_with(|| Slot {
            page,
            data: vec![0; PAGE].into_boxed_slice(),
        });
        entry.page = page;
        entry.data.copy_from_slice(&self.copy);
        if delta {
            self.bytes += self.delta.len() as u64 + DELTA_HEADER;
            Encoded::Delta(&self.delta)
        } else {
            Encoded::Whole(&entry.data)
        }
    }

    /// Page `first`.. (`count` pages) went as zero pages: the cache forgets them.
    pub fn forget(&mut self, first: u64, count: u64) {
        for page in first..first + count {
            let s = self.slot(page);
            if self.slots[s].as_ref().is_some_and(|e| e.page == page) {
                self.slots[s] = None;
            }
        }
    }

    /// Adds the counters since the last call to `report`.
    pub fn take_counters(&mut self, report: &mut PassReport) {
        report.xbzrle_pages += std::mem::take(&mut self.pages);
        report.xbzrle_bytes += std::mem::take(&mut self.bytes);
        report.xbzrle_cache_miss += std::mem::take(&mut self.cache_miss);
        report.xbzrle_overflow += std::mem::take(&mut self.overflow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_round_trip() {
        let old = vec![0u8; PAGE];
        let mut new = old.clone();
        new[10] = 1;
        new[11] = 2;
        new[4000] = 9;
        let mut delta = Vec::new();
        encode(&old, &new, &mut delta, MAX_DELTA).unwrap();
        assert!(delta.len() < 16);
        let mut page = old.clone();
        assert!(decode(&delta, &mut page));
        assert_eq!(page, new);
    }

    /// The delta as the plain byte-by-byte walk makes it.
    fn bytewise(old: &[u8], new: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < new.len() {
            let zrun = (i..new.len()).take_while(|&j| old[j] == new[j]).count();
            i += zrun;
            if i == new.len() {
                break;
            }
            let nzrun = (i..new.len()).take_while(|&j| old[j] != new[j]).count();
            put_uleb(&mut out, zrun);
            put_uleb(&mut out, nzrun);
            out.extend_from_slice(&new[i..i + nzrun]);
            i += nzrun;
        }
        out
    }

    #[test]
    fn word_runs_find_what_bytes_find() {
        // Pages changed at random places, in runs of random lengths, some bytes changed
        // to what they were (a changed word with an equal byte inside).
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut delta = Vec::new();
        for _ in 0..500 {
            let old: Vec<u8> = (0..PAGE).map(|_| next() as u8).collect();
            let mut new = old.clone();
            for _ in 0..next() % 40 {
                let at = (next() % PAGE as u64) as usize;
                let len = (next() % 300) as usize;
                for b in new.iter_mut().skip(at).take(len) {
                    *b = if next() % 16 == 0 { *b } else { next() as u8 };
                }
            }
            match encode(&old, &new, &mut delta, PAGE * 3) {
                Some(()) => assert_eq!(delta, bytewise(&old, &new)),
                None => panic!("a delta longer than three pages"),
            }
            let mut page = old.clone();
            assert!(decode(&delta, &mut page));
            assert_eq!(page, new);
        }
    }

    #[test]
    fn big_changes_overflow_and_bad_deltas_are_refused() {
        let old = vec![0u8; PAGE];
        let new: Vec<u8> = (0..PAGE).map(|i| (i % 251) as u8 | 1).collect();
        let mut delta = Vec::new();
        assert!(encode(&old, &new, &mut delta, MAX_DELTA).is_none());
        let mut page = vec![0u8; PAGE];
        // A run past the page's end.
        let mut bad = Vec::new();
        put_uleb(&mut bad, PAGE);
        put_uleb(&mut bad, 4);
        bad.extend_from_slice(&[1, 2, 3, 4]);
        assert!(!decode(&bad, &mut page));
        // A length that never ends.
        assert!(!decode(&[0x80, 0x80, 0x80, 0x80], &mut page));
    }

    fn sent(e: Encoded) -> &'static str {
        match e {
            Encoded::Unchanged => "nothing",
            Encoded::Delta(d) if d.len() < 8 => "a delta",
            Encoded::Delta(_) => "a long delta",
            Encoded::Whole(_) => "whole",
        }
    }

    #[test]
    fn the_cache_sends_whole_then_deltas() {
        let mut x = Xbzrle::new(4 * PAGE as u64);
        let mut content = vec![5u8; PAGE];
        assert_eq!(sent(x.encode(3, &content)), "whole");
        content[7] = 6;
        assert_eq!(sent(x.encode(3, &content)), "a delta");
        // The cache holds what was sent: unchanged since, nothing goes.
        assert_eq!(sent(x.encode(3, &content)), "nothing");
        content[8] = 6;
        match x.encode(3, &content) {
            Encoded::Delta(d) => assert_eq!(d, [8, 1, 6]),
            _ => panic!("expected a delta"),
        }
        // A delta too long: the page goes whole, and is cached.
        content.fill(9);
        assert_eq!(sent(x.encode(3, &content)), "whole");
        assert_eq!(sent(x.encode(3, &content)), "nothing");
        // Page 7 maps to the same slot (4 slots) and evicts page 3.
        assert_eq!(sent(x.encode(7, &content)), "whole");
        assert_eq!(sent(x.encode(3, &content)), "whole");
        // Zero pages are forgotten: the destination has zeros there now.
        x.forget(2, 2);
        assert_eq!(sent(x.encode(3, &content)), "whole");
        let mut r = PassReport::default();
        x.take_counters(&mut r);
        // Hits: two deltas (3 bytes and 3 of header each), two unchanged, one overflow
        // (a page).
        assert_eq!(
            (r.xbzrle_pages, r.xbzrle_bytes, r.xbzrle_overflow),
            (5, 12 + PAGE as u64, 1)
        );
        assert_eq!(r.xbzrle_cache_miss, 4);
    }
}
