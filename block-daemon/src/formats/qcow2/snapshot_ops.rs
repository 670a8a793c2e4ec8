//! Internal snapshots of an open image: create (copy the active L1 table, add one
//! reference to every cluster it reaches, clear the COPIED flags that no longer hold,
//! write a new snapshot table) and delete (drop the snapshot's references, free what
//! nobody holds any more, set COPIED again where a cluster became exclusive). Writes to
//! shared clusters then copy on write (see `image`).
//!
//! What the caller must do: quiesce the device (no request in flight, no mapping held)
//! during create and delete, since clusters a write mapping named may become shared;
//! both refuse to run while a mapping is held. Order on disk (QEMU's): new L1 copy and
//! refcounts first, the snapshot table next, the header last; a crash in between leaks
//! clusters at most.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::formats::qcow2::compressed;
use crate::formats::qcow2::layout::{
    be64, put32, put64, refcount_max, L1E_OFFSET_MASK, MAX_SNAPSHOTS, OFF_NB_SNAPSHOTS,
    OFLAG_COMPRESSED, OFLAG_COPIED,
};
use crate::formats::qcow2::meta::Meta;
use crate::formats::qcow2::snapshot::{encode, SnapshotInfo};
use crate::formats::qcow2::tables::Cluster;
use crate::formats::FormatError;

/// What a new snapshot records besides the disk state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewSnapshot {
    /// None: the next free numeric id, as QEMU picks it.
    pub id: Option<String>,
    pub name: String,
    pub vm_state_size: u64,
    pub vm_clock_nsec: u64,
    pub icount: Option<u64>,
}

impl Meta {
    fn quiesced(&mut self) -> Result<(), FormatError> {
        if self.mapped.in_flight() > 0 {
            return Err(FormatError::Invalid(
                "qcow2: snapshots need the device quiesced (requests are in flight)".into(),
            ));
        }
        self.begin_change()?;
        // Refcounts exact before they are copied or compared.
        self.sync()?;
        self.apply_pending_frees()
    }

    /// Adds `addend` (+1, -1 or 0) to every cluster the L1 table `l1` reaches, and
    /// sets the COPIED flags in its L2 tables to match the refcounts that result
    /// (QEMU's qcow2_update_snapshot_refcount). `active`: `l1` is the active L1 table,
    /// whose own COPIED flags are updated too.
    pub fn update_snapshot_refcount(
        &mut self,
        l1: &[u64],
        addend: i64,
        active: bool,
    ) -> Result<(), FormatError> {
        for (i, &l1e) in l1.iter().enumerate() {
            let l2 = l1e & L1E_OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if !self.valid_table_offset(l2) {
                let msg = self.bad_table_offset("L2 table", l2, "L1", i as u64);
                return Err(self.signal_corruption(msg));
            }
            let mut table = self.l2_table(l2)?.clone();
            let mut changed = false;
            for j in 0..self.l2_entries() as usize {
                let e = be64(&table, j * 8);
                let refcount = match self.classify(e, l2, j as u64)? {
                    Cluster::Compressed { entry } => {
                        if addend != 0 {
                            let (first, n) = compressed::host_clusters(entry, self.cluster_bits);
                            for c in first..first + n {
                                self.add_refcount(c, addend)?;
                            }
                        }
                        2 // compressed clusters never carry COPIED
                    }
                    Cluster::Normal { offset, .. } | Cluster::ZeroAlloc { offset, .. } => {
                        let c = self.cluster_of(offset);
                        if addend != 0 {
                            self.add_refcount(c, addend)?
                        } else {
                            self.refcount(c)?
                        }
                    }
                    Cluster::Zero | Cluster::Unallocated => 0,
                };
                let want = if refcount == 1 {
                    e | OFLAG_COPIED
                } else if e & OFLAG_COMPRESSED == 0 {
                    e & !OFLAG_COPIED
                } else {
                    e
                };
                if want != e {
                    put64(&mut table, j * 8, want);
                    changed = true;
                }
            }
            let c = self.cluster_of(l2);
            let refcount = if addend != 0 {
                self.add_refcount(c, addend)?
            } else {
                self.refcount(c)?
            };
            if refcount == 0 {
                self.l2_cache.remove(l2);
            } else if changed {
                self.write(l2, &table)?;
                self.l2_cache.insert(l2, table);
            }
            let want = if refcount == 1 {
                l1e | OFLAG_COPIED
            } else {
                l1e & !OFLAG_COPIED
            };
            if want != l1e && active {
                self.set_l1_entry(i as u64, want)?;
            }
        }
        Ok(())
    }

    /// Fails, before anything changes, when one more reference to the clusters `l1`
    /// reaches would not fit the refcount width (QEMU fails half-way instead).
    fn check_headroom(&mut self, l1: &[u64]) -> Result<(), FormatError> {
        let max = refcount_max(self.refcount_order);
        let mut seen = std::collections::HashSet::new();
        for (i, &l1e) in l1.iter().enumerate() {
            let l2 = l1e & L1E_OFFSET_MASK;
            if l2 == 0 || !seen.insert(l2) {
                continue;
            }
            if !self.valid_table_offset(l2) {
                let msg = self.bad_table_offset("L2 table", l2, "L1", i as u64);
                return Err(self.signal_corruption(msg));
            }
            let mut clusters = vec![self.cluster_of(l2)];
            let table = self.l2_table(l2)?.clone();
            for j in 0..self.l2_entries() as usize {
                match self.classify(be64(&table, j * 8), l2, j as u64)? {
                    Cluster::Normal { offset, .. } | Cluster::ZeroAlloc { offset, .. } => {
                        clusters.push(self.cluster_of(offset))
                    }
                    Cluster::Compressed { entry } => {
                        let (first, n) = compressed::host_clusters(entry, self.cluster_bits);
                        clusters.extend(first..first + n);
                    }
                    Cluster::Zero | Cluster::Unallocated => {}
                }
            }
            for c in clusters {
                if self.refcount(c)? >= max {
                    return Err(FormatError::Invalid(format!(
                        "qcow2: cluster {:#x} cannot take another reference ({}-bit refcounts)",
                        c << self.cluster_bits,
                        1u32 << self.refcount_order
                    )));
                }
            }
        }
        Ok(())
    }

    /// A snapshot's L1 table.
    fn read_l1(&self, offset: u64, entries: u32) -> Result<Vec<u64>, FormatError> {
        let mut b = vec![0u8; entries as usize * 8];
        self.read(offset, &mut b, "Snapshot L1 table")?;
        Ok((0..entries as usize).map(|i| be64(&b, i * 8)).collect())
    }

    /// Writes `snaps` as the new snapshot table and points the header at it.
    fn write_snapshot_table(&mut self, snaps: Vec<SnapshotInfo>) -> Result<(), FormatError> {
        let cs = self.cluster_size();
        let bytes = encode(&snaps);
        let clusters = (bytes.len() as u64).div_ceil(cs);
        let offset = if clusters == 0 {
            0
        } else {
            let off = self.alloc_clusters(clusters)?;
            self.check_overlap(off, clusters * cs)?;
            self.write(off, &bytes)?;
            off
        };
        self.sync()?;
        let mut h = [0u8; 12];
        put32(&mut h, 0, snaps.len() as u32);
        put64(&mut h, 4, offset);
        self.write(OFF_NB_SNAPSHOTS, &h)?;
        self.sync()?;
        let (old_off, old_size) = (self.snapshots_offset, self.snapshots_size);
        self.snapshots = snaps;
        self.snapshots_offset = offset;
        self.snapshots_size = bytes.len() as u64;
        if old_size > 0 {
            let first = self.cluster_of(old_off);
            let n = (old_off + old_size).div_ceil(cs) - first;
            for c in first..first + n {
                self.metadata.remove(&c);
                self.add_refcount(c, -1)?;
            }
        }
        self.collect_metadata();
        Ok(())
    }

    /// Creates an internal snapshot of the current disk state.
    pub fn snapshot_create(&mut self, new: NewSnapshot) -> Result<SnapshotInfo, FormatError> {
        self.quiesced()?;
        if self.snapshots.len() as u64 >= MAX_SNAPSHOTS {
            return Err(FormatError::Invalid("Too many snapshots".into()));
        }
        let id = match new.id {
            Some(id) => id,
            None => {
                let max = self
                    .snapshots
                    .iter()
                    .filter_map(|s| s.id.parse::<u64>().ok())
                    .max();
                (max.unwrap_or(0) + 1).to_string()
            }
        };
        if self.snapshots.iter().any(|s| s.id == id) {
            return Err(FormatError::Invalid(format!(
                "Snapshot with id '{id}' already exists"
            )));
        }
        if id.len() > u16::MAX as usize || new.name.len() > u16::MAX as usize {
            return Err(FormatError::Invalid("Snapshot name too long".into()));
        }
        let active = self.l1.clone();
        self.check_headroom(&active)?;
        let cs = self.cluster_size();
        let l1_size = self.l1.len() as u64;
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let l1_offset = if l1_clusters == 0 {
            0
        } else {
            let off = self.alloc_clusters(l1_clusters)?;
            self.check_overlap(off, l1_clusters * cs)?;
            let mut b = vec![0u8; (l1_clusters * cs) as usize];
            for (i, e) in self.l1.iter().enumerate() {
                put64(&mut b, i * 8, e & !OFLAG_COPIED);
            }
            self.write(off, &b)?;
            for c in self.cluster_of(off)..self.cluster_of(off) + l1_clusters {
                self.metadata.insert(c);
            }
            off
        };
        let active = self.l1.clone();
        self.update_snapshot_refcount(&active, 1, true)?;
        self.sync()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let info = SnapshotInfo {
            id,
            name: new.name,
            vm_state_size: new.vm_state_size,
            date_sec: now.as_secs() as u32,
            date_nsec: now.subsec_nanos(),
            vm_clock_nsec: new.vm_clock_nsec,
            icount: new.icount,
            disk_size: self.size,
            l1_table_offset: l1_offset,
            l1_size: l1_size as u32,
            unknown_extra: Vec::new(),
        };
        let mut snaps = self.snapshots.clone();
        snaps.push(info.clone());
        self.write_snapshot_table(snaps)?;
        Ok(info)
    }

    /// Reverts the active state to a snapshot (QEMU's qcow2_snapshot_goto): the
    /// snapshot's clusters gain the active state's reference, the active L1 table is
    /// overwritten with the snapshot's, then the old active state's references go.
    pub fn snapshot_goto(&mut self, id_or_name: &str) -> Result<SnapshotInfo, FormatError> {
        self.quiesced()?;
        let sn = self
            .snapshots
            .iter()
            .find(|s| s.id == id_or_name)
            .or_else(|| self.snapshots.iter().find(|s| s.name == id_or_name))
            .cloned()
            .ok_or_else(|| FormatError::Invalid("Can't find the snapshot".into()))?;
        if sn.disk_size != self.size {
            return Err(FormatError::Unsupported(
                "qcow2: Loading snapshots with different disk size is not implemented".into(),
            ));
        }
        self.grow_l1(u64::from(sn.l1_size))?;
        let mut new = self.read_l1(sn.l1_table_offset, sn.l1_size)?;
        new.resize(self.l1.len(), 0);
        self.check_headroom(&new)?;
        self.update_snapshot_refcount(&new, 1, false)?;
        let mut b = vec![0u8; new.len() * 8];
        for (i, e) in new.iter().enumerate() {
            put64(&mut b, i * 8, *e);
        }
        let old = std::mem::replace(&mut self.l1, new);
        self.write(self.l1_offset, &b)?;
        self.sync()?;
        self.update_snapshot_refcount(&old, -1, false)?;
        let active = self.l1.clone();
        self.update_snapshot_refcount(&active, 0, true)?;
        self.collect_metadata();
        Ok(sn)
    }

    /// Deletes the snapshot matching `id` and/or `name` (QEMU's lookup: both must
    /// match when both are given).
    pub fn snapshot_delete(
        &mut self,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<SnapshotInfo, FormatError> {
        self.quiesced()?;
        let idx = self
            .snapshots
            .iter()
            .position(|s| {
                (id.is_some() || name.is_some())
                    && id.is_none_or(|i| s.id == i)
                    && name.is_none_or(|n| s.name == n)
            })
            .ok_or_else(|| FormatError::Invalid("Can't find the snapshot".into()))?;
        let mut snaps = self.snapshots.clone();
        let gone = snaps.remove(idx);
        // The table first: a crash after it leaks the snapshot's clusters at most.
        self.write_snapshot_table(snaps)?;
        let l1 = self.read_l1(gone.l1_table_offset, gone.l1_size)?;
        self.update_snapshot_refcount(&l1, -1, false)?;
        let cs = self.cluster_size();
        let first = self.cluster_of(gone.l1_table_offset);
        let n = (u64::from(gone.l1_size) * 8).div_ceil(cs);
        if gone.l1_table_offset != 0 {
            for c in first..first + n {
                self.metadata.remove(&c);
                self.add_refcount(c, -1)?;
            }
        }
        // Clusters only the active state holds now get their COPIED flags back.
        let active = self.l1.clone();
        self.update_snapshot_refcount(&active, 0, true)?;
        self.collect_metadata();
        Ok(gone)
    }
}
