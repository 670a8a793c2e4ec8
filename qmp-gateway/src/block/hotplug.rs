//! The disks device_add and device_del make and remove: a virtio-blk-pci over a node
//! (blockdev-add's or --blockdev's, named by drive=), with its own block daemon started,
//! sandboxed and supervised as a --drive disk's (a --device disk is made the same way); and any disk leaving once the guest let its device
//! go. QEMU's rules: a disk over a node has an anonymous BlockBackend (query-block's
//! "device" is ""), and the node stays when its device goes (blockdev-del removes it);
//! a --drive disk's drive goes with its device, nodes and all (QEMU's auto-del).

use std::os::fd::{AsFd, OwnedFd};

use ipc::{DiskLaunch, OnError};

use super::error::BlockError;
use super::lock::{self, Perms};
use super::options::Driver;
use super::{BlockLayer, NewDisk, State};

/// A disk device_add asks for.
pub struct DeviceDisk {
    /// drive=: a node name (or a drive's name, which is always in use here).
    pub drive: String,
    pub qdev_id: Option<String>,
    pub qom_path: String,
    pub serial: Option<String>,
    pub queues: u32,
    /// The iothread object it is placed on (iothread=): the first disk on one is served
    /// by the daemon the iothread started (iothreads.rs).
    pub iothread: Option<String>,
}

/// How QEMU names a disk's BlockBackend as a user of a node in its errors.
fn user(disk: &super::disk::Disk) -> String {
    if disk.drive {
        format!("block device '{}'", disk.id)
    } else {
        format!("block device '{}'", disk.qdev)
    }
}

impl State {
    /// QEMU's refusals of drive= for a device whose backend is `new_backend` (its QOM
    /// path): a drive's name (every drive here has its device), a node that is not
    /// there, or a node tree that shares a node with a disk's (QEMU's 'write'
    /// permission conflict, named as QEMU names it).
    /// Returns the root node the disk is to be over.
    fn check_drive(&self, drive: &str, new_backend: &str) -> Result<String, BlockError> {
        if self.disk_by_id(drive).is_some() {
            return Err(BlockError::DriveInUse(drive.to_string()));
        }
        let root = match self.named_drive(drive) {
            Some(d) if d.attached => return Err(BlockError::DriveInUse(drive.to_string())),
            Some(d) => d.root.clone().ok_or(BlockError::DriveEmpty)?,
            None if self.graph.node(drive).is_none() => {
                return Err(BlockError::DriveNotFound(drive.to_string()))
            }
            None => drive.to_string(),
        };
        let named = drive;
        let drive = root.as_str();
        // A drive's BlockBackend is named as the drive is; an unattached one takes no
        // permission on its node (QEMU lets a device use the node beside it).
        let new_device = match self.named_drive(named) {
            Some(_) => format!("block device '{named}'"),
            None => format!("block device '{new_backend}'"),
        };
        let new_tree = self.graph.tree(drive);
        let parent = |node: &str| {
            self.graph
                .parent_of(node)
                .map(|p| format!("node '{}'", p.name))
                .unwrap_or_default()
        };
        let conflict = |node: &str, required: String, required_role, unshared: String| {
            BlockError::PermissionConflict {
                node: node.to_string(),
                required,
                required_role,
                unshared,
                unshared_role: "root",
            }
        };
        for disk in &self.disks {
            if disk.root == drive {
                return Err(conflict(drive, user(disk), "root", new_device));
            }
            if self.graph.tree(&disk.root).iter().any(|n| n == drive) {
                // The node under a disk's root: its parent there uses it.
                return Err(conflict(drive, parent(drive), "file", new_device));
            }
            if new_tree.contains(&disk.root) {
                // A disk's root under the new one's.
                return Err(conflict(&disk.root, parent(&disk.root), "file", user(disk)));
            }
        }
        Ok(root)
    }

    /// Drops the locks a disk took on its top image beyond what its node holds alone
    /// (a raw node holds none; a qcow2 node holds the same as its disk): the node may
    /// go to another device, or be deleted.
    pub(super) fn release_top(&self, root: &str, read_only: bool) {
        let Some(image) = self.graph.image_node(root) else {
            return;
        };
        if image.driver == Driver::Qcow2 || self.graph.inactive() {
            return;
        }
        let Some(proto) = self.graph.protocol_of(&image.name) else {
            return;
        };
        if let (true, Some(fd)) = (proto.locking, proto.image.as_ref()) {
            let (take, share) = Perms::for_disk(read_only);
            lock::unlock(fd.as_fd(), take, share);
        }
    }
}

impl BlockLayer {
    /// device_add's drive= checked as QEMU checks it, before the device takes a slot.
    pub fn check_drive(&self, drive: &str, new_backend: &str) -> Result<(), BlockError> {
        self.state.lock().check_drive(drive, new_backend).map(drop)
    }

    /// device_add's disk: a disk over the node `d.drive` names, its daemon started;
    /// returns what vmm-core is told (the device in `slot`) and its end of the daemon's
    /// socket. On failure nothing stays but the node, as it was. A VM that had a disk
    /// hot-added may get more: the next one's daemon is started ahead (a start is most
    /// of a device_add's time otherwise).
    pub fn add_device_disk(
        &self,
        d: DeviceDisk,
        slot: u8,
    ) -> Result<(DiskLaunch, OwnedFd), BlockError> {
        let added = self.add_node_disk(d, slot)?;
        let spares = &self.hooks.spares;
        spares.keep_one(&self.daemon_binary, self.hooks.sandbox.mode);
        Ok(added)
    }

    /// A --device disk (the launch's): as device_add's, without a daemon started ahead.
    pub fn add_launch_disk(
        &self,
        d: DeviceDisk,
        slot: u8,
    ) -> Result<(DiskLaunch, OwnedFd), BlockError> {
        self.add_node_disk(d, slot)
    }

    /// A disk over the node `d.drive` names in `slot`, its daemon started.
    fn add_node_disk(&self, d: DeviceDisk, slot: u8) -> Result<(DiskLaunch, OwnedFd), BlockError> {
        let _changes = self.changes.lock();
        let mut state = self.state.lock();
        let root = state.check_drive(&d.drive, &format!("{}/virtio-backend", d.qom_path))?;
        let qdev_id = d.qdev_id.unwrap_or_default();
        // A drive_add drive: the disk bears its name, serial and error actions.
        let (drive, born) = match state.named_drive(&d.drive) {
            Some(n) => (Some(n.spec.clone()), Some(n.born)),
            None => (None, None),
        };
        let new = NewDisk {
            // Its BlockBackend is the drive's, or anonymous: then the layer knows it by
            // its device's path.
            id: drive
                .as_ref()
                .map_or(d.qom_path.clone(), |_| d.drive.clone()),
            drive: drive.is_some(),
            qdev_id: qdev_id.clone(),
            root: root.clone(),
            queues: d.queues,
            // QEMU's virtio-blk has no serial unless given one (or its drive has one).
            serial: (d.serial.or_else(|| drive.as_ref()?.serial.clone())).unwrap_or_default(),
            stats_intervals: drive
                .as_ref()
                .map_or(Vec::new(), |s| s.stats_intervals.clone()),
            qom_path: d.qom_path.clone(),
            // The drive's rerror= and werror=, else QEMU's defaults for the device's.
            on_read_error: drive.as_ref().map_or(OnError::Report, |s| s.on_read_error),
            on_write_error: drive.as_ref().map_or(OnError::Enospc, |s| s.on_write_error),
            iothread: d.iothread.clone(),
            born,
        };
        let id = new.id.clone();
        match self.attach(&mut state, new) {
            Ok((index, stream)) => {
                if let Some(n) = state.drives.iter_mut().find(|n| n.id == d.drive) {
                    n.attached = true;
                    // Its limits are the disk's now.
                    n.throttle = None;
                }
                Ok((
                    DiskLaunch {
                        index,
                        slot: Some(slot),
                        id,
                        qdev_id,
                        max_queues: d.queues,
                    },
                    stream,
                ))
            }
            Err(e) => {
                let read_only = state.graph.node(&root).is_some_and(|n| n.read_only);
                state.release_top(&root, read_only);
                drop(state);
                // The iothread's daemon may have gone with the start that failed.
                if let Some(t) = &d.iothread {
                    self.iothread_unused(t);
                }
                Err(e)
            }
        }
    }

    /// Disk `id` is gone from the guest (vmm-core let go of it): its daemon stops, and
    /// a --drive's nodes go with it while a node device_add named stays, free. Returns
    /// whether there was such a disk.
    pub fn remove_disk(&self, id: &str) -> bool {
        let _changes = self.changes.lock();
        let Some(mut disk) = ({
            let mut state = self.state.lock();
            let at = state.disks.iter().position(|d| d.id == id);
            at.map(|at| state.disks.remove(at))
        }) else {
            return false;
        };
        // Stopped outside the lock: it may take its grace period.
        if let Some(how) = disk.stop() {
            log::info!("disk {id}: block daemon stopped ({how})");
        }
        let mut state = self.state.lock();
        if state.jobs.iter().any(|j| j.disk == disk.id) {
            log::warn!("disk {id}: its block job ends with its daemon");
            state.jobs.retain(|j| j.disk != disk.id);
        }
        if let Some((_, group)) = &disk.throttle {
            state.drop_group_if_unused(group);
        }
        // A drive_add drive goes with its device (QEMU's auto-del).
        state.drives.retain(|n| n.id != disk.id);
        if disk.drive {
            let mut thresholds = self.thresholds.lock();
            for n in &disk.nodes {
                thresholds.remove(n);
            }
            drop(thresholds);
            state.graph.remove_tree(&disk.root);
        } else {
            state.release_top(&disk.root, disk.config.read_only);
            // Its bitmaps stay on the node, loose (settled below).
            state.loose_bitmaps.append(&mut disk.bitmaps);
            // A node only a device held goes with it (one a drive_del'ed drive left).
            let orphan = state
                .graph
                .node(&disk.root)
                .is_some_and(|n| !n.monitor_owned)
                && !state.drive_roots().any(|r| r == disk.root)
                && !state.disks.iter().any(|d| d.root == disk.root);
            if orphan {
                state.graph.remove_tree(&disk.root);
            }
            state.settle_bitmaps();
        }
        let _ = std::fs::remove_file(&disk.socket);
        drop(state);
        if let Some(t) = &disk.iothread {
            self.iothread_unused(t);
        }
        log::info!("disk {id}: removed");
        true
    }
}
