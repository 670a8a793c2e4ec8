//! Dirty bitmaps (block-dirty-bitmap-add, -remove, -clear, and the transaction actions
//! add and clear). A bitmap belongs to a node, as in QEMU; its memory is a memfd the
//! gateway creates and keeps (`ipc::SharedBitmap`). On an image node of a disk's chain
//! it is the disk's, and the disk's daemon marks the guest's writes into it while the
//! node is the disk's top and the bitmap records; on a node no disk uses (blockdev-add
//! made it, or it left a chain: a mirror's source after the pivot) it is loose, kept by
//! the gateway, marked by nobody, and the disk's again once the node is in its chain (a
//! mirror's target after the pivot, a device_add over the node). query-block counts it
//! here, without asking the daemon.
//!
//! A daemon is always sent the whole set it marks into (`BlockRequest::SetDirtyBitmaps`,
//! swapped in with its device quiesced), and a new daemon gets it at its open, so no
//! write goes unmarked across a restart. Clearing a bitmap gives it new, clean memory;
//! the old memory is what a failed transaction merges back. A bitmap grows with its
//! disk (block_resize) the same way.

use std::os::fd::{AsFd, OwnedFd};

use ipc::dirty_bitmap::{bytes_for, valid_granularity, MAX_BITMAPS_PER_DISK};
use ipc::{BlockRequest, DirtyBitmapSpec, SharedBitmap};
use serde_json::Value;

use super::dirty_bitmap::DirtyBitmap;
use super::disk::Disk;
pub use super::error::BitmapError;
use super::error::BlockError;
use super::graph::Graph;
use super::info::image_sizes;
use super::transaction::Action;
use super::{BlockLayer, NewDisk, State};
use crate::fdstore::Charge;
use ipc::OnError;

/// The longest name QEMU takes (BDRV_BITMAP_MAX_NAME_SIZE).
const MAX_NAME: usize = 1023;

/// The memory all dirty bitmaps together may take (a client's bitmaps are bounded by
/// this and by `MAX_BITMAPS_PER_DISK`).
pub use ipc::dirty_bitmap::MAX_BITMAP_MEMORY;

impl Disk {
    /// The bitmaps its daemon is sent, those of the top node: the ones that record (it
    /// marks into them) and the persistent ones (it stores them in the image).
    fn sent_bitmaps(&self) -> impl Iterator<Item = &DirtyBitmap> {
        self.bitmaps
            .iter()
            .filter(|b| (b.recording || b.persistent) && b.node == self.root)
    }

    /// What a daemon is sent (`sent_bitmaps`), and their memfds.
    pub fn bitmap_set(&self) -> Result<(Vec<DirtyBitmapSpec>, Vec<OwnedFd>), BitmapError> {
        let mut specs = Vec::new();
        let mut fds = Vec::new();
        for b in self.sent_bitmaps() {
            let fd = b
                .memory
                .fd()
                .ok_or_else(|| BitmapError::Dup(std::io::Error::from_raw_os_error(libc::EBADF)))?
                .try_clone_to_owned()
                .map_err(BitmapError::Dup)?;
            specs.push(b.spec());
            fds.push(fd);
        }
        Ok((specs, fds))
    }

    fn bitmap_mut(&mut self, node: &str, name: &str) -> Option<&mut DirtyBitmap> {
        bitmap_in(&mut self.bitmaps, node, name)
    }
}

/// Bitmap `name` on node `node` among `bitmaps`.
fn bitmap_in<'a>(
    bitmaps: &'a mut [DirtyBitmap],
    node: &str,
    name: &str,
) -> Option<&'a mut DirtyBitmap> {
    bitmaps
        .iter_mut()
        .find(|b| b.node == node && b.name == name)
}

/// The disk bytes node `name` holds (its guest-visible size).
pub(super) fn node_size(graph: &Graph, name: &str) -> u64 {
    let image = graph.image_node(name);
    if let Some(q) = image.and_then(|n| n.qcow2.as_ref()) {
        return q.virtual_size;
    }
    graph
        .protocol_of(name)
        .and_then(|p| p.image.as_deref())
        .map(|fd| image_sizes(fd).0.div_ceil(512) * 512)
        .unwrap_or(0)
}

/// QEMU's default granularity: the image's cluster size within 4 KiB..64 KiB, or 64 KiB
/// for a format without clusters (dirty bitmaps and mirrors alike).
pub(super) fn default_granularity(graph: &Graph, name: &str) -> u64 {
    graph
        .image_node(name)
        .and_then(|n| n.qcow2.as_ref())
        .map_or(65536, |q| q.cluster_size.clamp(4096, 65536))
}

/// block-dirty-bitmap-add's arguments.
#[derive(Debug, Clone)]
pub struct NewBitmap {
    pub node: String,
    pub name: String,
    pub granularity: Option<u64>,
    pub persistent: bool,
    pub disabled: bool,
}

impl State {
    /// Whether disk `index`'s chain has image node `node`.
    fn chain_has_image_node(&self, index: usize, node: &str) -> bool {
        self.graph.chain(&self.disks[index].root).iter().any(|n| {
            n.name == node
                || self
                    .graph
                    .image_node(&n.name)
                    .is_some_and(|i| i.name == node)
        })
    }

    /// The disk whose chain has image node `node`.
    fn disk_with_image_node(&self, node: &str) -> Option<usize> {
        (0..self.disks.len()).find(|&i| self.chain_has_image_node(i, node))
    }

    /// Whether a disk uses node `node` in any way (its chain's nodes and their files).
    fn disk_uses_node(&self, node: &str) -> bool {
        self.disks.iter().any(|d| {
            self.graph
                .chain(&d.root)
                .iter()
                .any(|n| self.graph.tree(&n.name).iter().any(|t| t == node))
        })
    }

    /// The bitmaps of disk `index`, or the loose ones (None).
    fn bitmaps_of(&self, index: Option<usize>) -> &Vec<DirtyBitmap> {
        match index {
            Some(i) => &self.disks[i].bitmaps,
            None => &self.loose_bitmaps,
        }
    }

    fn bitmaps_of_mut(&mut self, index: Option<usize>) -> &mut Vec<DirtyBitmap> {
        match index {
            Some(i) => &mut self.disks[i].bitmaps,
            None => &mut self.loose_bitmaps,
        }
    }

    /// After a change to the graph or to the disks' chains: each bitmap goes where its
    /// node is now (a disk's chain, or loose: QEMU keeps a bitmap on its node), and
    /// those whose node is gone go. The caller tells the daemons whose set changed.
    pub(super) fn settle_bitmaps(&mut self) {
        let mut moving = std::mem::take(&mut self.loose_bitmaps);
        for i in 0..self.disks.len() {
            let had = std::mem::take(&mut self.disks[i].bitmaps);
            for b in had {
                if self.chain_has_image_node(i, &b.node) {
                    self.disks[i].bitmaps.push(b);
                } else {
                    moving.push(b);
                }
            }
        }
        for b in moving {
            if self.graph.node(&b.node).is_none() {
                continue;
            }
            match self.disk_with_image_node(&b.node) {
                Some(i) => self.disks[i].bitmaps.push(b),
                None => self.loose_bitmaps.push(b),
            }
        }
    }

    /// QEMU's block_dirty_bitmap_lookup: (disk index, None: loose; node) of bitmap
    /// `name` on the node or device `node`.
    fn find_bitmap(&self, node: &str, name: &str) -> Result<(Option<usize>, String), BlockError> {
        let node = self
            .lookup_node(Some(node), Some(node))
            .map_err(|_| BitmapError::NodeNotFound(node.to_string()))?;
        let index = self.disk_with_image_node(&node);
        let found = self
            .bitmaps_of(index)
            .iter()
            .any(|b| b.node == node && b.name == name);
        if !found {
            return Err(BitmapError::NotFound(name.to_string()).into());
        }
        Ok((index, node))
    }

    /// The BlockDirtyInfo of node `node`'s bitmaps, newest first (QEMU's order).
    pub fn bitmap_infos(&self, node: &str) -> Vec<Value> {
        let of_disks = self
            .disks
            .iter()
            .flat_map(|d| d.bitmaps.iter().rev().map(move |b| (Some(d), b)));
        let loose = self.loose_bitmaps.iter().rev().map(|b| (None, b));
        of_disks
            .chain(loose)
            .filter(|(_, b)| b.node == node)
            .map(|(d, b)| b.info(d.is_some_and(|d| self.bitmap_busy(d, b))))
            .collect()
    }

    /// Whether a job of disk `disk` uses bitmap `b` (an incremental backup).
    fn bitmap_busy(&self, disk: &Disk, b: &DirtyBitmap) -> bool {
        b.node == disk.root
            && self
                .job_of_disk(&disk.id)
                .is_some_and(|j| j.uses_bitmap(&b.name))
    }

    /// Bitmap `name` of disk `index` may be changed (no job uses it; a loose one: yes).
    fn bitmap_free(&self, index: Option<usize>, node: &str, name: &str) -> Result<(), BlockError> {
        let Some(index) = index else {
            return Ok(());
        };
        let disk = &self.disks[index];
        match disk
            .bitmaps
            .iter()
            .find(|b| b.node == node && b.name == name)
        {
            Some(b) if self.bitmap_busy(disk, b) => Err(BitmapError::Busy(name.to_string()).into()),
            _ => Ok(()),
        }
    }

    fn bitmap_memory(&self) -> u64 {
        self.disks
            .iter()
            .flat_map(|d| &d.bitmaps)
            .chain(&self.loose_bitmaps)
            .map(|b| bytes_for(b.memory.size(), b.memory.granularity()).unwrap_or(0))
            .sum()
    }
}

impl BlockLayer {
    /// Sends disk `index`'s daemon (if one runs) the set of bitmaps it marks into (None:
    /// loose bitmaps, which nobody marks).
    fn send_bitmaps(&self, index: Option<usize>) -> Result<(), BlockError> {
        let Some(index) = index else {
            return Ok(());
        };
        let (link, specs, fds) = {
            let state = self.state.lock();
            let Some(disk) = state.disks.get(index) else {
                return Ok(());
            };
            let Some(daemon) = disk.daemon.as_ref() else {
                // The next daemon gets them at its open.
                return Ok(());
            };
            let (specs, fds) = disk.bitmap_set()?;
            (daemon.link.clone(), specs, fds)
        };
        let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        link.request(BlockRequest::SetDirtyBitmaps(specs), &fds)?;
        Ok(())
    }

    /// The same, by disk id (after a change to the disk's chain).
    pub(super) fn send_bitmaps_of(&self, id: &str) -> Result<(), BlockError> {
        let index = self.state.lock().disks.iter().position(|d| d.id == id);
        index.map_or(Ok(()), |i| self.send_bitmaps(Some(i)))
    }

    /// block-dirty-bitmap-add; `charge`: the memfd's charge to the calling client.
    pub fn dirty_bitmap_add(
        &self,
        new: &NewBitmap,
        charge: Option<Charge>,
    ) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        self.add_bitmap(new, charge)
    }

    fn add_bitmap(&self, new: &NewBitmap, charge: Option<Charge>) -> Result<(), BlockError> {
        let index = {
            let mut state = self.state.lock();
            if new.name.is_empty() {
                return Err(BitmapError::EmptyName.into());
            }
            let node = state.lookup_node(Some(&new.node), Some(&new.node))?;
            let granularity = match new.granularity {
                Some(g) if !valid_granularity(g) => return Err(BitmapError::Granularity.into()),
                Some(g) => g,
                None => default_granularity(&state.graph, &node),
            };
            let index = state.disk_with_image_node(&node);
            let qcow2 = state
                .graph
                .image_node(&node)
                .is_some_and(|n| n.qcow2.is_some());
            // QEMU names the device where the node is a disk's root.
            let shown = index
                .map(|i| &state.disks[i])
                .filter(|d| d.root == node && d.drive)
                .map_or(node.clone(), |d| d.id.clone());
            if new.persistent && !qcow2 {
                return Err(BitmapError::PersistentUnsupported(shown).into());
            }
            if new.persistent {
                let version = state
                    .graph
                    .image_node(&node)
                    .and_then(|n| n.qcow2.as_ref())
                    .map_or(0, |q| q.version);
                let why = if version < 3 {
                    Some("Cannot store dirty bitmaps in qcow2 v2 files")
                } else if new.name.len() > MAX_NAME {
                    Some("Name length exceeds maximum (1023 characters)")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(BitmapError::CannotPersist {
                        name: new.name.clone(),
                        node: shown,
                        why,
                    }
                    .into());
                }
            }
            let exists = state
                .bitmaps_of(index)
                .iter()
                .any(|b| b.node == node && b.name == new.name);
            if exists {
                return Err(BitmapError::Exists(new.name.clone()).into());
            }
            if new.name.len() > MAX_NAME {
                return Err(BitmapError::NameTooLong(new.name.clone()).into());
            }
            match index {
                Some(index) => {
                    let disk = &state.disks[index];
                    if new.persistent && (disk.root != node || disk.config.read_only) {
                        // Stored by the daemon that writes the image: the disk's top.
                        return Err(BitmapError::PersistentNotTop(node).into());
                    }
                    if disk.bitmaps.len() >= MAX_BITMAPS_PER_DISK {
                        return Err(BitmapError::TooMany {
                            disk: disk.id.clone(),
                            max: MAX_BITMAPS_PER_DISK,
                        }
                        .into());
                    }
                }
                // A disk uses the node, but not as an image of its chain (a file node
                // under one).
                None if state.disk_uses_node(&node) => {
                    return Err(BitmapError::Unserved(node).into());
                }
                // A node no disk uses: loose. A persistent one is stored in the image
                // when the node closes (`open_to_store`), or by the daemon of the disk
                // whose top the node becomes (QEMU takes it on a read-only node too, and
                // loses it at the close).
                None => {
                    let on_node = (state.loose_bitmaps.iter())
                        .filter(|b| b.node == node)
                        .count();
                    if on_node >= MAX_BITMAPS_PER_DISK {
                        return Err(BitmapError::TooMany {
                            disk: node.clone(),
                            max: MAX_BITMAPS_PER_DISK,
                        }
                        .into());
                    }
                }
            }
            let size = node_size(&state.graph, &node);
            let need =
                state.bitmap_memory() + bytes_for(size, granularity).map_err(BitmapError::from)?;
            if need > MAX_BITMAP_MEMORY {
                return Err(BitmapError::OutOfMemory {
                    need,
                    max: MAX_BITMAP_MEMORY,
                }
                .into());
            }
            let memory = SharedBitmap::create(size, granularity).map_err(BitmapError::from)?;
            state.bitmaps_of_mut(index).push(DirtyBitmap {
                node,
                name: new.name.clone(),
                memory,
                persistent: new.persistent,
                recording: !new.disabled,
                inconsistent: false,
                charge,
            });
            index
        };
        if let Err(e) = self.send_bitmaps(index) {
            // Not marked into: it is not there.
            self.take_bitmap(index, &new.node, &new.name);
            return Err(e);
        }
        Ok(())
    }

    /// Opens loose node `node` in a block daemon of its own if persistent bitmaps are
    /// on it, so that they reach its image as QEMU stores a node's persistent bitmaps
    /// when it closes the node (blockdev-del, quit): the daemon loads the image's own
    /// bitmaps, is sent the node's, and stores them all at its clean close. The caller
    /// stops it with `stored`, outside the state lock. A read-only node's are lost, as
    /// in QEMU.
    pub(super) fn open_to_store(&self, state: &mut State, node: &str) -> Option<Disk> {
        let persistent = (state.loose_bitmaps.iter()).any(|b| b.node == node && b.persistent);
        if !persistent {
            return None;
        }
        if state.graph.inactive() {
            // The images are the other side's (a migration's source after the switch-over,
            // whose `inactivate` stored them; a destination not yet active).
            return None;
        }
        let writable = state.graph.node(node).is_some_and(|n| !n.read_only)
            && state.graph.protocol_of(node).is_some_and(|p| !p.read_only);
        if !writable {
            log::warn!(
                "Lost persistent bitmaps during inactivation of node '{node}': No write access"
            );
            return None;
        }
        let new = NewDisk {
            id: format!("#bitmaps-{node}"),
            drive: false,
            qdev_id: String::new(),
            root: node.to_string(),
            queues: 1,
            serial: String::new(),
            stats_intervals: Vec::new(),
            qom_path: String::new(),
            on_read_error: OnError::Report,
            on_write_error: OnError::Report,
            iothread: None,
            born: None,
        };
        let before = state.disks.len();
        match self.attach(state, new) {
            Ok(_) if state.disks.len() == before + 1 => state.disks.pop(),
            Ok(_) => None,
            Err(e) => {
                log::error!("Failed to store persistent bitmaps of node '{node}': {e}");
                None
            }
        }
    }

    /// Stops the daemon `open_to_store` started (it stores the bitmaps and leaves the
    /// image clean); the node's bitmaps are loose again (not those it loaded from the
    /// image: nobody listed them).
    pub(super) fn stored(&self, mut disk: Disk, loose: &[(String, String)]) {
        match disk.stop() {
            Some(how) => log::info!("node {}: bitmaps stored ({how})", disk.root),
            None => log::info!("node {}: bitmaps stored", disk.root),
        }
        let _ = std::fs::remove_file(&disk.socket);
        let mut state = self.state.lock();
        state.release_top(&disk.root, false);
        let known = |b: &DirtyBitmap| loose.iter().any(|(n, m)| *n == b.node && *m == b.name);
        let mut back: Vec<_> = std::mem::take(&mut disk.bitmaps)
            .into_iter()
            .filter(known)
            .collect();
        state.loose_bitmaps.append(&mut back);
        state.settle_bitmaps();
    }

    /// Stores the persistent bitmaps of loose node `node` in its image (`open_to_store`),
    /// the state lock released meanwhile.
    pub(super) fn store_loose(&self, node: &str) {
        let (disk, loose) = {
            let mut state = self.state.lock();
            let loose: Vec<_> = (state.loose_bitmaps.iter())
                .map(|b| (b.node.clone(), b.name.clone()))
                .collect();
            (self.open_to_store(&mut state, node), loose)
        };
        if let Some(disk) = disk {
            self.stored(disk, &loose);
        }
    }

    /// Stores the persistent bitmaps of every loose node (the gateway exits).
    pub(super) fn store_all_loose(&self) {
        let mut nodes: Vec<String> = (self.state.lock().loose_bitmaps.iter())
            .filter(|b| b.persistent)
            .map(|b| b.node.clone())
            .collect();
        nodes.sort();
        nodes.dedup();
        for n in nodes {
            self.store_loose(&n);
        }
    }

    /// Takes bitmap `name` off node or device `node` of disk `index` (None: loose).
    fn take_bitmap(&self, index: Option<usize>, node: &str, name: &str) -> Option<DirtyBitmap> {
        let mut state = self.state.lock();
        let node = state.lookup_node(Some(node), Some(node)).ok()?;
        if index.is_some_and(|i| i >= state.disks.len()) {
            return None;
        }
        let bitmaps = state.bitmaps_of_mut(index);
        let at = bitmaps
            .iter()
            .position(|b| b.node == node && b.name == name)?;
        Some(bitmaps.remove(at))
    }

    /// block-dirty-bitmap-remove.
    pub fn dirty_bitmap_remove(&self, node: &str, name: &str) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        self.dirty_bitmap_remove_unlocked(node, name)
    }

    /// The same, the caller holding `changes` (a transaction's commit).
    fn dirty_bitmap_remove_unlocked(&self, node: &str, name: &str) -> Result<(), BlockError> {
        let (index, _) = {
            let state = self.state.lock();
            let (index, found) = state.find_bitmap(node, name)?;
            state.bitmap_free(index, &found, name)?;
            (index, found)
        };
        // Kept until the daemon has stopped marking into it.
        let _gone = self.take_bitmap(index, node, name);
        if let Err(e) = self.send_bitmaps(index) {
            // It marks into memory nobody reads until its next set: no harm done.
            log::warn!("dirty bitmap {name} removed; its daemon was not told: {e}");
        }
        Ok(())
    }

    /// block-dirty-bitmap-clear.
    pub fn dirty_bitmap_clear(&self, node: &str, name: &str) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        self.clear_bitmap(node, name).map(drop)
    }

    /// Gives bitmap `name` new, clean memory; returns the old memory (what a failed
    /// transaction merges back).
    fn clear_bitmap(&self, node: &str, name: &str) -> Result<SharedBitmap, BlockError> {
        let swap = |state: &mut State, index: Option<usize>, node: &str, memory: SharedBitmap| {
            bitmap_in(state.bitmaps_of_mut(index), node, name)
                .map(|b| std::mem::replace(&mut b.memory, memory))
        };
        let (index, node, old) = {
            let mut state = self.state.lock();
            let (index, node) = state.find_bitmap(node, name)?;
            state.bitmap_free(index, &node, name)?;
            let root = index.map(|i| state.disks[i].root.clone());
            let Some(b) = bitmap_in(state.bitmaps_of_mut(index), &node, name) else {
                return Err(BitmapError::NotFound(name.to_string()).into());
            };
            if b.inconsistent {
                return Err(BitmapError::Inconsistent(name.to_string()).into());
            }
            let clean = SharedBitmap::create(b.memory.size(), b.memory.granularity())
                .map_err(BitmapError::from)?;
            let marked = b.recording && root.as_deref() == Some(b.node.as_str());
            let old = std::mem::replace(&mut b.memory, clean);
            if !marked {
                return Ok(old);
            }
            (index, node, old)
        };
        if let Err(e) = self.send_bitmaps(index) {
            // The daemon still marks into the old memory: it stays.
            let mut state = self.state.lock();
            swap(&mut state, index, &node, old);
            return Err(e);
        }
        Ok(old)
    }

    /// Marks again in disk `disk`'s top-node bitmap `name` what `marks` has (a failed
    /// incremental backup's chunks).
    pub(super) fn merge_into_bitmap(&self, disk: &str, name: &str, marks: &SharedBitmap) {
        let mut state = self.state.lock();
        let Some(d) = state.disks.iter_mut().find(|d| d.id == disk) else {
            return;
        };
        let root = d.root.clone();
        if let Some(b) = d.bitmap_mut(&root, name) {
            if let Err(e) = b.memory.merge_from(marks) {
                log::error!("dirty bitmap {name}: giving back a backup's marks: {e}");
            }
        }
    }

    /// Marks again in bitmap `name` what `old` has (a clear undone).
    fn merge_back(&self, node: &str, name: &str, old: &SharedBitmap) {
        let mut state = self.state.lock();
        let Ok((index, node)) = state.find_bitmap(node, name) else {
            return;
        };
        if let Some(b) = bitmap_in(state.bitmaps_of_mut(index), &node, name) {
            if let Err(e) = b.memory.merge_from(old) {
                log::error!("dirty bitmap {name}: giving back its marks: {e}");
            }
        }
    }

    /// Disk `id`'s bitmaps on its top node get memory of `size` bytes with their marks
    /// (`only_grow`: those smaller only). The caller holds `changes`.
    pub(super) fn resize_bitmaps(
        &self,
        id: &str,
        size: u64,
        only_grow: bool,
    ) -> Result<(), BlockError> {
        let (index, old) = {
            let mut state = self.state.lock();
            let Some(index) = state.disks.iter().position(|d| d.id == id) else {
                return Ok(());
            };
            let disk = &mut state.disks[index];
            let root = disk.root.clone();
            let mut old = Vec::new();
            let resized = |b: &&mut DirtyBitmap| {
                let have = b.memory.size();
                have < size || (have > size && !only_grow)
            };
            for b in disk
                .bitmaps
                .iter_mut()
                .filter(|b| b.node == root)
                .filter(resized)
            {
                let resized = SharedBitmap::create(size, b.memory.granularity())
                    .map_err(BitmapError::from)?;
                resized.merge_from(&b.memory).map_err(BitmapError::from)?;
                old.push((b.name.clone(), std::mem::replace(&mut b.memory, resized)));
            }
            (index, old)
        };
        if old.is_empty() {
            return Ok(());
        }
        let sent = self.send_bitmaps(Some(index));
        // What the daemon marked into the old memory since the copy.
        let mut state = self.state.lock();
        let disk = &mut state.disks[index];
        let root = disk.root.clone();
        for (name, memory) in old {
            if let Some(b) = disk.bitmap_mut(&root, &name) {
                match &sent {
                    Ok(()) => {
                        if let Err(e) = b.memory.merge_from(&memory) {
                            log::error!("dirty bitmap {name}: carrying marks over: {e}");
                        }
                    }
                    // The daemon still marks into the old memory: it stays.
                    Err(_) => b.memory = memory,
                }
            }
        }
        sent
    }
}

/// A source of block-dirty-bitmap-merge: a bitmap of the target's node, or of any node.
#[derive(Debug, Clone)]
pub enum MergeSource {
    Local(String),
    External { node: String, name: String },
}

impl State {
    /// Bitmap `name` on `node` (found as `find_bitmap` finds it): (disk index, node).
    fn merge_source(
        &self,
        index: Option<usize>,
        node: &str,
        source: &MergeSource,
    ) -> Result<(Option<usize>, String, String), BlockError> {
        match source {
            MergeSource::Local(name) => {
                let found =
                    (self.bitmaps_of(index).iter()).any(|b| b.node == node && b.name == *name);
                if !found {
                    return Err(BitmapError::NotFound(name.clone()).into());
                }
                Ok((index, node.to_string(), name.clone()))
            }
            MergeSource::External { node, name } => {
                let (index, node) = self.find_bitmap(node, name)?;
                Ok((index, node, name.clone()))
            }
        }
    }
}

impl BlockLayer {
    /// block-dirty-bitmap-merge: marks in bitmap `target` of `node` what each source
    /// has, as QEMU's: the target is checked (busy, inconsistent), then each source in
    /// order (found, consistent, of the target's size), and
    /// the target changes only once all are. The marks are or'ed into the target's
    /// memory in place, where its daemon goes on marking. Returns a copy of the
    /// target's memory from before (`backup`: a transaction's abort puts it back).
    fn merge_bitmaps(
        &self,
        node: &str,
        target: &str,
        sources: &[MergeSource],
        backup: bool,
    ) -> Result<Option<SharedBitmap>, BlockError> {
        let mut state = self.state.lock();
        let (index, node) = state.find_bitmap(node, target)?;
        state.bitmap_free(index, &node, target)?;
        let (size, granularity) = {
            let Some(b) =
                (state.bitmaps_of(index).iter()).find(|b| b.node == node && b.name == target)
            else {
                return Err(BitmapError::NotFound(target.to_string()).into());
            };
            if b.inconsistent {
                return Err(BitmapError::Inconsistent(target.to_string()).into());
            }
            (b.memory.size(), b.memory.granularity())
        };
        let mut found = Vec::new();
        for s in sources {
            let (i, n, name) = state.merge_source(index, &node, s)?;
            let Some(b) = (state.bitmaps_of(i).iter()).find(|b| b.node == n && b.name == name)
            else {
                return Err(BitmapError::NotFound(name).into());
            };
            if b.inconsistent {
                return Err(BitmapError::Inconsistent(name).into());
            }
            if b.memory.size() != size {
                return Err(BitmapError::DifferentSizes {
                    dest: size,
                    src: b.memory.size(),
                }
                .into());
            }
            found.push((i, n, name));
        }
        let old = if backup {
            let need =
                state.bitmap_memory() + bytes_for(size, granularity).map_err(BitmapError::from)?;
            if need > MAX_BITMAP_MEMORY {
                return Err(BitmapError::OutOfMemory {
                    need,
                    max: MAX_BITMAP_MEMORY,
                }
                .into());
            }
            let copy = SharedBitmap::create(size, granularity).map_err(BitmapError::from)?;
            if let Some(b) =
                (state.bitmaps_of(index).iter()).find(|b| b.node == node && b.name == target)
            {
                copy.merge_from(&b.memory).map_err(BitmapError::from)?;
            }
            Some(copy)
        } else {
            None
        };
        // Each source's marks, then or'ed into the target (a source may be the target).
        let marks = SharedBitmap::create(size, granularity).map_err(BitmapError::from)?;
        for (i, n, name) in &found {
            if let Some(b) = (state.bitmaps_of(*i).iter()).find(|b| b.node == *n && b.name == *name)
            {
                marks.merge_from(&b.memory).map_err(BitmapError::from)?;
            }
        }
        if let Some(b) = bitmap_in(state.bitmaps_of_mut(index), &node, target) {
            b.memory.merge_from(&marks).map_err(BitmapError::from)?;
        }
        Ok(old)
    }

    /// block-dirty-bitmap-merge.
    pub fn dirty_bitmap_merge(
        &self,
        node: &str,
        target: &str,
        sources: &[MergeSource],
    ) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        self.merge_bitmaps(node, target, sources, false).map(drop)
    }

    /// Puts `old` back as bitmap `name`'s memory (a merge undone), unless a daemon marks
    /// it: the writes it marked since the merge are in the memory only, and QEMU's
    /// transaction, which drains all I/O while it runs, has none. Such a bitmap keeps the
    /// merged marks: more than QEMU's, never fewer (an incremental backup from it copies
    /// more, never misses a write).
    fn unmerge(&self, node: &str, name: &str, old: SharedBitmap) {
        let index = {
            let mut state = self.state.lock();
            let Ok((index, node)) = state.find_bitmap(node, name) else {
                return;
            };
            let root = index.map(|i| state.disks[i].root.clone());
            let Some(b) = bitmap_in(state.bitmaps_of_mut(index), &node, name) else {
                return;
            };
            if b.recording && root.as_deref() == Some(b.node.as_str()) {
                log::info!("dirty bitmap {name}: its merge's abort keeps the merged marks");
                return;
            }
            b.memory = old;
            // A disk's daemon may hold it (a persistent one, to store): given the memory
            // put back.
            match index {
                Some(index) => Some(index),
                None => return,
            }
        };
        if let Err(e) = self.send_bitmaps(index) {
            log::warn!("dirty bitmap {name}: its merge undone; its daemon was not told: {e}");
        }
    }
}

/// The transaction action block-dirty-bitmap-merge: the target's marks from before
/// come back on abort.
pub struct MergeBitmapAction {
    node: String,
    target: String,
    sources: Vec<MergeSource>,
    old: Option<SharedBitmap>,
}

impl MergeBitmapAction {
    pub fn new(node: String, target: String, sources: Vec<MergeSource>) -> MergeBitmapAction {
        MergeBitmapAction {
            node,
            target,
            sources,
            old: None,
        }
    }
}

impl Action for MergeBitmapAction {
    fn kind(&self) -> &'static str {
        "block-dirty-bitmap-merge"
    }

    fn prepare(&mut self, layer: &BlockLayer) -> Result<(), BlockError> {
        self.old = layer.merge_bitmaps(&self.node, &self.target, &self.sources, true)?;
        Ok(())
    }

    fn abort(&mut self, layer: &BlockLayer) {
        if let Some(old) = self.old.take() {
            layer.unmerge(&self.node, &self.target, old);
        }
    }
}

/// The transaction action block-dirty-bitmap-add: the bitmap goes again on abort.
pub struct AddBitmapAction {
    new: NewBitmap,
    charge: Option<Charge>,
    /// Where it was added (its disk's index, None: loose).
    added: Option<Option<usize>>,
}

impl AddBitmapAction {
    pub fn new(new: NewBitmap, charge: Option<Charge>) -> AddBitmapAction {
        AddBitmapAction {
            new,
            charge,
            added: None,
        }
    }
}

impl Action for AddBitmapAction {
    fn kind(&self) -> &'static str {
        "block-dirty-bitmap-add"
    }

    fn prepare(&mut self, layer: &BlockLayer) -> Result<(), BlockError> {
        layer.add_bitmap(&self.new, self.charge.take())?;
        self.added = layer
            .state
            .lock()
            .find_bitmap(&self.new.node, &self.new.name)
            .ok()
            .map(|(i, _)| i);
        Ok(())
    }

    fn abort(&mut self, layer: &BlockLayer) {
        if let Some(index) = self.added.take() {
            let _gone = layer.take_bitmap(index, &self.new.node, &self.new.name);
            if let Err(e) = layer.send_bitmaps(index) {
                log::warn!(
                    "dirty bitmap {} taken back; its daemon was not told: {e}",
                    self.new.name
                );
            }
        }
    }
}

/// The transaction action block-dirty-bitmap-clear: the marks it cleared come back on
/// abort (with any made since).
pub struct ClearBitmapAction {
    node: String,
    name: String,
    old: Option<SharedBitmap>,
}

impl ClearBitmapAction {
    pub fn new(node: String, name: String) -> ClearBitmapAction {
        ClearBitmapAction {
            node,
            name,
            old: None,
        }
    }
}

impl Action for ClearBitmapAction {
    fn kind(&self) -> &'static str {
        "block-dirty-bitmap-clear"
    }

    fn prepare(&mut self, layer: &BlockLayer) -> Result<(), BlockError> {
        self.old = Some(layer.clear_bitmap(&self.node, &self.name)?);
        Ok(())
    }

    fn abort(&mut self, layer: &BlockLayer) {
        if let Some(old) = self.old.take() {
            layer.merge_back(&self.node, &self.name, &old);
        }
    }
}

/// The transaction action block-dirty-bitmap-remove (libvirt's after a pivot): checked
/// at prepare, removed at commit (so an abort has nothing to give back).
pub struct RemoveBitmapAction {
    node: String,
    name: String,
}

impl RemoveBitmapAction {
    pub fn new(node: String, name: String) -> RemoveBitmapAction {
        RemoveBitmapAction { node, name }
    }
}

impl Action for RemoveBitmapAction {
    fn kind(&self) -> &'static str {
        "block-dirty-bitmap-remove"
    }

    fn prepare(&mut self, layer: &BlockLayer) -> Result<(), BlockError> {
        let state = layer.state.lock();
        let (index, found) = state.find_bitmap(&self.node, &self.name)?;
        state.bitmap_free(index, &found, &self.name)
    }

    fn commit(&mut self, layer: &BlockLayer) {
        if let Err(e) = layer.dirty_bitmap_remove_unlocked(&self.node, &self.name) {
            log::warn!("dirty bitmap {}: removing it: {e}", self.name);
        }
    }

    fn abort(&mut self, _layer: &BlockLayer) {}
}
