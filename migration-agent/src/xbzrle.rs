//! XBZRLE (QMP's xbzrle capability): a page the cache holds from an earlier pass is sent
//! as the difference from that copy, which is what the destination's memory holds. The
//! difference is a sequence of (unchanged run, changed run + its new bytes), each length
//! a ULEB128, as QEMU encodes it. The cache is direct-mapped (page number modulo its
//! slots) and bounded by xbzrle-cache-size; a page sent whole is cached as the very
//! bytes sent, so a later delta is against exactly what the destination has.

use ipc::PassReport;

use crate::stream::PAGE;

/// A delta longer than this goes whole (QEMU's threshold is the same idea: a delta
/// that saves too little is not worth the destination's work).
const MAX_DELTA: usize = PAGE - PAGE / 8;

pub enum Encoded<'a> {
    Delta(&'a [u8]),
    /// Send this copy whole (it is cached).
    Whole(&'a [u8]),
}

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

/// The delta from `old` to `new` into `out`; None when it would be longer than `max`.
pub fn encode(old: &[u8], new: &[u8], out: &mut Vec<u8>, max: usize) -> Option<()> {
    out.clear();
    let mut i = 0;
    while i < new.len() {
        let zrun = old[i..]
            .iter()
            .zip(&new[i..])
            .take_while(|(a, b)| a == b)
            .count();
        i += zrun;
        if i == new.len() {
            // A trailing unchanged run is implied.
            break;
        }
        let nzrun = old[i..]
            .iter()
            .zip(&new[i..])
            .take_while(|(a, b)| a != b)
            .count();
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
        let hit = match &self.slots[s] {
            Some(slot) if slot.page == page => {
                let fits = encode(&slot.data, &self.copy, &mut self.delta, MAX_DELTA).is_some();
                if !fits {
                    self.overflow += 1;
                }
                fits
            }
            _ => {
                self.cache_miss += 1;
                false
            }
        };
        let entry = self.slots[s].get_or_insert_with(|| Slot {
            page,
            data: vec![0; PAGE].into_boxed_slice(),
        });
        if hit {
            entry.data.copy_from_slice(&self.copy);
            self.pages += 1;
            self.bytes += self.delta.len() as u64;
            Encoded::Delta(&self.delta)
        } else {
            entry.page = page;
            entry.data.copy_from_slice(&self.copy);
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

    #[test]
    fn the_cache_sends_whole_then_deltas() {
        let mut x = Xbzrle::new(4 * PAGE as u64);
        let mut content = vec![5u8; PAGE];
        assert!(matches!(x.encode(3, &content), Encoded::Whole(_)));
        content[7] = 6;
        match x.encode(3, &content) {
            Encoded::Delta(d) => assert!(d.len() < 8),
            Encoded::Whole(_) => panic!("expected a delta"),
        }
        // Page 7 maps to the same slot (4 slots) and evicts page 3.
        assert!(matches!(x.encode(7, &content), Encoded::Whole(_)));
        assert!(matches!(x.encode(3, &content), Encoded::Whole(_)));
        let mut r = PassReport::default();
        x.take_counters(&mut r);
        assert_eq!((r.xbzrle_pages, r.xbzrle_cache_miss), (1, 3));
    }
}
