//! Repair of an image opened with the dirty bit set (lazy refcounts left refcounts
//! behind after a crash): every refcount is rebuilt from what references it (header,
//! L1/L2 tables of the active state and every snapshot, refcount table and blocks,
//! snapshot table), as `qemu-img check -r all` does, the active tables' COPIED flags
//! are made to match, then the dirty bit is cleared.
//!
//! Work is bounded by the file: each distinct L1 and L2 table is read once (a table
//! shared by several L1 tables counts its references once per L1 reaching it, QEMU's
//! snapshot refcount rule, without being walked again).

use std::collections::HashMap;

use crate::formats::qcow2::compressed;
use crate::formats::qcow2::layout::{
    be64, refcount_max, INCOMPAT_DIRTY, L1E_OFFSET_MASK, REFT_OFFSET_MASK,
};
use crate::formats::qcow2::meta::Meta;
use crate::formats::qcow2::tables::Cluster;
use crate::formats::FormatError;

/// Clusters a repair may track (a 512 MiB count array at most).
const MAX_REPAIR_CLUSTERS: u64 = 1 << 27;

struct Counts {
    want: Vec<u32>,
    cluster_bits: u32,
    /// Clusters of the file: a reference past them is corruption.
    limit: u64,
}

impl Counts {
    fn add(&mut self, offset: u64, len: u64, times: u32) -> Result<(), FormatError> {
        if len == 0 {
            return Ok(());
        }
        let first = offset >> self.cluster_bits;
        let last = (offset + len - 1) >> self.cluster_bits;
        if last >= self.limit {
            return Err(FormatError::Corrupt(format!(
                "qcow2: a reference to {offset:#x} lies beyond the end of the image; cannot repair"
            )));
        }
        if last as usize >= self.want.len() {
            self.want.resize(last as usize + 1, 0);
        }
        for c in first..=last {
            self.want[c as usize] = self.want[c as usize].saturating_add(times);
        }
        Ok(())
    }
}

impl Meta {
    /// Rebuilds the refcounts and clears the dirty bit.
    pub fn repair(&mut self) -> Result<(), FormatError> {
        if self.header.bitmaps.is_some() {
            return Err(FormatError::Unsupported(
                "qcow2: cannot repair a dirty image that has persistent bitmaps".into(),
            ));
        }
        log::warn!("qcow2: image was not closed cleanly; repairing refcounts");
        let cs = self.cluster_size();
        let limit = self.file_size.div_ceil(cs);
        if limit > MAX_REPAIR_CLUSTERS {
            return Err(FormatError::Unsupported(
                "qcow2: image too large to repair its refcounts".into(),
            ));
        }
        let mut n = Counts {
            want: Vec::new(),
            cluster_bits: self.cluster_bits,
            limit,
        };
        n.add(0, cs, 1)?;
        n.add(self.reftable_offset, self.reftable_clusters * cs, 1)?;
        for e in self.reftable.clone() {
            let off = e & REFT_OFFSET_MASK;
            if off != 0 {
                n.add(off, cs, 1)?;
            }
        }
        n.add(self.snapshots_offset, self.snapshots_size, 1)?;
        // Distinct L1 tables and how many L1s (active, snapshots) each stands for.
        let mut l1s: HashMap<(u64, u64), u32> = HashMap::new();
        *l1s.entry((self.l1_offset, self.l1.len() as u64))
            .or_default() += 1;
        for s in &self.snapshots {
            *l1s.entry((s.l1_table_offset, u64::from(s.l1_size)))
                .or_default() += 1;
        }
        let mut l2s: HashMap<u64, u32> = HashMap::new();
        for (&(off, entries), &times) in &l1s {
            n.add(off, entries * 8, times)?;
            let mut table = vec![0u8; (entries * 8) as usize];
            self.read(off, &mut table, "L1 table")?;
            for i in 0..entries as usize {
                let l2 = be64(&table, i * 8) & L1E_OFFSET_MASK;
                if l2 != 0 {
                    if !self.valid_table_offset(l2) {
                        let msg = self.bad_table_offset("L2 table", l2, "L1", i as u64);
                        return Err(FormatError::Corrupt(msg));
                    }
                    *l2s.entry(l2).or_default() += times;
                }
            }
        }
        let mut table = vec![0u8; cs as usize];
        for (&off, &times) in &l2s {
            n.add(off, cs, times)?;
            self.read(off, &mut table, "L2 table")?;
            for i in 0..self.l2_entries() as usize {
                let e = be64(&table, i * 8);
                match self.classify(e, off, i as u64) {
                    Ok(Cluster::Normal { offset, .. }) | Ok(Cluster::ZeroAlloc { offset, .. }) => {
                        n.add(offset, cs, times)?
                    }
                    Ok(Cluster::Compressed { entry }) => {
                        let (first, count) = compressed::host_clusters(entry, self.cluster_bits);
                        n.add(
                            first << self.cluster_bits,
                            count << self.cluster_bits,
                            times,
                        )?
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let want = n.want;
        let max = refcount_max(self.refcount_order);
        // Entries past everything referenced: leaks to drop (before anything is
        // allocated below, which lands past them).
        let per_block = self.rb_entries();
        for b in 0..self.reftable.len() as u64 {
            if self.reftable[b as usize] & REFT_OFFSET_MASK == 0 {
                continue;
            }
            for c in (b * per_block).max(want.len() as u64)..(b + 1) * per_block {
                if self.refcount(c)? != 0 {
                    self.set_refcount(c, 0)?;
                }
            }
        }
        self.free_hint = want.len() as u64;
        self.alloc_end = self.alloc_end.max(want.len() as u64);
        for (c, &w) in want.iter().enumerate() {
            let w = u64::from(w).min(max);
            if self.refcount(c as u64)? != w {
                self.set_refcount(c as u64, w)?;
            }
        }
        self.free_hint = 0;
        // COPIED flags that disagree with the refcounts now on disk are set right, as
        // qemu-img check -r all does.
        let active = self.l1.clone();
        self.update_snapshot_refcount(&active, 0, true)?;
        self.sync()?;
        self.write_incompatible(self.incompatible & !INCOMPAT_DIRTY)?;
        self.sync()?;
        self.header.incompatible_features &= !INCOMPAT_DIRTY;
        self.collect_metadata();
        Ok(())
    }
}
