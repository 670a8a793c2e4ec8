//! The drives HMP drive_add makes (QEMU's -drive if=none): named BlockBackends without a
//! device, over a node tree opened as a --drive's (its medium) or over none. device_add's
//! drive= attaches one to a new virtio-blk disk, which then bears the drive's name and
//! takes the drive with it when its device goes (QEMU's auto-del); drive_del removes an
//! unattached one, nodes and all. This module owns their records, QEMU's unit numbers
//! (an unnamed drive is noneN, N the lowest unit no if=none drive has), the name rules
//! they share with --drive names and node names, and their bound.

use serde_json::{json, Value};

use super::drive::{DriveSpec, DriveText};
use super::error::BlockError;
use super::graph::ChargeImage;
use super::{info, BlockLayer, State};
use crate::fdstore::FdSets;

/// The most drive_add drives there may be at once (attached ones included): each holds
/// its images' fds (also charged to the client's fd budget) and a record.
pub const MAX_DRIVES: usize = 64;

/// One drive_add drive.
pub struct NamedDrive {
    pub id: String,
    /// Its unit among the if=none drives (QEMU's DriveInfo unit).
    pub unit: u32,
    /// The root of its node tree; None: no medium.
    pub root: Option<String>,
    /// What was given (serial, error actions: the disk it is attached to takes them).
    pub spec: DriveSpec,
    /// A disk (the layer knows it by the drive's id) uses it.
    pub attached: bool,
    /// Its BlockBackend's place among them (`Disk::born`).
    pub born: u64,
}

impl State {
    /// The drive_add drive `id`.
    pub(super) fn named_drive(&self, id: &str) -> Option<&NamedDrive> {
        self.drives.iter().find(|d| d.id == id)
    }

    /// Whether `name` is a BlockBackend's name: a drive_add drive's, or a named disk's.
    pub(super) fn backend_named(&self, name: &str) -> bool {
        self.named_drive(name).is_some() || self.disk_by_id(name).is_some()
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
        });
        Ok(id)
    }

    /// HMP drive_del `id`: a node's name deletes the node (blockdev-del, QEMU 7.2's
    /// first try); an unattached drive goes with its nodes, unless a device uses them.
    pub fn drive_del(&self, id: &str) -> Result<(), BlockError> {
        if self.node_exists(id) {
            return self.blockdev_del(id);
        }
        let mut state = self.state.lock();
        let Some(at) = state.drives.iter().position(|d| d.id == id) else {
            if state.disk_by_id(id).is_some() {
                return Err(BlockError::DriveAttached(id.to_string()));
            }
            return Err(BlockError::DeviceNotFound(id.to_string()));
        };
        if state.drives[at].attached {
            return Err(BlockError::DriveAttached(id.to_string()));
        }
        let drive = state.drives.remove(at);
        // A device over its node (by the node's name) keeps the node until it goes.
        let root = drive
            .root
            .filter(|r| !state.disks.iter().any(|d| d.nodes.contains(r)));
        if let Some(root) = &root {
            let nodes = state.graph.tree(root);
            let mut thresholds = self.thresholds.lock();
            for n in &nodes {
                thresholds.remove(n);
            }
            drop(thresholds);
            state.graph.remove_tree(root);
        }
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
                    info["inserted"] = info::node_info(&state.graph, node, None, threshold);
                }
                (d.born, info)
            })
            .collect()
    }
}
