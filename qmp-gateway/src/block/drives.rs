//! The drives HMP drive_add makes (QEMU's -drive if=none): named BlockBackends without a
//! device, over a node tree opened as a --drive's (its medium) or over none. device_add's
//! drive= attaches one to a new virtio-blk disk, which then bears the drive's name and
//! takes the drive with it when its device goes (QEMU's auto-del); drive_del removes an
//! unattached one, nodes and all, and leaves a disk whose drive it deletes (drive_add's or
//! --drive's) without a medium; an unattached one has no tray, and eject takes its medium
//! out. This module holds what is done with their records
//! (drive_record.rs), QEMU's unit numbers (an unnamed drive is noneN, N the lowest unit no
//! if=none drive has), the name rules they share with --drive names and node names, and
//! their bound.

use ipc::{BlockRequest, ImageFormat, ImageLayer, OnError, StoredBitmaps};
use serde_json::{json, Value};

use super::drive::DriveText;
use super::drive_record::{NamedDrive, MAX_DRIVES};
use super::error::{BlockError, JobError};
use super::graph::{ChargeImage, Graph};
use super::options::{Driver, NodeOptions};
use super::queries::with_bitmaps;
use super::{info, BlockLayer, DiskRef, State};
use crate::fdstore::FdSets;

/// A tray command (`BlockLayer::tray`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayAction {
    Open,
    Close,
    /// eject, blockdev-remove-medium: the medium out.
    Eject,
}

impl State {
    /// The drive_add drive `id`.
    pub(super) fn named_drive(&self, id: &str) -> Option<&NamedDrive> {
        self.drives.iter().find(|d| d.id == id)
    }

    /// Whether `name` is a BlockBackend's name: a drive_add drive's, or a disk's (one
    /// whose drive was deleted keeps it while its device is there).
    pub(super) fn backend_named(&self, name: &str) -> bool {
        self.named_drive(name).is_some() || self.disk_by_layer_id(name).is_some()
    }

    /// The roots of the node trees unattached drives hold (in use, as a disk's root).
    pub(super) fn drive_roots(&self) -> impl Iterator<Item = &str> {
        (self.drives.iter())
            .filter(|d| !d.attached)
            .filter_map(|d| d.root.as_deref())
    }

    /// The lowest unit no drive has.
    fn free_unit(&self) -> u32 {
        (0..)
            .find(|u| self.drives.iter().all(|d| d.unit != *u))
            .unwrap_or(0)
    }
}

impl BlockLayer {
    /// HMP drive_add's drive (`text`, an if=none drive): its name checked (QEMU's words),
    /// its image opened as a --drive's, by `fdsets` for /dev/fdset/N, each image charged
    /// with `charge`. Returns its id.
    pub fn drive_add(
        &self,
        text: &DriveText,
        fdsets: &FdSets,
        charge: &mut ChargeImage,
    ) -> Result<String, BlockError> {
        let spec = &text.spec;
        let mut state = self.state.lock();
        if let Some(id) = &spec.id {
            if !crate::ids::well_formed(id) {
                return Err(BlockError::DriveIdMalformed);
            }
            if state.backend_named(id) {
                return Err(BlockError::DuplicateDriveId(id.clone()));
            }
        }
        if state.drives.len() >= MAX_DRIVES {
            return Err(BlockError::TooManyDrives(MAX_DRIVES));
        }
        let unit = state.free_unit();
        let id = spec.id.clone().unwrap_or_else(|| format!("none{unit}"));
        if state.backend_named(&id) {
            return Err(BlockError::BackendExists(id));
        }
        if state.graph.node(&id).is_some() {
            return Err(BlockError::DriveNameIsNode(id));
        }
        let root = match (spec.file.is_empty(), text.format) {
            // QEMU's drive without a medium keeps no node options.
            (true, Some(_)) => return Err(BlockError::NoFileForFormat),
            (true, None) if text.node_options || !text.unknown.is_empty() => {
                return Err(BlockError::NoDriverNorFile)
            }
            (true, None) => None,
            (false, None) => return Err(BlockError::FormatNotGiven),
            (false, Some(format)) => {
                if let Some(key) = text.unknown.first() {
                    return Err(BlockError::UnsupportedOption {
                        format: format.name(),
                        key: key.clone(),
                    });
                }
                let names: Vec<String> = (state.disks.iter().map(|d| d.id.clone()))
                    .chain(state.drives.iter().map(|d| d.id.clone()))
                    .chain([id.clone()])
                    .collect();
                let root = state.graph.add(
                    &spec.node_options(),
                    false,
                    &|n| names.iter().any(|i| i == n),
                    &mut Self::opener(fdsets),
                    charge,
                )?;
                Some(root)
            }
        };
        let born = state.born();
        state.drives.push(NamedDrive {
            born,
            id: id.clone(),
            unit,
            root,
            spec: spec.clone(),
            attached: false,
            throttle: None,
        });
        Ok(id)
    }

    /// HMP drive_del `id`: a node's name deletes the node (blockdev-del, QEMU 7.2's
    /// first try); an unattached drive goes with its nodes, unless a device uses them;
    /// the drive of a disk (drive_add's or --drive's) leaves the disk without a medium.
    pub fn drive_del(&self, id: &str) -> Result<(), BlockError> {
        if self.node_exists(id) {
            return self.blockdev_del(id);
        }
        let mut state = self.state.lock();
        if state.disk_by_id(id).is_some() {
            drop(state);
            return self.remove_medium(id);
        }
        let Some(at) = state.drives.iter().position(|d| d.id == id) else {
            return Err(BlockError::DeviceNotFound(id.to_string()));
        };
        if let Some(root) = &state.drives[at].root {
            state.drive_busy(id, root)?;
        }
        let drive = state.drives.remove(at);
        if let Some((_, group)) = &drive.throttle {
            state.drop_group_if_unused(group);
        }
        drop(state);
        if let Some(root) = &drive.root {
            self.close_drive_medium(root);
        }
        Ok(())
    }

    /// The nodes of an unattached drive's medium (`root` down) go, their persistent
    /// bitmaps stored first (QEMU stores them as it closes the images), unless a device
    /// uses them by a node's name or another node has the root as a child: then they
    /// stay until that goes.
    fn close_drive_medium(&self, root: &str) {
        let used = |state: &State| {
            state
                .disks
                .iter()
                .any(|d| d.nodes.iter().any(|n| n == root))
                || state.graph.has_parent(root)
        };
        if used(&self.state.lock()) {
            return;
        }
        self.store_loose(root);
        let mut state = self.state.lock();
        if used(&state) {
            return;
        }
        let nodes = state.graph.tree(root);
        let mut thresholds = self.thresholds.lock();
        for n in &nodes {
            thresholds.remove(n);
        }
        drop(thresholds);
        state.graph.remove_tree(root);
        // Their bitmaps go with them.
        state.settle_bitmaps();
    }

    /// blockdev-change-medium of `disk`: a drive no device uses (it has no tray) takes a
    /// new medium, `filename` opened (`format` given: formats are never guessed) with the
    /// drive's options as QEMU's root state keeps them (cache, discard, detect-zeroes,
    /// locking; read-only as `read_only` says, else as its medium is, or was), under an
    /// automatic node name; its old medium goes out first (as eject's). Every disk here
    /// is fixed (`not_removable`), which QEMU finds out after it opened the new medium: a
    /// file it cannot open is that error first (without a format, which QEMU would
    /// guess, the disk's refusal).
    pub fn change_medium(
        &self,
        disk: DiskRef,
        (filename, format, read_only): (&str, Option<&str>, Option<bool>),
        fdsets: &FdSets,
        charge: &mut ChargeImage,
    ) -> Result<(), BlockError> {
        let bare = |state: &State| match disk {
            DiskRef::Device(name) => {
                (state.drives.iter()).position(|d| d.id == name && !d.attached)
            }
            DiskRef::Qdev(_) => None,
        };
        // (The lock let go before not_removable takes it.)
        let is_bare = bare(&self.state.lock()).is_some();
        let fixed = match is_bare {
            true => None,
            false => match self.not_removable(disk) {
                e @ BlockError::DeviceNotFound(_) => return Err(e),
                e => Some(e),
            },
        };
        let format = match (format, &fixed) {
            (Some(f), _) => f,
            (None, Some(_)) => return Err(fixed.unwrap_or(BlockError::FormatNotGiven)),
            (None, None) => return Err(BlockError::FormatNotGiven),
        };
        let driver =
            Driver::format(format).ok_or_else(|| BlockError::UnknownDriver(format.into()))?;
        let mut state = self.state.lock();
        let (Some(at), None) = (bare(&state), &fixed) else {
            // A fixed disk: the medium is opened as a drive's would be, then refused.
            let opts = NodeOptions::over(driver, NodeOptions::file(filename.to_string()));
            let new =
                (state.graph).add(&opts, false, &|_| false, &mut Self::opener(fdsets), charge)?;
            state.graph.remove_tree(&new);
            return Err(fixed.unwrap_or_else(|| BlockError::DeviceNotFound(disk.name().into())));
        };
        let spec = &state.drives[at].spec;
        // Retained: the medium's, else the drive's as its last medium left it.
        let current = (state.drives[at].root.as_deref()).and_then(|r| state.graph.node(r));
        let read_only = read_only.unwrap_or(current.map_or(spec.read_only, |n| n.read_only));
        let file = NodeOptions {
            locking: Some(spec.locking),
            ..NodeOptions::file(filename.to_string())
        };
        let opts = NodeOptions {
            read_only: Some(read_only),
            direct: Some(spec.direct),
            no_flush: Some(spec.no_flush),
            discard_unmap: Some(spec.discard_unmap),
            detect_zeroes: Some(spec.detect_zeroes),
            ..NodeOptions::over(driver, file)
        };
        let names: Vec<String> = (state.disks.iter().map(|d| d.id.clone()))
            .chain(state.drives.iter().map(|d| d.id.clone()))
            .collect();
        let new = state.graph.add(
            &opts,
            false,
            &|n| names.iter().any(|i| i == n),
            &mut Self::opener(fdsets),
            charge,
        )?;
        if let Some(root) = &state.drives[at].root {
            if let Err(e) = state.drive_busy(disk.name(), root) {
                state.graph.remove_tree(&new);
                return Err(e);
            }
        }
        let old = state.drives[at].root.replace(new);
        state.drives[at].spec.read_only = read_only;
        drop(state);
        if let Some(old) = &old {
            self.close_drive_medium(old);
        }
        Ok(())
    }

    /// eject, blockdev-open-tray, -close-tray and -remove-medium of `disk`: a drive no
    /// device uses has no tray (QEMU: no device, no tray), so opening or closing it does
    /// nothing, and an eject or a removal takes its medium out (its nodes go, as
    /// drive_del's; its limits stay); every disk here is fixed (`not_removable`).
    pub fn tray(&self, disk: DiskRef, action: TrayAction) -> Result<(), BlockError> {
        let root = {
            let mut state = self.state.lock();
            let drive = match disk {
                DiskRef::Device(name) => {
                    (state.drives.iter()).position(|d| d.id == name && !d.attached)
                }
                DiskRef::Qdev(_) => None,
            };
            let Some(at) = drive else {
                drop(state);
                return Err(self.not_removable(disk));
            };
            if action != TrayAction::Eject {
                return Ok(());
            }
            if let Some(root) = &state.drives[at].root {
                state.drive_busy(disk.name(), root)?;
            }
            state.drives[at].root.take()
        };
        if let Some(root) = &root {
            self.close_drive_medium(root);
        }
        Ok(())
    }

    /// drive_del of disk `id`'s drive: its daemon closes the images and serves no medium
    /// from then on (`BlockRequest::RemoveMedium`); the disk's BlockBackend is anonymous
    /// (its id stays taken while its device is there, as QEMU's drive options), its nodes
    /// go, and a daemon started later for it serves no medium either. Its I/O errors are
    /// reported from then on (QEMU's drive_del: further I/O must not pause the guest).
    fn remove_medium(&self, id: &str) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let link = {
            let state = self.state.lock();
            let disk =
                (state.disk_by_id(id)).ok_or_else(|| BlockError::DeviceNotFound(id.into()))?;
            if let Some(job) = state.job_of_disk(&disk.id) {
                // QEMU names the node at the top by its BlockBackend's name.
                return Err(JobError::Busy {
                    node: id.to_string(),
                    kind: job.kind,
                }
                .into());
            }
            disk.daemon.as_ref().map(|d| d.link.clone())
        };
        // A disk whose daemon is down gets no medium from the next one.
        if let Some(link) = link {
            link.request(BlockRequest::RemoveMedium, &[])?;
        }
        let mut state = self.state.lock();
        let size = {
            let disk =
                (state.disk_by_id(id)).ok_or_else(|| BlockError::DeviceNotFound(id.into()))?;
            medium_size(&state.graph, &disk.root)
        };
        let Some(disk) = state.disks.iter_mut().find(|d| d.drive && d.id == id) else {
            return Err(BlockError::DeviceNotFound(id.into()));
        };
        let (root, nodes) = (
            std::mem::take(&mut disk.root),
            std::mem::take(&mut disk.nodes),
        );
        disk.drive = false;
        disk.images.clear();
        disk.bitmaps.clear();
        disk.stored_loaded = None;
        disk.config.layers = vec![ImageLayer {
            node_name: disk.config.node_name.clone(),
            format: ImageFormat::NoMedium { size },
            filename: String::new(),
        }];
        disk.config.on_read_error = OnError::Report;
        disk.config.on_write_error = OnError::Report;
        disk.config.stored_bitmaps = StoredBitmaps::NotKept;
        disk.health.medium_removed();
        state.drives.retain(|d| d.id != id);
        let mut thresholds = self.thresholds.lock();
        for n in &nodes {
            thresholds.remove(n);
        }
        drop(thresholds);
        state.graph.remove_tree(&root);
        log::info!("disk {id}: its drive deleted, no medium");
        Ok(())
    }

    /// query-block's entries of the drives no device uses: removable, no device, their
    /// medium (if any) as "inserted".
    pub(super) fn unattached_drives(&self, state: &State) -> Vec<(u64, Value)> {
        (state.drives.iter().filter(|d| !d.attached))
            .map(|d| {
                let mut info = json!({
                    "device": d.id,
                    "locked": false,
                    "removable": true,
                    "type": "unknown",
                });
                let node = d.root.as_deref().and_then(|r| state.graph.node(r));
                if let Some(node) = node {
                    let threshold = self.threshold(&node.name);
                    let throttle = d.throttle.as_ref().map(|(l, g)| (l, g.as_str()));
                    let mut inserted = info::node_info(&state.graph, node, throttle, threshold);
                    with_bitmaps(&mut inserted, state.bitmap_infos(&node.name));
                    info["inserted"] = inserted;
                }
                (d.born, info)
            })
            .collect()
    }
}

/// The size the guest sees of the medium under `root`.
fn medium_size(graph: &Graph, root: &str) -> u64 {
    if let Some(q) = graph.image_node(root).and_then(|n| n.qcow2.as_ref()) {
        return q.virtual_size;
    }
    (graph.protocol_of(root).and_then(|p| p.image.as_deref()))
        .map_or(0, |fd| info::image_sizes(fd).0)
}
