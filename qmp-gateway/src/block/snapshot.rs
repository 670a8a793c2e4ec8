//! Snapshots, as transaction actions (see `transaction`) and the one command that is
//! not one: internal snapshots of a qcow2 image (made by the daemon serving it, with its
//! device quiesced, or here by the qcow2 library when no disk uses the node), their
//! deletion, and external snapshots (blockdev-snapshot-sync): a new qcow2 image the
//! gateway creates over the current top, opened and locked here, then served by the
//! disk's daemon over the chain it serves, the old top becoming its backing node. The
//! checks and their texts are QEMU 7.2's. Unlike QEMU, a failed transaction also
//! removes the overlay files it created, and puts back a file it replaced: QEMU 7.2
//! formats an existing file (mode absolute-paths) at prepare and leaves it so on abort;
//! here the existing file is moved aside at prepare (the new image made at its path),
//! moved back on abort and removed at commit, so an aborted transaction leaves it
//! byte-identical. With mode existing neither QEMU nor we change the file.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use block_daemon::formats::qcow2::create::{self, CreateOptions};
use block_daemon::formats::qcow2::snapshot_ops::NewSnapshot;
use block_daemon::formats::qcow2::Qcow2;
use ipc::{errno_text, BlockOpen, BlockReply, BlockRequest, ImageFormat, ImageLayer};
use serde_json::Value;

use super::error::BlockError;
use super::graph;
use super::image_info::snapshot_info;
use super::lock::{self, Perms};
use super::options::{Backing, ChildRef, Driver, NodeOptions, Qcow2Settings, Source};
use super::transaction::Action;
use super::{info, BlockLayer, State};

fn fail(msg: impl Into<String>) -> BlockError {
    BlockError::Snapshot(msg.into())
}

/// How blockdev-snapshot-sync finds or makes the new image (NewImageMode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NewImageMode {
    Existing,
    AbsolutePaths,
}

/// blockdev-snapshot-sync's arguments.
#[derive(Clone, Debug)]
pub struct ExternalRequest {
    pub device: Option<String>,
    pub node_name: Option<String>,
    pub snapshot_file: String,
    pub snapshot_node_name: Option<String>,
    pub format: Option<String>,
    pub mode: NewImageMode,
}

/// Where an internal snapshot of a node is made.
enum InternalTarget {
    /// The daemon of the disk whose top image the node is.
    Daemon(Arc<crate::children::link::Link<super::disk::BlockProtocol>>),
    /// Nobody serves it: the qcow2 library, here, on the node's image.
    Image(Arc<OwnedFd>),
    /// The disk's daemon is down (it would have to be there to quiesce the guest's I/O).
    Down(String),
}

impl State {
    /// The image node behind `name` and, if a disk uses it, how to reach that disk's
    /// daemon. Only a disk's top image (or an image no disk uses) can be changed.
    fn internal_target(&self, name: &str) -> Result<(String, InternalTarget), BlockError> {
        let image = self
            .graph
            .image_node(name)
            .ok_or_else(|| BlockError::NoNode(name.to_string()))?;
        let image_name = image.name.clone();
        for d in &self.disks {
            let top = self.graph.image_node(&d.root).map(|n| n.name.clone());
            if top.as_deref() == Some(image_name.as_str()) {
                return Ok((
                    image_name,
                    match &d.daemon {
                        Some(daemon) => InternalTarget::Daemon(daemon.link.clone()),
                        None => InternalTarget::Down(d.id.clone()),
                    },
                ));
            }
        }
        let fd = self
            .graph
            .protocol_of(&image_name)
            .and_then(|p| p.image.clone())
            .ok_or_else(|| BlockError::NoImage(image_name.clone()))?;
        Ok((image_name, InternalTarget::Image(fd)))
    }

    /// Reads node `name`'s image facts again (after a snapshot changed them).
    pub(super) fn refresh_image(&mut self, name: &str) {
        if let Err(e) = self.graph.refresh_image(name) {
            log::warn!("reading node {name}'s image again: {e}");
        }
    }
}

/// Runs `f` on the node's image opened here with the qcow2 library (no disk uses it).
fn on_local_image<T>(
    fd: &OwnedFd,
    f: impl FnOnce(&Qcow2) -> Result<T, block_daemon::formats::FormatError>,
) -> Result<T, BlockError> {
    let file = File::from(fd.try_clone().map_err(BlockError::DupImage)?);
    let image = Qcow2::open(file, None, &ipc::Qcow2Options::default(), true)
        .map_err(|e| fail(e.to_string()))?;
    f(&image).map_err(|e| fail(e.to_string()))
}

fn internal_call(
    target: &InternalTarget,
    request: BlockRequest,
    local: impl FnOnce(
        &Qcow2,
    ) -> Result<
        block_daemon::formats::qcow2::snapshot::SnapshotInfo,
        block_daemon::formats::FormatError,
    >,
) -> Result<ipc::SnapshotRecord, BlockError> {
    match target {
        InternalTarget::Daemon(link) => match link.request(request, &[])? {
            BlockReply::Snapshot(s) => Ok(s),
            other => Err(fail(format!(
                "unexpected answer from the daemon: {other:?}"
            ))),
        },
        InternalTarget::Image(fd) => {
            on_local_image(fd, local).map(|s| block_daemon::snapshots::record(&s))
        }
        InternalTarget::Down(id) => Err(BlockError::DaemonNotRunning(id.clone())),
    }
}

/// blockdev-snapshot-internal-sync as a transaction action.
pub struct InternalSnapshot {
    pub device: String,
    pub name: String,
    /// What prepare made: the image node and the new snapshot's id.
    made: Option<(String, String)>,
}

impl InternalSnapshot {
    pub fn new(device: String, name: String) -> InternalSnapshot {
        InternalSnapshot {
            device,
            name,
            made: None,
        }
    }
}

impl Action for InternalSnapshot {
    fn kind(&self) -> &'static str {
        "blockdev-snapshot-internal-sync"
    }

    fn prepare(&mut self, layer: &BlockLayer) -> Result<(), BlockError> {
        let device = self.device.as_str();
        let (image, target) = {
            let state = layer.state.lock();
            let name = state.lookup_node(Some(device), Some(device))?;
            if state.job_holding(&name).is_some() {
                // QEMU's job puts a filter node over the disk.
                return Err(super::error::JobError::NotRoot.into());
            }
            let node = state
                .graph
                .node(&name)
                .ok_or_else(|| BlockError::NoNode(name.clone()))?;
            let proto_ro = state.graph.protocol_of(&name).is_some_and(|p| p.read_only);
            if node.read_only || proto_ro {
                return Err(fail(format!("Device '{device}' is read only")));
            }
            let image = state
                .graph
                .image_node(&name)
                .ok_or_else(|| BlockError::NoNode(name.clone()))?;
            if image.driver != Driver::Qcow2 {
                return Err(fail(format!(
                    "Block format '{}' used by device '{device}' does not support internal snapshots",
                    image.driver.name()
                )));
            }
            if self.name.is_empty() {
                return Err(fail("Name is empty"));
            }
            let exists = image.qcow2.as_ref().is_some_and(|q| {
                q.snapshots
                    .iter()
                    .any(|s| s["name"].as_str() == Some(self.name.as_str()))
            });
            if exists {
                return Err(fail(format!(
                    "Snapshot with name '{}' already exists on device '{device}'",
                    self.name
                )));
            }
            state.internal_target(&name)?
        };
        let name = self.name.clone();
        let made = internal_call(
            &target,
            BlockRequest::SnapshotCreate { name: name.clone() },
            |q| {
                q.snapshot_create(NewSnapshot {
                    name,
                    ..NewSnapshot::default()
                })
            },
        );
        layer.state.lock().refresh_image(&image);
        self.made = Some((image, made?.id));
        Ok(())
    }

    fn abort(&mut self, layer: &BlockLayer) {
        let Some((image, id)) = self.made.take() else {
            return;
        };
        let target = layer.state.lock().internal_target(&image);
        let deleted = target.and_then(|(_, target)| {
            internal_call(
                &target,
                BlockRequest::SnapshotDelete {
                    id: Some(id.clone()),
                    name: None,
                },
                |q| q.snapshot_delete(Some(&id), None),
            )
        });
        if let Err(e) = deleted {
            log::error!("undoing internal snapshot {id} of {image}: {e}");
        }
        layer.state.lock().refresh_image(&image);
    }
}

impl BlockLayer {
    /// blockdev-snapshot-delete-internal-sync: returns the deleted snapshot's
    /// SnapshotInfo.
    pub fn delete_internal_snapshot(
        &self,
        device: &str,
        id: Option<&str>,
        name: Option<&str>,
    ) -> Result<Value, BlockError> {
        let _changes = self.changes.lock();
        let (image, target) = {
            let state = self.state.lock();
            let node = state.lookup_node(Some(device), Some(device))?;
            if id.is_none() && name.is_none() {
                return Err(fail("Name or id must be provided"));
            }
            let image = state
                .graph
                .image_node(&node)
                .ok_or_else(|| BlockError::NoNode(node.clone()))?;
            let Some(q) = image
                .qcow2
                .as_ref()
                .filter(|_| image.driver == Driver::Qcow2)
            else {
                return Err(fail(
                    "Failed to get a snapshot list: Operation not supported",
                ));
            };
            let found = q.snapshots.iter().any(|s| {
                id.is_none_or(|i| s["id"].as_str() == Some(i))
                    && name.is_none_or(|n| s["name"].as_str() == Some(n))
            });
            if !found {
                return Err(fail(format!(
                    "Snapshot with id '{}' and name '{}' does not exist on device '{device}'",
                    id.unwrap_or("null"),
                    name.unwrap_or("null")
                )));
            }
            state.internal_target(&node)?
        };
        let deleted = internal_call(
            &target,
            BlockRequest::SnapshotDelete {
                id: id.map(str::to_string),
                name: name.map(str::to_string),
            },
            |q| q.snapshot_delete(id, name),
        );
        self.state.lock().refresh_image(&image);
        Ok(snapshot_info(&deleted?))
    }
}

/// What an external snapshot changed, to undo it.
#[derive(Default)]
struct Applied {
    /// The overlay file, if this transaction created it.
    created: Option<PathBuf>,
    /// The file the overlay replaced (its path, and where it waits meanwhile).
    replaced: Option<(PathBuf, PathBuf)>,
    /// The new node (and the nodes under it) in the graph.
    new_root: Option<String>,
    /// blockdev-snapshot's overlay node, now over the old top.
    linked: Option<String>,
    /// The old top and the disk it was the root of, with the disk's config before.
    disk: Option<DiskBefore>,
    /// The daemon serves the new top.
    pushed: bool,
}

struct DiskBefore {
    id: String,
    root: String,
    nodes: Vec<String>,
    config: BlockOpen,
    images: Vec<Arc<OwnedFd>>,
    /// The old top's image, relocked as a backing file (locking on).
    old_image: Option<Arc<OwnedFd>>,
}

/// Where an external snapshot's overlay comes from.
#[derive(Clone, Debug)]
pub enum Overlay {
    /// blockdev-snapshot-sync: a file, created unless it exists already (mode).
    New(ExternalRequest),
    /// blockdev-snapshot: a node blockdev-add opened with `backing: null`.
    Existing { node: String, overlay: String },
}

/// blockdev-snapshot-sync and blockdev-snapshot as transaction actions.
pub struct ExternalSnapshot {
    overlay: Overlay,
    applied: Applied,
}

impl ExternalSnapshot {
    pub fn new(overlay: Overlay) -> ExternalSnapshot {
        ExternalSnapshot {
            overlay,
            applied: Applied::default(),
        }
    }
}

/// What the new image is created from: the old top's facts.
struct OldTop {
    name: String,
    size: u64,
    filename: String,
    format: &'static str,
    direct: bool,
    no_flush: bool,
    discard_unmap: bool,
    /// The disk whose root it is.
    disk: Option<String>,
}

impl ExternalSnapshot {
    /// blockdev-snapshot-sync's checks before anything is created (QEMU's order).
    fn check_new(state: &State, r: &ExternalRequest) -> Result<String, BlockError> {
        let name = state.lookup_node(r.device.as_deref(), r.node_name.as_deref())?;
        // A job's node is blocked before anything else is asked (QEMU's op blocker).
        state.job_busy(&name)?;
        if r.node_name.is_some() && r.snapshot_node_name.is_none() {
            return Err(fail("New overlay node-name missing"));
        }
        if let Some(n) = &r.snapshot_node_name {
            if state.graph.node(n).is_some() || state.disk_by_id(n).is_some() {
                return Err(fail("New overlay node-name already in use"));
            }
        }
        match r.format.as_deref().unwrap_or("qcow2") {
            "qcow2" => Ok(name),
            "raw" => Err(fail("Backing file not supported for file format 'raw'")),
            other => Err(fail(format!("Unknown file format '{other}'"))),
        }
    }

    /// blockdev-snapshot's checks of its overlay node (QEMU's order and words).
    fn check_existing(state: &State, node: &str, overlay: &str) -> Result<String, BlockError> {
        let name = state.lookup_node(Some(node), Some(node))?;
        state.job_busy(&name)?;
        let over = state.lookup_node(Some(overlay), Some(overlay))?;
        if state.disk_of_node(&over).is_some() {
            return Err(fail("The overlay is already in use"));
        }
        let image = state
            .graph
            .image_node(&over)
            .ok_or_else(|| BlockError::NoNode(over.clone()))?;
        if image.backing.is_some() {
            return Err(fail("The overlay already has a backing image"));
        }
        if image.driver != Driver::Qcow2 {
            return Err(fail("The overlay does not support backing images"));
        }
        Ok(name)
    }

    /// The checks, and the old top's facts.
    fn check(&self, state: &State) -> Result<OldTop, BlockError> {
        let name = match &self.overlay {
            Overlay::New(r) => Self::check_new(state, r)?,
            Overlay::Existing { node, overlay } => Self::check_existing(state, node, overlay)?,
        };
        // The overlay goes on top: the chain may not pass what a daemon serves.
        if state.graph.chain(&name).len() >= graph::MAX_CHAIN {
            return Err(BlockError::BackingTooDeep {
                overlay: name,
                max: graph::MAX_CHAIN,
            });
        }
        let disk = state.disks.iter().find(|d| d.root == name);
        let used_below = disk.is_none()
            && (state.disk_of_node(&name).is_some()
                || state
                    .graph
                    .nodes()
                    .iter()
                    .any(|n| n.backing.as_deref() == Some(name.as_str())));
        if used_below {
            return Err(fail(format!(
                "Flotilla takes external snapshots of a disk's top node or of an unused node only; '{name}' is below another node"
            )));
        }
        let node = state
            .graph
            .node(&name)
            .ok_or_else(|| BlockError::NoNode(name.clone()))?;
        let image = state.graph.image_node(&name).unwrap_or(node);
        let proto = state
            .graph
            .protocol_of(&name)
            .ok_or_else(|| BlockError::NoImage(name.clone()))?;
        let fd = proto
            .image
            .clone()
            .ok_or_else(|| BlockError::NoImage(name.clone()))?;
        let size = match &image.qcow2 {
            Some(q) => q.virtual_size,
            None => info::image_sizes(&fd).0,
        };
        Ok(OldTop {
            name: name.clone(),
            size,
            filename: proto.filename.clone(),
            format: image.driver.name(),
            direct: proto.cache.direct,
            no_flush: node.cache.no_flush,
            discard_unmap: node.discard_unmap && proto.discard_unmap,
            disk: disk.map(|d| d.id.clone()),
        })
    }

    /// Creates the overlay file (mode absolute-paths) as QEMU's bdrv_img_create does;
    /// a regular file already there is moved aside until the transaction ends.
    fn create_file(&mut self, path: &str, old: &OldTop) -> Result<(), BlockError> {
        let could_not =
            |e: std::io::Error| fail(format!("Could not create '{path}': {}", errno_text(&e)));
        let existing = std::fs::metadata(path).ok();
        let existed = existing.is_some();
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(true);
        let file = match existing.filter(|m| m.is_file()) {
            Some(meta) => {
                // The file behind a symlink is the one replaced.
                let real = std::fs::canonicalize(path).map_err(could_not)?;
                let aside = set_aside_name(&real);
                std::fs::rename(&real, &aside).map_err(could_not)?;
                self.applied.replaced = Some((real.clone(), aside));
                let file = options.create_new(true).open(&real).map_err(could_not)?;
                file.set_permissions(meta.permissions())
                    .map_err(could_not)?;
                file
            }
            None => {
                let file = options.open(path).map_err(could_not)?;
                if !existed {
                    self.applied.created = Some(PathBuf::from(path));
                }
                file
            }
        };
        create::create(
            &file,
            &CreateOptions {
                size: old.size,
                backing_file: Some(old.filename.clone()),
                backing_format: Some(old.format.to_string()),
                ..CreateOptions::default()
            },
        )
        .map_err(|e| fail(format!("Could not create '{path}': {e}")))
    }
}

/// Where a file an overlay replaces waits for the transaction's end: a hidden name
/// beside it (the same filesystem, so the move is a rename).
fn set_aside_name(path: &std::path::Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.flotilla-replaced-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Action for ExternalSnapshot {
    fn kind(&self) -> &'static str {
        match self.overlay {
            Overlay::New(_) => "blockdev-snapshot-sync",
            Overlay::Existing { .. } => "blockdev-snapshot",
        }
    }

    fn prepare(&mut self, layer: &BlockLayer) -> Result<(), BlockError> {
        let old = self.check(&layer.state.lock())?;
        let new_root = match self.overlay.clone() {
            Overlay::New(request) => self.open_new(layer, &request, &old)?,
            Overlay::Existing { overlay, .. } => {
                let mut state = layer.state.lock();
                let over = state.lookup_node(Some(&overlay), Some(&overlay))?;
                let image = state.graph.image_node(&over).map(|n| n.name.clone());
                state
                    .graph
                    .set_backing(&image.unwrap_or(over.clone()), Some(&old.name));
                self.applied.linked = Some(over.clone());
                over
            }
        };
        self.append(layer, &old, &new_root)
    }

    fn commit(&mut self, _layer: &BlockLayer) {
        if let Some((_, aside)) = self.applied.replaced.take() {
            if let Err(e) = std::fs::remove_file(&aside) {
                log::error!("removing the replaced file {}: {e}", aside.display());
            }
        }
    }

    fn abort(&mut self, layer: &BlockLayer) {
        self.undo(layer);
    }
}

impl ExternalSnapshot {
    /// blockdev-snapshot-sync: the overlay file (created unless mode is existing),
    /// opened as a new qcow2 node over the old top.
    fn open_new(
        &mut self,
        layer: &BlockLayer,
        request: &ExternalRequest,
        old: &OldTop,
    ) -> Result<String, BlockError> {
        if request.mode == NewImageMode::AbsolutePaths {
            self.create_file(&request.snapshot_file, old)?;
        }
        let opts = NodeOptions {
            driver: Driver::Qcow2,
            node_name: request.snapshot_node_name.clone(),
            read_only: Some(false),
            direct: Some(old.direct),
            no_flush: Some(old.no_flush),
            discard_unmap: Some(old.discard_unmap),
            detect_zeroes: None,
            locking: None,
            source: Source::Child(ChildRef::Inline(Box::new(NodeOptions::file(
                request.snapshot_file.clone(),
            )))),
            backing: Backing::None,
            qcow2: Qcow2Settings::default(),
        };
        let mut state = layer.state.lock();
        let new_root = state.open_internal_node(&opts)?;
        self.applied.new_root = Some(new_root.clone());
        state.graph.set_backing(&new_root, Some(&old.name));
        Ok(new_root)
    }

    /// Puts `new_root` over the old top in the disk whose root it is: locks, the
    /// disk's chain, its daemon.
    fn append(
        &mut self,
        layer: &BlockLayer,
        old: &OldTop,
        new_root: &str,
    ) -> Result<(), BlockError> {
        let new_root = new_root.to_string();
        let mut state = layer.state.lock();
        let Some(disk_id) = old.disk.clone() else {
            // Nobody serves the old top: the graph is all there is to change.
            return Ok(());
        };
        let new_image = state
            .graph
            .protocol_of(&new_root)
            .and_then(|p| {
                p.image
                    .clone()
                    .map(|fd| (fd, p.filename.clone(), p.locking))
            })
            .ok_or_else(|| BlockError::NoImage(new_root.clone()))?;
        let qcow2_options = state
            .graph
            .node(&new_root)
            .map(|n| n.qcow2_options.clone())
            .unwrap_or_default();
        let old_proto = state
            .graph
            .protocol_of(&old.name)
            .and_then(|p| p.image.clone().map(|fd| (fd, p.locking)));
        let old_qcow2 = old.format == "qcow2";
        let Some(index) = state.disks.iter().position(|d| d.id == disk_id) else {
            return Err(BlockError::DeviceNotFound(disk_id));
        };
        let disk = &mut state.disks[index];
        let mut before = DiskBefore {
            id: disk.id.clone(),
            root: disk.root.clone(),
            nodes: disk.nodes.clone(),
            config: disk.config.clone(),
            images: disk.images.clone(),
            old_image: None,
        };
        // The new top holds a qcow2 disk's locks since its node was opened (the graph
        // takes them); the old top's drop to a backing file's.
        let (fd, filename, _) = new_image;
        if let Some((old_fd, true)) = &old_proto {
            let (take, share) = Perms::for_top(old_qcow2, disk.config.read_only);
            let (btake, bshare) = Perms::for_backing();
            lock::unlock(old_fd.as_fd(), take, share);
            if let Err(e) = lock::lock(old_fd.as_fd(), btake, bshare) {
                log::warn!("locking the old top as a backing file: {e}");
            }
            before.old_image = Some(old_fd.clone());
        }
        let layer_ = ImageLayer {
            node_name: new_root.clone(),
            format: ImageFormat::Qcow2(qcow2_options),
            filename: filename.clone(),
        };
        disk.root = new_root.clone();
        disk.health.set_node(&new_root);
        disk.config.node_name = new_root.clone();
        disk.config.layers.insert(0, layer_.clone());
        disk.images.insert(0, fd.clone());
        let link = disk.daemon.as_ref().map(|d| d.link.clone());
        self.applied.disk = Some(before);
        let nodes = state.graph.tree(&new_root);
        state.disks[index].nodes = nodes;
        drop(state);
        // A disk whose daemon is down gets the new chain when one starts.
        if let Some(link) = link {
            link.request(BlockRequest::PushTop(layer_), &[fd.as_fd()])?;
            self.applied.pushed = true;
            // The old top's bitmaps stay with it, and so no longer mark (as QEMU's,
            // which only see writes to their node).
            layer.send_bitmaps_of(&disk_id)?;
        }
        layer.state.lock().refresh_image(&old.name);
        Ok(())
    }

    /// Undoes what prepare did, or the part of it it got to.
    fn undo(&mut self, layer: &BlockLayer) {
        let applied = std::mem::take(&mut self.applied);
        let mut resend_bitmaps = None;
        let mut state = layer.state.lock();
        if let Some(before) = applied.disk {
            if let Some(index) = state.disks.iter().position(|d| d.id == before.id) {
                if applied.pushed {
                    if let Some(link) = state.disks[index].daemon.as_ref().map(|d| d.link.clone()) {
                        drop(state);
                        if let Err(e) = link.request(BlockRequest::PopTop, &[]) {
                            log::error!("taking the new top off disk {}: {e}", before.id);
                        }
                        state = layer.state.lock();
                    }
                }
                if let Some(disk) = state.disks.iter_mut().find(|d| d.id == before.id) {
                    let read_only = before.config.read_only;
                    let old_qcow2 = matches!(
                        before.config.layers.first().map(|l| &l.format),
                        Some(ImageFormat::Qcow2(_))
                    );
                    disk.health.set_node(&before.root);
                    resend_bitmaps = applied.pushed.then(|| before.id.clone());
                    disk.root = before.root;
                    disk.nodes = before.nodes;
                    disk.config = before.config;
                    disk.images = before.images;
                    if let Some(fd) = &before.old_image {
                        let (btake, bshare) = Perms::for_backing();
                        lock::unlock(fd.as_fd(), btake, bshare);
                        let (take, share) = Perms::for_top(old_qcow2, read_only);
                        if let Err(e) = lock::lock(fd.as_fd(), take, share) {
                            log::error!("locking the old top again: {e}");
                        }
                    }
                }
            }
        }
        if let Some(over) = applied.linked {
            let image = state.graph.image_node(&over).map(|n| n.name.clone());
            state.graph.set_backing(&image.unwrap_or(over), None);
        }
        if let Some(root) = applied.new_root {
            // The old top stays: it is no longer the new node's backing node.
            if let Some(node) = state.graph.node_mut(&root) {
                node.backing = None;
            }
            state.graph.remove_tree(&root);
        }
        drop(state);
        if let Some(id) = resend_bitmaps {
            if let Err(e) = layer.send_bitmaps_of(&id) {
                log::error!("disk {id}: marking into its top's dirty bitmaps again: {e}");
            }
        }
        if let Some(path) = applied.created {
            if let Err(e) = std::fs::remove_file(&path) {
                log::error!("removing {}: {e}", path.display());
            }
        }
        if let Some((path, aside)) = applied.replaced {
            if let Err(e) = std::fs::rename(&aside, &path) {
                log::error!(
                    "putting {} back from {}: {e}",
                    path.display(),
                    aside.display()
                );
            }
        }
    }
}
