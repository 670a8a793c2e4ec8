//! L1 and L2 tables: what an L2 entry means, looking a guest cluster up, and the
//! changes a write needs (a new L2 table, a copy of an L2 table a snapshot shares, one
//! entry updated, a larger L1 table).

use crate::formats::qcow2::compressed;
use crate::formats::qcow2::layout::{
    put32, put64, L1E_OFFSET_MASK, L2E_OFFSET_MASK, L2E_STD_RESERVED, MAX_L1_BYTES, OFF_L1_SIZE,
    OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO,
};
use crate::formats::qcow2::meta::Meta;
use crate::formats::FormatError;

/// A number as C's "%#x" prints it (QEMU's texts): "0" for zero, else "0x...".
pub fn c_hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

/// What an L2 entry says about its guest cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Nothing here: the backing file's bytes, or zeroes.
    Unallocated,
    /// Reads as zeroes (v3), no host cluster.
    Zero,
    /// Reads as zeroes, a host cluster kept allocated for it.
    ZeroAlloc {
        offset: u64,
        copied: bool,
    },
    Normal {
        offset: u64,
        copied: bool,
    },
    /// The raw entry (its descriptor decodes with `compressed::host_range`).
    Compressed {
        entry: u64,
    },
}

impl Meta {
    /// QEMU's text for a table offset that is unaligned, or (stricter than QEMU, which
    /// reads zeroes there) lies outside the image.
    pub fn bad_table_offset(&self, what: &str, off: u64, index_name: &str, index: u64) -> String {
        let why = if off & (self.cluster_size() - 1) != 0 {
            "unaligned"
        } else {
            "outside the image"
        };
        format!(
            "{what} offset {off:#x} {why} ({index_name} index: {})",
            c_hex(index)
        )
    }

    /// Decodes entry `index` of the L2 table at `l2`, signalling corruption with
    /// QEMU's texts for entries it cannot use (unaligned offsets, zero flags in v2
    /// images).
    pub fn classify(&mut self, entry: u64, l2: u64, index: u64) -> Result<Cluster, FormatError> {
        if entry & OFLAG_COMPRESSED != 0 {
            return Ok(Cluster::Compressed { entry });
        }
        let offset = entry & L2E_OFFSET_MASK;
        let copied = entry & OFLAG_COPIED != 0;
        // Only a corrupt entry needs it: formatted per lookup, it was 5% of a queue
        // thread's time serving reads from the page cache.
        let at = || format!("(L2 offset: {}, L2 index: {})", c_hex(l2), c_hex(index));
        if offset & (self.cluster_size() - 1) != 0 {
            return Err(self.signal_corruption(format!(
                "Cluster allocation offset {offset:#x} unaligned {}",
                at()
            )));
        }
        if entry & L2E_STD_RESERVED != 0 {
            return Err(self.signal_corruption(format!(
                "L2 entry {entry:#x} has reserved bits set {}",
                at()
            )));
        }
        if entry & OFLAG_ZERO != 0 {
            if self.version < 3 {
                return Err(self.signal_corruption(format!(
                    "Zero cluster entry found in pre-v3 image {}",
                    at()
                )));
            }
            return Ok(if offset == 0 {
                Cluster::Zero
            } else {
                Cluster::ZeroAlloc { offset, copied }
            });
        }
        Ok(if offset == 0 {
            Cluster::Unallocated
        } else {
            Cluster::Normal { offset, copied }
        })
    }

    /// The L2 table holding guest cluster `gc`'s entry, if one is allocated.
    pub fn l2_offset(&mut self, gc: u64) -> Result<Option<(u64, bool)>, FormatError> {
        let l1i = gc / self.l2_entries();
        let Some(&l1e) = self.l1.get(l1i as usize) else {
            return Ok(None);
        };
        let off = l1e & L1E_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if !self.valid_table_offset(off) {
            let msg = self.bad_table_offset("L2 table", off, "L1", l1i);
            return Err(self.signal_corruption(msg));
        }
        Ok(Some((off, l1e & OFLAG_COPIED != 0)))
    }

    /// The raw L2 entry of guest cluster `gc` (0 where no L2 table exists) and its
    /// meaning.
    pub fn lookup_raw(&mut self, gc: u64) -> Result<(u64, Cluster), FormatError> {
        let Some((off, _)) = self.l2_offset(gc)? else {
            return Ok((0, Cluster::Unallocated));
        };
        let index = gc % self.l2_entries();
        let idx = index as usize * 8;
        let t = self.l2_table(off)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&t[idx..idx + 8]);
        let raw = u64::from_be_bytes(b);
        Ok((raw, self.classify(raw, off, index)?))
    }

    /// The guest cluster's state.
    pub fn lookup(&mut self, gc: u64) -> Result<Cluster, FormatError> {
        Ok(self.lookup_raw(gc)?.1)
    }

    /// The L2 table a write to guest cluster `gc` may change: allocated, or copied
    /// when a snapshot shares it.
    pub fn l2_for_write(&mut self, gc: u64) -> Result<u64, FormatError> {
        let l1i = gc / self.l2_entries();
        if l1i as usize >= self.l1.len() {
            return Err(FormatError::Invalid(format!(
                "guest cluster {gc:#x} lies beyond the L1 table"
            )));
        }
        let old = self.l2_offset(gc)?;
        if let Some((off, true)) = old {
            return Ok(off);
        }
        let cs = self.cluster_size();
        let table = match old {
            Some((off, _)) => self.l2_table(off)?.clone(),
            None => vec![0u8; cs as usize],
        };
        let new = self.alloc_clusters(1)?;
        self.check_overlap(new, cs)?;
        self.write(new, &table)?;
        self.metadata.insert(self.cluster_of(new));
        self.l2_cache.insert(new, table);
        // The table's contents before the L1 entry that names it.
        self.sync()?;
        self.set_l1_entry(l1i, new | OFLAG_COPIED)?;
        if let Some((off, _)) = old {
            self.l2_cache.remove(off);
            // Still a snapshot's: it stays protected from data writes until its last
            // reference goes.
            self.release_later(self.cluster_of(off), 1)?;
        }
        Ok(new)
    }

    pub fn set_l1_entry(&mut self, l1i: u64, value: u64) -> Result<(), FormatError> {
        let mut b = [0u8; 8];
        put64(&mut b, 0, value);
        self.write(self.l1_offset + l1i * 8, &b)?;
        self.l1[l1i as usize] = value;
        Ok(())
    }

    /// Writes entry `idx` of the L2 table at `table`.
    pub fn set_l2_entry(&mut self, table: u64, gc: u64, value: u64) -> Result<(), FormatError> {
        let idx = (gc % self.l2_entries()) as usize * 8;
        let t = self.l2_table(table)?;
        put64(t, idx, value);
        let sector = sector_of(t, idx, 8);
        if let Err(e) = self.write(table + (idx & !511) as u64, &sector) {
            // The cached table no longer matches the file: read it again next time.
            self.l2_cache.remove(table);
            return Err(e);
        }
        Ok(())
    }

    /// Drops the host clusters an entry held (after the entry stopped naming them; see
    /// `release_later`).
    pub fn release_entry(&mut self, cluster: Cluster) -> Result<(), FormatError> {
        match cluster {
            Cluster::Normal { offset, .. } | Cluster::ZeroAlloc { offset, .. } => {
                self.release_later(self.cluster_of(offset), 1)
            }
            Cluster::Compressed { entry } => {
                let (first, n) = compressed::host_clusters(entry, self.cluster_bits);
                self.release_later(first, n)
            }
            Cluster::Unallocated | Cluster::Zero => Ok(()),
        }
    }

    /// Makes the L1 table hold at least `entries` entries (moved to new clusters).
    pub fn grow_l1(&mut self, entries: u64) -> Result<(), FormatError> {
        if entries <= self.l1.len() as u64 {
            return Ok(());
        }
        if entries * 8 > MAX_L1_BYTES {
            return Err(FormatError::Invalid("Active L1 table too large".into()));
        }
        let cs = self.cluster_size();
        let clusters = (entries * 8).div_ceil(cs);
        let new = self.alloc_clusters(clusters)?;
        self.check_overlap(new, clusters * cs)?;
        let mut bytes = vec![0u8; (clusters * cs) as usize];
        for (i, e) in self.l1.iter().enumerate() {
            put64(&mut bytes, i * 8, *e);
        }
        self.write(new, &bytes)?;
        self.sync()?;
        let mut h = [0u8; 12];
        put32(&mut h, 0, entries as u32);
        put64(&mut h, 4, new);
        self.write(OFF_L1_SIZE, &h)?;
        self.sync()?;
        let old_clusters = (self.l1.len() as u64 * 8).div_ceil(cs);
        let old_first = self.cluster_of(self.l1_offset);
        self.l1.resize(entries as usize, 0);
        self.l1_offset = new;
        for c in self.cluster_of(new)..self.cluster_of(new) + clusters {
            self.metadata.insert(c);
        }
        for c in old_first..old_first + old_clusters {
            self.metadata.remove(&c);
            self.add_refcount(c, -1)?;
        }
        Ok(())
    }
}

/// The 512-byte sector of `table` holding bytes `at..at + len` (fewer at its end): a
/// change written as a whole sector from the cached table needs no read first with
/// O_DIRECT, and a sector is what a disk writes at once.
pub fn sector_of(table: &[u8], at: usize, len: usize) -> Vec<u8> {
    let start = at & !511;
    let end = (at + len).next_multiple_of(512).min(table.len());
    table[start..end].to_vec()
}
