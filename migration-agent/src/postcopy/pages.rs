//! A set of guest page numbers, one bit each: postcopy's pages still to send (source)
//! and pages received or asked for (destination).

#[derive(Clone, Debug, Default)]
pub struct PageSet {
    words: Vec<u64>,
    count: u64,
}

impl PageSet {
    /// An empty set for page numbers below `end`.
    pub fn new(end: u64) -> PageSet {
        PageSet {
            words: vec![0; end.div_ceil(64) as usize],
            count: 0,
        }
    }

    /// One past the highest page number the set can hold.
    pub fn end(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    pub fn contains(&self, page: u64) -> bool {
        self.words
            .get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    /// Adds `page`; false if it was there already or is beyond the set's end.
    pub fn insert(&mut self, page: u64) -> bool {
        match self.words.get_mut((page / 64) as usize) {
            Some(w) if *w & (1 << (page % 64)) == 0 => {
                *w |= 1 << (page % 64);
                self.count += 1;
                true
            }
            _ => false,
        }
    }

    /// Takes `page` out; false if it was not there.
    pub fn remove(&mut self, page: u64) -> bool {
        match self.words.get_mut((page / 64) as usize) {
            Some(w) if *w & (1 << (page % 64)) != 0 => {
                *w &= !(1 << (page % 64));
                self.count -= 1;
                true
            }
            _ => false,
        }
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The first page in the set at or after `from`, wrapping around to the start.
    pub fn next_from(&self, from: u64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let start = (from / 64) as usize;
        let n = self.words.len();
        for k in 0..=n {
            let i = (start + k) % n;
            let mut w = self.words[i];
            if k == 0 {
                // Only the bits at or above `from` in its own word, the first time.
                w &= u64::MAX.checked_shl((from % 64) as u32).unwrap_or(0);
            }
            if w != 0 {
                return Some(i as u64 * 64 + u64::from(w.trailing_zeros()));
            }
        }
        None
    }

    /// The set as runs of consecutive pages (first, count), each at most `max` long.
    pub fn runs(&self, max: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, &w) in self.words.iter().enumerate() {
            let mut bits = w;
            while bits != 0 {
                let page = i as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                match out.last_mut() {
                    Some((first, count)) if *first + *count == page && *count < max => *count += 1,
                    _ => out.push((page, 1)),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_counts_finds_and_runs() {
        let mut s = PageSet::new(200);
        assert_eq!(s.end(), 256);
        assert!(s.insert(3) && s.insert(4) && s.insert(5) && s.insert(70) && s.insert(199));
        assert!(!s.insert(4), "twice");
        assert!(!s.insert(256), "beyond the end");
        assert_eq!(s.len(), 5);
        assert_eq!(s.next_from(0), Some(3));
        assert_eq!(s.next_from(6), Some(70));
        assert_eq!(s.next_from(71), Some(199));
        assert_eq!(s.next_from(200), Some(3), "wraps around");
        assert_eq!(s.runs(2), [(3, 2), (5, 1), (70, 1), (199, 1)]);
        assert!(s.remove(4) && !s.remove(4));
        assert_eq!(s.runs(64), [(3, 1), (5, 1), (70, 1), (199, 1)]);
        for p in [3, 5, 70, 199] {
            s.remove(p);
        }
        assert!(s.is_empty());
        assert_eq!(s.next_from(10), None);
    }
}
