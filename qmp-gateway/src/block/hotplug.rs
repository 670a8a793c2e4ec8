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
    fn check_drive(&self, drive: &str, new_backend: &str) -> Result<(), BlockError> {
        if self.disk_by_id(drive).is_some() {
            return Err(BlockError::DriveInUse(drive.to_string()));
        }
        if self.graph.node(drive).is_none() {
            return Err(BlockError::DriveNotFound(drive.to_string()));
        }
        let new_device = format!("block device '{new_backend}'");
        let new_tree = self.graph.tree(drive);
        let parent = |node: &str| {
            self.graph
                .parent_of(node)
                .map(|p| format!("node '{}'", p.name))
                .unwrap_or_default()
        };
        for disk in &self.disks {
            let conflict = |node: &str, required: String, required_role, unshared: String| {
                BlockError::PermissionConflict {
                    node: node.to_string(),
                    required,
                    required_role,
                    unshared,
                    unshared_role: "root",
                }
            };
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
        Ok(())
    }

    /// Drops the locks a disk took on its top image beyond what its node holds alone
    /// (a raw node holds none; a qcow2 node holds the same as its disk): the node may
    /// go to another device, or be deleted.
    fn release_top(&self, root: &str, read_only: bool) {
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
        self.state.lock().check_drive(drive, new_backend)
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
        state.check_drive(&d.drive, &format!("{}/virtio-backend", d.qom_path))?;
        let qdev_id = d.qdev_id.unwrap_or_default();
        let new = NewDisk {
            // Its BlockBackend is anonymous: the layer knows it by its device's path.
            id: d.qom_path.clone(),
            drive: false,
            qdev_id: qdev_id.clone(),
            root: d.drive.clone(),
            queues: d.queues,
            // QEMU's virtio-blk has no serial unless given one.
            serial: d.serial.unwrap_or_default(),
            stats_intervals: Vec::new(),
            qom_path: d.qom_path.clone(),
            // QEMU's defaults for the device's rerror= and werror=.
            on_read_error: OnError::Report,
            on_write_error: OnError::Enospc,
            iothread: d.iothread.clone(),
        };
        match self.attach(&mut state, new) {
            Ok((index, stream)) => Ok((
                DiskLaunch {
                    index,
                    slot: Some(slot),
                    id: d.qom_path,
                    qdev_id,
                    max_queues: d.queues,
                },
                stream,
            )),
            Err(e) => {
                let read_only = state.graph.node(&d.drive).is_some_and(|n| n.read_only);
                state.release_top(&d.drive, read_only);
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
            if state.group_members(group).is_empty() {
                state.groups.remove(group);
            }
        }
        if disk.drive {
            let mut thresholds = self.thresholds.lock();
            for n in &disk.nodes {
                thresholds.remove(n);
            }
            drop(thresholds);
            state.graph.remove_tree(&disk.root);
        } else {
            state.release_top(&disk.root, disk.config.read_only);
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
