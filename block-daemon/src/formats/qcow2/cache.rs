//! A bounded least-recently-used cache of metadata tables (L2 tables, refcount blocks),
//! each one cluster, keyed by its offset in the image. Writes go through to the file at
//! once (see `meta`), so an entry is never dirty and eviction just drops it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a table's offset with one multiplication. The default
/// SipHash showed in profiles of reads served from the page cache; its resistance to
/// chosen keys buys nothing here, where a cache holds at most `capacity` tables, so a
/// crafted image's colliding offsets cost a probe over at most that many.
#[derive(Default)]
pub struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        // The high and low halves of the full product folded together: offsets are
        // cluster-aligned (low bits 0), and the table picks buckets by its low bits.
        let m = u128::from(self.0 ^ x) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (m >> 64) as u64 ^ m as u64;
    }
}

/// A lookup (the request path's every map) is one hash lookup and a store of the
/// entry's age; only an insert into a full cache looks for the oldest entry (a scan:
/// it comes with reading a table from the file, which costs far more).
#[derive(Debug)]
pub struct TableCache {
    capacity: usize,
    tick: u64,
    tables: HashMap<u64, (u64, Vec<u8>), BuildHasherDefault<OffsetHasher>>,
}

impl TableCache {
    /// A cache of at most `capacity` tables (at least 2: a lookup may need two at once).
    pub fn new(capacity: usize) -> TableCache {
        TableCache {
            capacity: capacity.max(2),
            tick: 0,
            tables: HashMap::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Whether the table at `offset` is cached (a lookup of it would read no file).
    pub fn contains(&self, offset: u64) -> bool {
        self.tables.contains_key(&offset)
    }

    /// The table at `offset`, marked as just used.
    pub fn get_mut(&mut self, offset: u64) -> Option<&mut Vec<u8>> {
        self.tick += 1;
        let tick = self.tick;
        self.tables.get_mut(&offset).map(|(age, t)| {
            *age = tick;
            t
        })
    }

    /// Adds (or replaces) the table at `offset`, evicting the least recently used.
    pub fn insert(&mut self, offset: u64, table: Vec<u8>) -> &mut Vec<u8> {
        self.remove(offset);
        while self.tables.len() >= self.capacity {
            let Some(victim) = self
                .tables
                .iter()
                .min_by_key(|(_, (age, _))| *age)
                .map(|(off, _)| *off)
            else {
                break;
            };
            self.tables.remove(&victim);
        }
        self.tick += 1;
        let slot = self.tables.entry(offset).or_insert((self.tick, Vec::new()));
        slot.1 = table;
        &mut slot.1
    }

    pub fn remove(&mut self, offset: u64) {
        self.tables.remove(&offset);
    }

    pub fn clear(&mut self) {
        self.tables.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::{BuildHasherDefault, OffsetHasher, TableCache};

    #[test]
    fn aligned_offsets_spread_over_the_low_bits_buckets_are_picked_by() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<OffsetHasher>::default();
        let buckets: std::collections::HashSet<u64> = (0..1024u64)
            .map(|k| build.hash_one(k << 16) & 1023)
            .collect();
        // Random hashes would fill about 647 of the 1024 (1 - 1/e).
        assert!(buckets.len() > 550, "{} buckets of 1024", buckets.len());
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = TableCache::new(2);
        c.insert(0, vec![0]);
        c.insert(512, vec![1]);
        assert!(c.get_mut(0).is_some()); // 512 is now the oldest
        c.insert(1024, vec![2]);
        assert_eq!(c.len(), 2);
        assert!(c.get_mut(512).is_none());
        assert_eq!(c.get_mut(0).map(|t| t[0]), Some(0));
        assert_eq!(c.get_mut(1024).map(|t| t[0]), Some(2));
    }
}
