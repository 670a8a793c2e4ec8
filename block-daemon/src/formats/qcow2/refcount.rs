//! Refcounts and cluster allocation: reading and updating refcount entries of every
//! width (1 to 64 bits), installing refcount blocks (a new block may cover itself),
//! relocating a refcount table that became too small, finding free clusters, reserving
//! data clusters in durable batches, and freeing (deferred while a mapping may be in
//! flight).
//!
//! Ordering (QEMU's): a cluster's refcount reaches the file (and, without lazy
//! refcounts, stable storage) before any L1/L2 entry names it; a block is written
//! before the table entry naming it; a relocated table is complete before the header
//! points to it. A crash between any two writes leaks clusters at most.

use crate::formats::qcow2::layout::{
    put32, put64, refcount_get, refcount_max, refcount_set, MAX_REFTABLE_BYTES,
    OFF_REFCOUNT_TABLE_OFFSET, REFT_OFFSET_MASK,
};
use crate::formats::qcow2::meta::Meta;
use crate::formats::FormatError;

/// Data clusters reserved per batch (one refcount write per sector and one ordering
/// sync per batch). The first batch of a session is 16 MiB of clusters (32 to 256 of
/// them); each one after it is 4 times the one before, up to 16 times the first and to
/// a quarter of the disk's clusters. The sync writes back every dirty page of the file:
/// with the page cache, a disk being filled spent most of its time in it at 16 MiB a
/// batch (bench/blk, sparse qcow2, 4k random writes at QD32: 0.32x QSD's IOPS, 1.10x with
/// 256 MiB batches; with O_DIRECT 1.17x and 2.18x; doubling from 16 MiB, the syncs on the
/// way up kept it at 0.46x in a 2 s run). A killed daemon leaks the unused rest of one
/// batch (past the end of the file, mostly: no space; `qemu-img check -r leaks` takes it
/// back).
fn reserve_batch(cluster_size: u64, refills: u32, disk_size: u64) -> usize {
    let first = ((16u64 << 20) / cluster_size).clamp(32, 256);
    let quarter = disk_size.div_ceil(cluster_size) / 4;
    (first << (2 * refills.min(2))).min(quarter.max(first)) as usize
}

/// Dropped references kept waiting for a sync at most (then one is made).
const MAX_PENDING_FREES: usize = 4096;

impl Meta {
    /// The refcount block offset for cluster `c`, if one exists (checked).
    fn block_for(&mut self, c: u64) -> Result<Option<u64>, FormatError> {
        let b = c / self.rb_entries();
        let Some(&e) = self.reftable.get(b as usize) else {
            return Ok(None);
        };
        let off = e & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if !self.valid_table_offset(off) {
            let msg = self.bad_table_offset("Refblock", off, "reftable", b);
            return Err(self.signal_corruption(msg));
        }
        Ok(Some(off))
    }

    /// The refcount of cluster `c` (0 where no block covers it).
    pub fn refcount(&mut self, c: u64) -> Result<u64, FormatError> {
        let Some(off) = self.block_for(c)? else {
            return Ok(0);
        };
        let idx = (c % self.rb_entries()) as usize;
        let order = self.refcount_order;
        let block = self.refblock(off)?;
        Ok(refcount_get(block, idx, order))
    }

    /// Sets the refcount of `c`, installing a refcount block (and growing the table)
    /// when none covers it.
    pub fn set_refcount(&mut self, c: u64, value: u64) -> Result<(), FormatError> {
        if let Some((off, sector)) = self.set_refcount_cached(c, value)? {
            self.write_refblock_sectors(off, sector..sector + 1)?;
        }
        Ok(())
    }

    /// Sets the refcount of `c` in its cached block only (installing a block when none
    /// covers it): the block's offset and the index of the 512-byte sector the caller
    /// must write (None when nothing changed in a block: a zero where none exists).
    fn set_refcount_cached(
        &mut self,
        c: u64,
        value: u64,
    ) -> Result<Option<(u64, usize)>, FormatError> {
        if value > refcount_max(self.refcount_order) {
            return Err(FormatError::Invalid(format!(
                "Refcount of cluster {c:#x} would exceed the {}-bit maximum",
                1u32 << self.refcount_order
            )));
        }
        let off = match self.block_for(c)? {
            Some(off) => off,
            None => {
                if value == 0 {
                    return Ok(None);
                }
                self.ensure_refblock(c / self.rb_entries())?
            }
        };
        let idx = (c % self.rb_entries()) as usize;
        let order = self.refcount_order;
        let block = self.refblock(off)?;
        refcount_set(block, idx, order, value);
        if value == 0 {
            self.free_hint = self.free_hint.min(c);
            if self
                .compressed_tail
                .is_some_and(|t| t >> self.cluster_bits == c)
            {
                // Free for any use now: no more compressed clusters go into it.
                self.compressed_tail = None;
            }
        } else {
            self.alloc_end = self.alloc_end.max(c + 1);
        }
        Ok(Some((off, ((idx << order) / 8) / 512)))
    }

    /// Writes sectors `sectors` of the cached refcount block at `off` as one write.
    fn write_refblock_sectors(
        &mut self,
        off: u64,
        sectors: std::ops::Range<usize>,
    ) -> Result<(), FormatError> {
        let block = self.refblock(off)?;
        let end = (sectors.end * 512).min(block.len());
        let bytes = block[sectors.start * 512..end].to_vec();
        if let Err(e) = self.write(off + (sectors.start * 512) as u64, &bytes) {
            // The cached block no longer matches the file: read it again next time.
            self.rb_cache.remove(off);
            return Err(e);
        }
        Ok(())
    }

    /// Gives each of `clusters` a refcount of 1, writing each changed sector of a block
    /// once (a batch of neighbouring clusters: one write, not one per cluster). On an
    /// error, the clusters whose refcount may not be in the file are returned.
    fn set_refcounts_one(&mut self, clusters: &[u64]) -> Result<(), (FormatError, Vec<u64>)> {
        // The sectors changed in the cached block `off` and not written yet; written
        // before another block is touched (which could evict this one from the cache).
        let mut pending: Option<(u64, std::ops::Range<usize>)> = None;
        let mut written = 0usize;
        for (i, &c) in clusters.iter().enumerate() {
            let same_block = pending
                .as_ref()
                .is_some_and(|(off, _)| self.block_for(c).ok().flatten() == Some(*off));
            if !same_block {
                if let Some((off, sectors)) = pending.take() {
                    self.write_refblock_sectors(off, sectors)
                        .map_err(|e| (e, clusters[written..].to_vec()))?;
                }
                written = i;
            }
            match self.set_refcount_cached(c, 1) {
                Ok(Some((off, s))) => match pending.as_mut() {
                    Some((_, sectors)) => {
                        sectors.start = sectors.start.min(s);
                        sectors.end = sectors.end.max(s + 1);
                    }
                    None => pending = Some((off, s..s + 1)),
                },
                Ok(None) => {}
                Err(e) => {
                    if let Some((off, _)) = pending {
                        self.rb_cache.remove(off);
                    }
                    return Err((e, clusters[written..].to_vec()));
                }
            }
        }
        if let Some((off, sectors)) = pending {
            self.write_refblock_sectors(off, sectors)
                .map_err(|e| (e, clusters[written..].to_vec()))?;
        }
        Ok(())
    }

    /// Adds `delta` to the refcount of `c`.
    pub fn add_refcount(&mut self, c: u64, delta: i64) -> Result<u64, FormatError> {
        let old = self.refcount(c)?;
        let new = old.checked_add_signed(delta).ok_or_else(|| {
            self.signal_corruption(format!(
                "Refcount of cluster {:#x} would become negative",
                c << self.cluster_bits
            ))
        })?;
        self.set_refcount(c, new)?;
        if delta < 0 {
            self.unmap.note_refcount_drop(c, new);
        }
        if new == 0 {
            self.metadata.remove(&c);
            if self.mapped.in_flight() > 0 {
                self.deferred.insert(c);
            }
        }
        Ok(new)
    }

    /// Installs a refcount block for block index `b` and returns its offset.
    fn ensure_refblock(&mut self, b: u64) -> Result<u64, FormatError> {
        loop {
            if b as usize >= self.reftable.len() {
                self.grow_reftable(b)?;
                continue;
            }
            let cur = self.reftable[b as usize] & REFT_OFFSET_MASK;
            if cur != 0 {
                return Ok(cur);
            }
            let x = self.find_free(1)?;
            let xb = x / self.rb_entries();
            let cs = self.cluster_size() as usize;
            let mut block = vec![0u8; cs];
            if xb == b {
                // The new block covers itself.
                refcount_set(
                    &mut block,
                    (x % self.rb_entries()) as usize,
                    self.refcount_order,
                    1,
                );
            } else if xb as usize >= self.reftable.len() || self.reftable[xb as usize] == 0 {
                // x's own range has no block yet: make that one first (it will cover
                // itself), then look again.
                self.ensure_refblock(xb)?;
                continue;
            } else {
                self.set_refcount(x, 1)?;
            }
            let off = x << self.cluster_bits;
            self.check_overlap(off, cs as u64)?;
            self.write(off, &block)?;
            self.rb_cache.insert(off, block);
            self.metadata.insert(x);
            if !self.lazy {
                self.sync()?;
            }
            self.set_reftable_entry(b, off)?;
            return Ok(off);
        }
    }

    fn set_reftable_entry(&mut self, b: u64, off: u64) -> Result<(), FormatError> {
        let mut e = [0u8; 8];
        put64(&mut e, 0, off);
        self.write(self.reftable_offset + b * 8, &e)?;
        self.reftable[b as usize] = off;
        Ok(())
    }

    /// Moves the refcount table to the end of the file, large enough for block index
    /// `b` and for the blocks covering the new table and themselves.
    fn grow_reftable(&mut self, b: u64) -> Result<(), FormatError> {
        #[cfg(test)]
        if let Some(left) = self.crash.0 {
            self.crash.1.push(usize::MAX - left);
        }
        let cs = self.cluster_size();
        let per_block = self.rb_entries();
        let start = self.file_size.div_ceil(cs).max(self.alloc_end);
        let old_len = self.reftable.len() as u64;
        let mut entries = (b + 1).max(old_len + old_len / 2).max(cs / 8);
        let (mut table_clusters, mut new_blocks);
        loop {
            table_clusters = (entries * 8).div_ceil(cs);
            // Blocks needed for start..start+table_clusters+new_blocks.
            new_blocks = 0u64;
            loop {
                let end = start + table_clusters + new_blocks;
                let need = (start / per_block..=(end - 1) / per_block)
                    .filter(|&i| i >= old_len || self.reftable[i as usize] == 0)
                    .count() as u64;
                if need == new_blocks {
                    break;
                }
                new_blocks = need;
            }
            let last_block = (start + table_clusters + new_blocks - 1) / per_block;
            if last_block < entries {
                break;
            }
            entries = last_block + 1;
        }
        if table_clusters * cs > MAX_REFTABLE_BYTES {
            return Err(FormatError::Invalid(
                "Reference count table too large".into(),
            ));
        }
        let end = start + table_clusters + new_blocks;
        let mut table = vec![0u64; (table_clusters * cs / 8) as usize];
        table[..self.reftable.len()].copy_from_slice(&self.reftable);
        // New blocks, placed after the table, each holding the refcounts of the new
        // clusters in its range.
        let mut next_block = start + table_clusters;
        let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
        for i in start / per_block..=(end - 1) / per_block {
            if table[i as usize] != 0 {
                continue;
            }
            let off = next_block << self.cluster_bits;
            next_block += 1;
            table[i as usize] = off;
            let mut block = vec![0u8; cs as usize];
            for c in (i * per_block).max(start)..((i + 1) * per_block).min(end) {
                refcount_set(&mut block, (c % per_block) as usize, self.refcount_order, 1);
            }
            blocks.push((off, block));
        }
        // Clusters of the new range covered by blocks that already exist.
        for c in start..end {
            let i = (c / per_block) as usize;
            if i < self.reftable.len() && self.reftable[i] != 0 {
                self.set_refcount(c, 1)?;
            }
        }
        for (off, block) in &blocks {
            self.write(*off, block)?;
        }
        let mut bytes = vec![0u8; (table_clusters * cs) as usize];
        for (i, e) in table.iter().enumerate() {
            put64(&mut bytes, i * 8, *e);
        }
        self.write(start << self.cluster_bits, &bytes)?;
        self.sync()?;
        let mut h = [0u8; 12];
        put64(&mut h, 0, start << self.cluster_bits);
        put32(&mut h, 8, table_clusters as u32);
        self.write(OFF_REFCOUNT_TABLE_OFFSET, &h)?;
        self.sync()?;
        let (old_off, old_clusters) = (self.reftable_offset, self.reftable_clusters);
        self.reftable = table;
        self.reftable_offset = start << self.cluster_bits;
        self.reftable_clusters = table_clusters;
        for (off, block) in blocks {
            self.metadata.insert(off >> self.cluster_bits);
            self.rb_cache.insert(off, block);
        }
        for c in start..start + table_clusters {
            self.metadata.insert(c);
        }
        for c in self.cluster_of(old_off)..self.cluster_of(old_off) + old_clusters {
            self.metadata.remove(&c);
            self.add_refcount(c, -1)?;
        }
        Ok(())
    }

    /// The first run of `n` free clusters at or after the hint.
    pub fn find_free(&mut self, n: u64) -> Result<u64, FormatError> {
        if self.mapped.in_flight() == 0 {
            if let Some(&lowest) = self.deferred.iter().min() {
                self.free_hint = self.free_hint.min(lowest);
            }
            self.deferred.clear();
        }
        let mut c = self.free_hint.max(1);
        let mut run_start = c;
        let mut run = 0;
        let limit = 1u64 << (56 - self.cluster_bits);
        while run < n {
            if c >= limit {
                return Err(FormatError::Io(std::io::Error::from_raw_os_error(
                    libc::EFBIG,
                )));
            }
            let free = !self.deferred.contains(&c)
                && !self.unmap.waiting_for_punch(c)
                && !self.reserved.contains(&c)
                && !self.metadata.contains(&c)
                && self.refcount(c)? == 0;
            if free {
                if run == 0 {
                    run_start = c;
                }
                run += 1;
            } else {
                run = 0;
            }
            c += 1;
        }
        if n == 1 || run_start == self.free_hint {
            self.free_hint = run_start + n;
        }
        // Claimed from now on: a refcount table moved before these get their
        // refcounts must land past them.
        self.alloc_end = self.alloc_end.max(run_start + n);
        Ok(run_start)
    }

    /// Allocates `n` contiguous clusters (refcount 1, durable unless lazy); their offset.
    pub fn alloc_clusters(&mut self, n: u64) -> Result<u64, FormatError> {
        let start = self.find_free(n)?;
        for c in start..start + n {
            self.set_refcount(c, 1)?;
        }
        if !self.lazy {
            self.sync()?;
        }
        Ok(start << self.cluster_bits)
    }

    /// One cluster for guest data, from the reserved batch (refilled with one sync).
    ///
    /// Clusters of the batch that lie past the end of the file are added to it at once
    /// (one truncate, made durable with the refcounts): they read as zeroes and are
    /// marked `fresh`, so an allocating write into one need not write the zeroes
    /// around the guest's bytes (see `take_data_cluster`'s second value).
    pub fn take_data_cluster(&mut self) -> Result<(u64, bool), FormatError> {
        if self.reserved.is_empty() {
            let cs = self.cluster_size();
            // Clusters past this read as zeroes (nothing below writes to them).
            let old_size = self.file_size;
            let mut end = old_size;
            self.fresh.clear();
            let size = reserve_batch(cs, self.refills, self.size);
            let mut batch = Vec::with_capacity(size);
            for _ in 0..size {
                // In `reserved` at once, so that the next search passes it by.
                match self.find_free(1) {
                    // A device does not grow: the batch ends where the device does.
                    Ok(c) if self.block_device && (c + 1) * cs > self.file_size => break,
                    Ok(c) => {
                        self.reserved.push_back(c);
                        batch.push(c);
                    }
                    Err(e) => {
                        self.reserved.clear();
                        return Err(e);
                    }
                }
            }
            if batch.is_empty() {
                return Err(FormatError::Io(std::io::Error::from_raw_os_error(
                    libc::ENOSPC,
                )));
            }
            if let Err((e, unset)) = self.set_refcounts_one(&batch) {
                // Without a refcount in the file, these must not be handed out.
                self.reserved.retain(|c| !unset.contains(c));
                return Err(e);
            }
            for &c in &batch {
                if c << self.cluster_bits >= old_size {
                    self.fresh.insert(c);
                    end = end.max((c + 1) * cs);
                }
            }
            if end > self.file_size {
                self.extend_file(end)?;
            }
            if !self.lazy {
                self.sync()?;
                self.apply_pending_frees()?;
            }
            self.refills = self.refills.saturating_add(1);
        }
        let c = self
            .reserved
            .pop_front()
            .ok_or_else(|| FormatError::Invalid("no reserved cluster".into()))?;
        let fresh = self.fresh.remove(&c);
        Ok((c << self.cluster_bits, fresh))
    }

    /// Gives an unused data cluster back to the reserve.
    pub fn unreserve(&mut self, offset: u64) {
        let c = self.cluster_of(offset);
        self.reserved.push_front(c);
    }

    /// Frees the reserved clusters (a clean close: no leak left behind).
    pub fn release_reserved(&mut self) -> Result<(), FormatError> {
        self.fresh.clear();
        while let Some(c) = self.reserved.pop_front() {
            self.set_refcount(c, 0)?;
        }
        Ok(())
    }

    /// Drops one reference to the clusters `first..first + n` once the change that
    /// stopped naming them is on stable storage (at once with lazy refcounts, where
    /// the dirty bit covers any order).
    pub fn release_later(&mut self, first: u64, n: u64) -> Result<(), FormatError> {
        self.unmap.note_release(first, n);
        if self.lazy {
            return self.free_clusters(first, n);
        }
        self.pending_frees.extend(first..first + n);
        if self.pending_frees.len() >= MAX_PENDING_FREES {
            self.sync()?;
            self.apply_pending_frees()?;
        }
        Ok(())
    }

    /// Drops the waiting references (the caller has just synced).
    pub fn apply_pending_frees(&mut self) -> Result<(), FormatError> {
        for c in std::mem::take(&mut self.pending_frees) {
            self.add_refcount(c, -1)?;
        }
        Ok(())
    }

    /// Drops one reference to the clusters `first..first + n`.
    pub fn free_clusters(&mut self, first: u64, n: u64) -> Result<(), FormatError> {
        for c in first..first + n {
            self.add_refcount(c, -1)?;
        }
        Ok(())
    }
}
