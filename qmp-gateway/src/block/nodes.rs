//! What the block commands do to nodes and disks: blockdev-add and blockdev-del on the
//! graph, block_resize (by the disk's daemon, or on the image itself, with QEMU's limits
//! and its resize lock), and the answers
//! a fixed, unencrypted virtio-blk disk gives to the removable-medium and password
//! commands.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;

use ipc::BlockRequest;

use super::disk::BlockProtocol;
use super::error::BlockError;
use super::graph::ChargeImage;
use super::lock::{self, Perms};
use super::options::{Backing, ChildRef, Driver, NodeOptions, Source};
use super::{info, BlockLayer, DiskRef, State};
use crate::children::link::Link;
use crate::fdstore::FdSets;

/// The largest size QEMU's block layer addresses (BDRV_MAX_LENGTH: int64's largest,
/// down to a whole 1 GiB), and what it answers beyond it.
const MAX_LENGTH: i64 = i64::MAX & !((1 << 30) - 1);

/// What a resize acts through: the daemon of the disk using the node, or the image.
enum Target {
    /// A disk's daemon: (its link, the disk's index and id).
    Daemon(Arc<Link<BlockProtocol>>, u32, String),
    Image(Arc<OwnedFd>),
}

/// Resizes an image nobody serves (a device cannot grow).
fn resize_image(image: &OwnedFd, bytes: u64) -> Result<(), BlockError> {
    let file = std::fs::File::from(image.try_clone().map_err(BlockError::DupImage)?);
    let (current, _) = info::image_sizes(image);
    let is_device = file
        .metadata()
        .is_ok_and(|m| m.file_type().is_block_device());
    if is_device {
        if bytes > current {
            return Err(BlockError::CannotGrowDevice);
        }
        return Ok(());
    }
    file.set_len(bytes).map_err(BlockError::Resize)
}

impl<'a> DiskRef<'a> {
    /// QMP's "exactly one of device and id".
    pub fn exactly_one(device: Option<&'a str>, id: Option<&'a str>) -> Result<Self, BlockError> {
        match (device, id) {
            (Some(d), None) => Ok(DiskRef::Device(d)),
            (None, Some(i)) => Ok(DiskRef::Qdev(i)),
            _ => Err(BlockError::NeedDeviceOrId),
        }
    }
}

impl State {
    /// `opts` with each child it names by reference that is no node's name but a
    /// BlockBackend's with a medium (a disk's, a drive's) named by that root node.
    fn resolve_references(&self, opts: &mut NodeOptions) {
        let child = match &mut opts.source {
            Source::Child(c) => Some(c),
            Source::Path(_) => None,
        };
        let backing = match &mut opts.backing {
            Backing::Node(c) => Some(c),
            Backing::FromImage | Backing::None => None,
        };
        for c in child.into_iter().chain(backing) {
            match c {
                ChildRef::Node(name) if self.graph.node(name).is_none() => {
                    if let Ok(root) = self.lookup_node(Some(name), None) {
                        *name = root;
                    }
                }
                ChildRef::Node(_) => {}
                ChildRef::Inline(inline) => self.resolve_references(inline),
            }
        }
    }
}

impl BlockLayer {
    /// blockdev-add: the nodes `opts` describes (images opened from paths or fd sets),
    /// each image's fd charged with `charge` (the client's fd budget) while its node lives.
    pub fn blockdev_add(
        &self,
        opts: &NodeOptions,
        fdsets: &FdSets,
        charge: &mut ChargeImage,
    ) -> Result<(), BlockError> {
        let mut state = self.state.lock();
        let ids: Vec<String> = (state.disks.iter().map(|d| d.id.clone()))
            .chain(state.drives.iter().map(|d| d.id.clone()))
            .collect();
        // A child named by reference: QEMU's bdrv_lookup_bs takes a BlockBackend's name
        // for its root node.
        let mut opts = opts.clone();
        state.resolve_references(&mut opts);
        let added = state.graph.add(
            &opts,
            true,
            &|n| ids.iter().any(|i| i == n),
            &mut Self::opener(fdsets),
            charge,
        );
        match added {
            // A child named by reference: QEMU looks the name up as a BlockBackend's too.
            Err(BlockError::NoDeviceNorNode { device, node }) if device == node => {
                Err(state.no_node(&device))
            }
            added => added.map(|_| ()),
        }
    }

    /// blockdev-del: a node blockdev-add made, unless something uses it.
    pub fn blockdev_del(&self, name: &str) -> Result<(), BlockError> {
        let check = |state: &State| -> Result<Vec<String>, BlockError> {
            state.job_target_in_use(name)?;
            let roots: Vec<String> = (state.disks.iter().map(|d| d.root.clone()))
                .chain(state.drive_roots().map(str::to_string))
                .collect();
            state
                .graph
                .check_remove(name, &|n| roots.iter().any(|r| r == n))?;
            Ok(roots)
        };
        check(&self.state.lock())?;
        // QEMU stores the node's persistent bitmaps in its image as it closes it.
        self.store_loose(name);
        let mut state = self.state.lock();
        let roots = check(&state)?;
        state
            .graph
            .remove(name, &|n| roots.iter().any(|r| r == n))?;
        // The bitmaps of the nodes deleted go with them (nobody marked into them).
        state.settle_bitmaps();
        self.thresholds.lock().remove(name);
        Ok(())
    }

    /// block_resize: resizes a node to `size` bytes (rounded up to whole sectors);
    /// returns the index of the disk whose guest must be told.
    pub fn block_resize(
        &self,
        device: Option<&str>,
        node: Option<&str>,
        size: i64,
    ) -> Result<Option<u32>, BlockError> {
        let _changes = self.changes.lock();
        let target = {
            let state = self.state.lock();
            let name = state.lookup_node(device, node)?;
            if size < 0 {
                return Err(BlockError::NegativeSize);
            }
            if state.job_holding(&name).is_some() {
                // QEMU names the device argument, "(null)" without one.
                return Err(BlockError::DeviceInUse(
                    device.unwrap_or("(null)").to_string(),
                ));
            }
            let read_only = state.graph.node(&name).is_some_and(|n| n.read_only);
            if read_only {
                return Err(BlockError::ImageReadOnly);
            }
            if size > MAX_LENGTH {
                return Err(BlockError::SizeTooLarge {
                    offset: size,
                    max: MAX_LENGTH,
                });
            }
            let qcow2 = state
                .graph
                .image_node(&name)
                .is_some_and(|n| n.qcow2.is_some());
            let target = match state.disk_of_node(&name) {
                Some(disk) => {
                    Target::Daemon(disk.daemon()?.link.clone(), disk.index, disk.id.clone())
                }
                // Only a daemon resizes a qcow2 image (its tables, not the file's length).
                None if qcow2 => return Err(BlockError::ResizeUnserved(name.clone())),
                None => {
                    // A qcow2 node over this file shares no resize (QEMU's words); and
                    // its locks are on the same open file, which the resize's unlock
                    // would drop.
                    if let Some(parent) = state
                        .graph
                        .parent_of(&name)
                        .filter(|p| p.driver == Driver::Qcow2)
                    {
                        return Err(BlockError::ResizeUnshared {
                            node: name.clone(),
                            parent: parent.name.clone(),
                        });
                    }
                    Target::Image(
                        state
                            .graph
                            .protocol_of(&name)
                            .and_then(|p| p.image.clone())
                            .ok_or_else(|| BlockError::NoImage(name.clone()))?,
                    )
                }
            };
            target
        };
        // Raw images are whole sectors (MAX_LENGTH is, so this cannot overflow).
        let bytes = (size as u64).div_ceil(512) * 512;
        match target {
            Target::Daemon(link, index, id) => {
                // Its bitmaps cover a new size before a write can land there, and
                // lose what is past a smaller one only once the image is smaller.
                self.resize_bitmaps(&id, bytes, true)?;
                link.request(BlockRequest::Resize { bytes }, &[])?;
                if let Err(e) = self.resize_bitmaps(&id, bytes, false) {
                    log::warn!("disk {id}: its dirty bitmaps stay larger than it: {e}");
                }
                // The image info shows the new size from now on (the daemon has
                // written it to the image by the time it answers).
                let mut state = self.state.lock();
                let name = state.lookup_node(device, node)?;
                if let Err(e) = state.graph.refresh_image(&name) {
                    log::warn!("node {name}: reading its image after the resize: {e}");
                }
                Ok(Some(index))
            }
            Target::Image(image) => {
                // Nobody uses the node: for the resize it takes QEMU's resize
                // permission, as qmp_block_resize does.
                lock::lock(image.as_fd(), Perms::RESIZE, Perms::ALL)
                    .map_err(BlockError::ResizeLock)?;
                let resized = resize_image(&image, bytes);
                lock::unlock(image.as_fd(), Perms::RESIZE, Perms::ALL);
                resized.map(|()| None)
            }
        }
    }

    /// What the removable-medium commands get: the disk `disk` names (QEMU's lookup and
    /// errors, with or without a medium), which is never removable here.
    pub fn not_removable(&self, disk: DiskRef) -> BlockError {
        let state = self.state.lock();
        let found = match disk {
            DiskRef::Device(name) => state.disk_by_id(name).is_some(),
            DiskRef::Qdev(_) => state.backend(disk).is_some(),
        };
        if !found {
            return BlockError::DeviceNotFound(disk.name().to_string());
        }
        BlockError::NotRemovable(disk.name().to_string())
    }

    /// What blockdev-insert-medium gets: the node must exist and no BlockBackend use it
    /// (a disk's or a drive's root), then the disk `disk` names is not removable (QEMU's
    /// words name none).
    pub fn insert_medium(&self, node: &str, disk: DiskRef) -> BlockError {
        {
            let state = self.state.lock();
            if state.graph.node(node).is_none() {
                return BlockError::NodeNotFound(node.to_string());
            }
            let mut roots =
                (state.disks.iter().map(|d| d.root.as_str())).chain(state.drive_roots());
            if roots.any(|r| r == node) {
                return BlockError::NodeHasBackend(node.to_string());
            }
        }
        match self.not_removable(disk) {
            BlockError::NotRemovable(_) => BlockError::NotRemovableToInsert,
            e => e,
        }
    }

    /// What block_passwd gets: nothing here is encrypted (QEMU 2.x's lookup and
    /// message).
    pub fn block_passwd(&self, device: Option<&str>, node: Option<&str>) -> BlockError {
        let state = self.state.lock();
        let name = match state.lookup_node(device, node) {
            Ok(name) => name,
            Err(e) => return e,
        };
        let shown = device
            .filter(|d| state.disk_by_id(d).is_some())
            .unwrap_or(&name);
        BlockError::NotEncrypted(shown.to_string())
    }

    /// What `change DEVICE TARGET` gets: a medium change, which no disk here accepts.
    pub fn change(&self, device: &str) -> BlockError {
        if self.state.lock().disk_by_id(device).is_none() {
            return BlockError::DeviceNotFound(device.to_string());
        }
        BlockError::NotRemovable(device.to_string())
    }

    /// Whether QEMU's blk_by_name finds a BlockBackend named `name`: a disk's drive or a
    /// drive no device uses (not an anonymous disk, whatever the layer calls it).
    pub fn has_backend_named(&self, name: &str) -> bool {
        (self.state.lock().backend(DiskRef::Device(name))).is_some()
    }

    /// QEMU's bdrv_lookup_bs(name, name): the node a BlockBackend's name (its root) or a
    /// node's name gives.
    pub fn lookup(&self, name: &str) -> Result<String, BlockError> {
        self.state.lock().lookup_node(Some(name), Some(name))
    }

    /// What QEMU answers where `name`, taken as a node's name (a reference to a child),
    /// names no node; None where it does.
    pub fn missing_node(&self, name: &str) -> Option<BlockError> {
        let state = self.state.lock();
        state
            .graph
            .node(name)
            .is_none()
            .then(|| state.no_node(name))
    }

    pub fn node_exists(&self, name: &str) -> bool {
        self.state.lock().graph.node(name).is_some()
    }
}
