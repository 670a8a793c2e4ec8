//! The block node graph: protocol nodes (an image the gateway opened), raw and qcow2
//! format nodes over them, and a qcow2 node's backing node, with QEMU's naming rules,
//! option inheritance (an inline child takes its parent's read-only, cache and discard
//! settings unless it sets its own; a backing file is read-only), the backing chain a
//! qcow2 header names opened as QEMU opens it (implicit nodes with automatic names,
//! relative names against the overlay's directory, the format from the header or
//! probed), and rules for adding and deleting (a node in use stays).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use ipc::{CacheFlags, DetectZeroes, Qcow2Options};
use serde_json::{json, Map, Value};

use super::error::BlockError;
use super::image_info::Qcow2Image;
use super::lock::{self, Perms};
use super::options::{check_node_name, Backing, ChildRef, Driver, NodeOptions, Source};
use super::qcow2_options;
use crate::fdstore::Charge;

/// The most images a backing chain may have, the top included (block-daemon's limit).
pub const MAX_CHAIN: usize = block_daemon::paths::MAX_DEPTH;

/// Where a qcow2 node's backing node came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackingFrom {
    /// The image's header (or it names none).
    Image,
    /// `backing: null`.
    Null,
    /// The node's options named it.
    Options,
}

pub struct Node {
    pub name: String,
    pub driver: Driver,
    /// The image's path as given (protocol nodes), the child's (format nodes), or
    /// QEMU's json: name of the node's options when they override the image's backing.
    pub filename: String,
    pub read_only: bool,
    pub cache: CacheFlags,
    pub discard_unmap: bool,
    pub detect_zeroes: DetectZeroes,
    /// The opened image (protocol nodes).
    pub image: Option<Arc<OwnedFd>>,
    /// A format node's protocol child.
    pub child: Option<String>,
    /// A qcow2 node's backing node.
    pub backing: Option<String>,
    pub backing_from: BackingFrom,
    /// What a qcow2 node's image says, read when it was opened.
    pub qcow2: Option<Qcow2Image>,
    /// What a qcow2 node is served with.
    pub qcow2_options: Qcow2Options,
    /// A protocol node takes QEMU's locks when a disk uses it (locking=off: not).
    pub locking: bool,
    /// Added by blockdev-add as the root of what it created: blockdev-del may delete it.
    pub monitor_owned: bool,
    /// The image's fd, charged to the client that opened it with blockdev-add (the fds
    /// of the VM's own disks are the gateway's, outside the clients' budget).
    pub charge: Option<Charge>,
}

/// Opens a protocol node's image: (path, driver, writable) to an fd, or QEMU's error.
pub type Opener<'a> = dyn FnMut(&str, Driver, bool) -> Result<OwnedFd, BlockError> + 'a;

/// Charges an image about to be opened (blockdev-add: to its client's fd budget), or
/// refuses it; None where no client is charged.
pub type ChargeImage<'a> = dyn FnMut() -> Result<Option<Charge>, BlockError> + 'a;

/// For images no client is charged for: the VM's disks and their snapshots, bounded by
/// the disks and MAX_CHAIN.
pub fn uncharged() -> Result<Option<Charge>, BlockError> {
    Ok(None)
}

/// Settings an inline child inherits from its parent.
#[derive(Clone, Copy, Default)]
struct Inherited {
    read_only: Option<bool>,
    direct: Option<bool>,
    no_flush: Option<bool>,
    discard_unmap: Option<bool>,
    locking: Option<bool>,
}

/// What one `add` needs all the way down.
struct Adding<'a, 'b> {
    taken: &'a dyn Fn(&str) -> bool,
    open: &'a mut Opener<'b>,
    charge: &'a mut ChargeImage<'b>,
    /// Nodes made so far (removed again if anything fails).
    created: Vec<String>,
}

/// QEMU's json: syntax: `{"key": value, ...}`, keys in order.
fn qemu_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let members: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), qemu_json(v)))
                .collect();
            format!("{{{}}}", members.join(", "))
        }
        other => other.to_string(),
    }
}

#[derive(Default)]
pub struct Graph {
    /// In creation order.
    nodes: Vec<Node>,
    next_auto: u64,
    /// Images are opened without their locks (a VM arriving by migration, or one that
    /// left: block/activation.rs).
    inactive: bool,
}

impl Graph {
    pub fn inactive(&self) -> bool {
        self.inactive
    }

    pub fn set_inactive(&mut self, inactive: bool) {
        self.inactive = inactive;
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// For what changes a node in place (snapshots: a new backing node, the image's
    /// facts read again).
    pub fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    /// The protocol node under `name` (itself, or its child's).
    pub fn protocol_of(&self, name: &str) -> Option<&Node> {
        let node = self.node(name)?;
        match &node.child {
            None => Some(node),
            Some(child) => self.protocol_of(child),
        }
    }

    /// `root` and its file children down to the image (not the backing chain).
    pub fn tree(&self, root: &str) -> Vec<String> {
        let mut out = vec![root.to_string()];
        let mut at = self.node(root).and_then(|n| n.child.clone());
        while let Some(name) = at {
            at = self.node(&name).and_then(|n| n.child.clone());
            out.push(name);
        }
        out
    }

    /// The format nodes of `root`'s chain: `root`, its backing node, that one's, and
    /// so on (top first). A format node over a format node counts once, as the top.
    pub fn chain(&self, root: &str) -> Vec<&Node> {
        let mut out: Vec<&Node> = Vec::new();
        let mut at = self.node(root);
        while let Some(node) = at {
            if out.len() > MAX_CHAIN || out.iter().any(|n| n.name == node.name) {
                break;
            }
            out.push(node);
            // The image's format node: the lowest format node over the protocol node.
            let mut image = node;
            while let Some(c) = image.child.as_deref().and_then(|c| self.node(c)) {
                if c.driver.is_protocol() {
                    break;
                }
                image = c;
            }
            at = image.backing.as_deref().and_then(|b| self.node(b));
        }
        out
    }

    /// The format node whose image `node` is: the lowest format node in its tree.
    pub fn image_node(&self, name: &str) -> Option<&Node> {
        let mut at = self.node(name)?;
        while let Some(c) = at.child.as_deref().and_then(|c| self.node(c)) {
            if c.driver.is_protocol() {
                break;
            }
            at = c;
        }
        Some(at)
    }

    /// How many backing files are below `name` (QEMU's backing_file_depth).
    pub fn backing_depth(&self, name: &str) -> usize {
        self.chain(name).len().saturating_sub(1)
    }

    /// The node that has `name` as its file child.
    pub fn parent_of(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.child.as_deref() == Some(name))
    }

    /// Whether another node has `name` as its file or backing child.
    pub fn has_parent(&self, name: &str) -> bool {
        self.parent_of(name).is_some() || self.backing_parent_of(name).is_some()
    }

    /// The newest node that has `name` as its backing node.
    fn backing_parent_of(&self, name: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .rev()
            .find(|n| n.backing.as_deref() == Some(name))
    }

    /// QEMU's automatic names: "#block", a counter, two more digits.
    pub(super) fn auto_name(&mut self) -> String {
        let n = self.next_auto;
        self.next_auto += 1;
        let salt = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 100;
        format!("#block{n}{salt:02}")
    }

    /// The node's options as QEMU shows them in a json: filename (the ones that say
    /// what the node is: driver, file, filename, an overridden backing).
    fn options_json(&self, name: &str) -> Value {
        let Some(node) = self.node(name) else {
            return Value::Null;
        };
        let mut m = Map::new();
        m.insert("driver".into(), json!(node.driver.name()));
        if node.driver.is_protocol() {
            m.insert("filename".into(), json!(node.filename));
        }
        if let Some(c) = &node.child {
            m.insert("file".into(), self.options_json(c));
        }
        match (node.backing_from, &node.backing) {
            (BackingFrom::Null, _) => {
                m.insert("backing".into(), Value::Null);
            }
            (BackingFrom::Options, Some(b)) => {
                m.insert("backing".into(), self.options_json(b));
            }
            _ => {}
        }
        Value::Object(m)
    }

    /// Adds the nodes `opts` describes; returns the root's name. `root_needs_name`: a
    /// blockdev-add root must be named; `taken`: names node names may not take (disk
    /// ids); `charge`: each image opened is charged with it first. Nothing is added (and
    /// nothing stays charged) if anything fails.
    pub fn add(
        &mut self,
        opts: &NodeOptions,
        monitor_owned: bool,
        taken: &dyn Fn(&str) -> bool,
        open: &mut Opener,
        charge: &mut ChargeImage,
    ) -> Result<String, BlockError> {
        if monitor_owned && opts.node_name.is_none() {
            return Err(BlockError::RootNeedsName);
        }
        let mut adding = Adding {
            taken,
            open,
            charge,
            created: Vec::new(),
        };
        let result = self.add_node(opts, Inherited::default(), &mut adding, &[]);
        match &result {
            Err(_) => self.nodes.retain(|n| !adding.created.contains(&n.name)),
            Ok(root) => {
                if let Some(n) = self.nodes.iter_mut().find(|n| &n.name == root) {
                    n.monitor_owned = monitor_owned;
                }
            }
        }
        result
    }

    /// Adds one node and what it needs below it. `chain`: the images (device, inode)
    /// of the overlays above it, when it is a backing file.
    fn add_node(
        &mut self,
        opts: &NodeOptions,
        inherited: Inherited,
        adding: &mut Adding,
        chain: &[(u64, u64)],
    ) -> Result<String, BlockError> {
        let name = match &opts.node_name {
            Some(n) => {
                check_node_name(n)?;
                if self.node(n).is_some() {
                    return Err(BlockError::DuplicateNode(n.clone()));
                }
                if (adding.taken)(n) {
                    return Err(BlockError::NameIsDeviceId(n.clone()));
                }
                n.clone()
            }
            None => self.auto_name(),
        };
        let read_only = opts.read_only.or(inherited.read_only).unwrap_or(false);
        let cache = CacheFlags {
            direct: opts.direct.or(inherited.direct).unwrap_or(false),
            no_flush: opts.no_flush.or(inherited.no_flush).unwrap_or(false),
        };
        let discard_unmap = opts
            .discard_unmap
            .or(inherited.discard_unmap)
            .unwrap_or(false);
        let locking = opts.locking.or(inherited.locking).unwrap_or(true);
        let detect_zeroes = opts.detect_zeroes.unwrap_or_default();
        if detect_zeroes == DetectZeroes::Unmap && !discard_unmap {
            return Err(BlockError::DetectZeroesUnmap);
        }
        let mut charge = None;
        let (filename, image, child) = match &opts.source {
            Source::Path(path) => {
                charge = (adding.charge)()?;
                let fd = (adding.open)(path, opts.driver, !read_only)?;
                (path.clone(), Some(Arc::new(fd)), None)
            }
            Source::Child(ChildRef::Node(child)) => {
                let c = self
                    .node(child)
                    .ok_or_else(|| BlockError::NoDeviceNorNode {
                        device: child.clone(),
                        node: child.clone(),
                    })?;
                if let Some(p) = self.parent_of(child) {
                    return Err(BlockError::ChildTaken {
                        parent: p.name.clone(),
                        role: "file",
                        child: child.clone(),
                    });
                }
                if let Some(p) = self.backing_parent_of(child).filter(|_| !read_only) {
                    return Err(BlockError::ChildTaken {
                        parent: p.name.clone(),
                        role: "backing",
                        child: child.clone(),
                    });
                }
                if c.read_only && !read_only {
                    return Err(BlockError::NodeReadOnly);
                }
                (c.filename.clone(), None, Some(child.clone()))
            }
            Source::Child(ChildRef::Inline(child_opts)) => {
                let inherit = Inherited {
                    read_only: Some(read_only),
                    direct: Some(cache.direct),
                    no_flush: Some(cache.no_flush),
                    discard_unmap: Some(discard_unmap),
                    locking: inherited.locking,
                };
                let child = self.add_node(child_opts, inherit, adding, &[])?;
                let c = self.node(&child).map(|c| c.filename.clone());
                (c.unwrap_or_default(), None, Some(child))
            }
        };
        let mut qcow2 = None;
        let mut qcow2_options = Qcow2Options::default();
        let mut here = None;
        if !opts.driver.is_protocol() {
            let proto = child
                .as_deref()
                .and_then(|c| self.protocol_of(c))
                .and_then(|p| p.image.clone())
                .ok_or_else(|| BlockError::NoImage(name.clone()))?;
            let meta = File::from(proto.try_clone().map_err(BlockError::DupImage)?)
                .metadata()
                .map_err(|error| BlockError::Stat {
                    path: filename.clone(),
                    error,
                })?;
            // A backing file that is an image above it: the chain loops.
            if chain.contains(&(meta.dev(), meta.ino())) {
                return Err(BlockError::BackingLoop(filename.clone()));
            }
            here = Some((meta.dev(), meta.ino()));
            if opts.driver == Driver::Qcow2 {
                let img = Qcow2Image::read(&proto)?;
                qcow2_options = qcow2_options::resolve(&opts.qcow2, &img)?;
                qcow2 = Some(img);
                self.lock_metadata(child.as_deref(), &proto, read_only)?;
            }
        }
        let backing_from = match opts.backing {
            Backing::FromImage => BackingFrom::Image,
            Backing::None => BackingFrom::Null,
            Backing::Node(_) => BackingFrom::Options,
        };
        // QEMU's order: the node is there before its backing file is opened.
        self.nodes.push(Node {
            name: name.clone(),
            driver: opts.driver,
            filename: filename.clone(),
            read_only,
            cache,
            discard_unmap,
            detect_zeroes,
            image,
            child,
            backing: None,
            backing_from,
            qcow2: qcow2.clone(),
            qcow2_options,
            locking,
            monitor_owned: false,
            charge,
        });
        adding.created.push(name.clone());
        let backing = match (&opts.backing, &qcow2, here) {
            (Backing::Node(ChildRef::Node(b)), _, _) => {
                if self.node(b).is_none() {
                    return Err(BlockError::Backing(Box::new(BlockError::NoDeviceNorNode {
                        device: b.clone(),
                        node: b.clone(),
                    })));
                }
                Some(b.clone())
            }
            (Backing::Node(ChildRef::Inline(b)), _, _) => {
                let inherit = Inherited {
                    read_only: Some(true),
                    direct: Some(cache.direct),
                    no_flush: Some(cache.no_flush),
                    discard_unmap: Some(discard_unmap),
                    locking: None,
                };
                Some(
                    self.add_node(b, inherit, adding, &[])
                        .map_err(|e| BlockError::Backing(Box::new(e)))?,
                )
            }
            (Backing::FromImage, Some(img), Some(here)) => match &img.backing_file {
                Some(named) => Some(
                    self.open_backing(&filename, named, img, chain, here, cache, adding)
                        .map_err(|e| BlockError::Backing(Box::new(e)))?,
                ),
                None => None,
            },
            _ => None,
        };
        // QEMU's bdrv_backing_overridden: without a backing node, only an image that
        // names a backing file is named by its options.
        let names_backing = qcow2.as_ref().is_some_and(|q| q.backing_file.is_some());
        let json_name = match backing_from {
            BackingFrom::Image => None,
            BackingFrom::Null if !names_backing => None,
            _ => Some(self.options_json_with(&name, backing.as_deref())),
        };
        if let Some(n) = self.nodes.iter_mut().find(|n| n.name == name) {
            n.backing = backing;
            if let Some(j) = json_name {
                n.filename = j;
            }
        }
        Ok(name)
    }

    /// Makes `backing` the backing node of qcow2 node `name` (a snapshot's overlay
    /// goes over the old top; None takes it off again), named as QEMU names it then:
    /// its image's name when the header names that backing file (by the same name),
    /// else a json: name
    /// (`backing: null`, or the backing node's options).
    pub fn set_backing(&mut self, name: &str, backing: Option<&str>) {
        let image = self.protocol_of(name).map(|p| p.filename.clone());
        let named = self
            .node(name)
            .and_then(|n| n.qcow2.as_ref())
            .and_then(|q| q.backing_file.clone());
        let below = backing
            .and_then(|b| self.image_node(b))
            .and_then(|b| self.protocol_of(&b.name))
            .map(|p| p.filename.clone());
        // Literally, as QEMU compares the name the header gives (not resolved, unlike
        // a backing file opened from the header) with the backing node's.
        let matches = named.is_some() && named == below;
        let from = match backing {
            None => BackingFrom::Null,
            Some(_) if matches => BackingFrom::Image,
            Some(_) => BackingFrom::Options,
        };
        if let Some(n) = self.node_mut(name) {
            n.backing_from = from;
        }
        let filename = match (from, image) {
            (BackingFrom::Image, Some(image)) => {
                if let Some(n) = self.node_mut(name) {
                    n.backing = backing.map(str::to_string);
                }
                image
            }
            _ => self.options_json_with(name, backing),
        };
        if let Some(n) = self.node_mut(name) {
            n.filename = filename;
        }
        // The json: names above it include its options, which changed.
        let overridden: Vec<(String, Option<String>)> = self
            .nodes
            .iter()
            .filter(|n| n.backing_from == BackingFrom::Options && n.name != name)
            .map(|n| (n.name.clone(), n.backing.clone()))
            .collect();
        for (n, b) in overridden {
            let f = self.options_json_with(&n, b.as_deref());
            if let Some(node) = self.node_mut(&n) {
                node.filename = f;
            }
        }
    }

    /// Locks the file of a qcow2 node as QEMU does from the moment it opens one, used
    /// or not: the node reads it and, writable, writes and grows it; nobody else may
    /// write or resize it (its metadata would change under it). The locks go with the
    /// file's last descriptor. A raw node takes none until a disk uses it (QEMU's raw
    /// asks only what its users ask).
    fn lock_metadata(
        &self,
        child: Option<&str>,
        fd: &OwnedFd,
        read_only: bool,
    ) -> Result<(), BlockError> {
        let Some(proto) = child.and_then(|c| self.protocol_of(c)) else {
            return Ok(());
        };
        if !proto.locking || self.inactive {
            return Ok(());
        }
        let (take, share) = Perms::for_qcow2_disk(read_only);
        lock::lock(fd.as_fd(), take, share).map_err(|error| BlockError::Locked {
            error,
            path: proto.filename.clone(),
        })
    }

    /// QEMU's json: filename of `name` once `backing` is its backing node.
    fn options_json_with(&mut self, name: &str, backing: Option<&str>) -> String {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.name == name) {
            n.backing = backing.map(str::to_string);
        }
        format!("json:{}", qemu_json(&self.options_json(name)))
    }

    /// Opens the backing file `named` in the header of the image at `overlay` as QEMU
    /// does: read-only, relative to the overlay's directory, in the format the header
    /// names or, without one, the format probed; nodes with automatic names.
    #[allow(clippy::too_many_arguments)]
    fn open_backing(
        &mut self,
        overlay: &str,
        named: &str,
        img: &Qcow2Image,
        chain: &[(u64, u64)],
        here: (u64, u64),
        cache: CacheFlags,
        adding: &mut Adding,
    ) -> Result<String, BlockError> {
        if Path::new(named).is_relative() && overlay.starts_with("/dev/fdset/") {
            return Err(BlockError::BackingRelative(overlay.to_string()));
        }
        let path = block_daemon::paths::resolve_backing(Path::new(overlay), named)
            .map_err(BlockError::BackingName)?
            .display()
            .to_string();
        let mut below = chain.to_vec();
        below.push(here);
        if below.len() >= MAX_CHAIN {
            return Err(BlockError::BackingTooDeep {
                overlay: overlay.to_string(),
                max: MAX_CHAIN,
            });
        }
        let format = match &img.backing_format {
            Some(f) => f.clone(),
            None => {
                let fd = (adding.open)(&path, Driver::File, false)?;
                block_daemon::formats::probe(&File::from(fd))
                    .map_err(|e| BlockError::Image(e.to_string()))?
                    .to_string()
            }
        };
        let driver = Driver::format(&format).ok_or(BlockError::BackingFormat(format))?;
        let opts = NodeOptions {
            read_only: Some(true),
            ..NodeOptions::over(driver, NodeOptions::file(path))
        };
        let inherit = Inherited {
            read_only: Some(true),
            direct: Some(cache.direct),
            no_flush: Some(cache.no_flush),
            discard_unmap: None,
            locking: None,
        };
        self.add_node(&opts, inherit, adding, &below)
    }

    /// blockdev-del: removes a node blockdev-add created, with the children created with
    /// it. `in_use`: nodes a disk is attached to.
    pub fn remove(&mut self, name: &str, in_use: &dyn Fn(&str) -> bool) -> Result<(), BlockError> {
        self.check_remove(name, in_use)?;
        self.remove_with_children(name);
        Ok(())
    }

    /// Whether `remove` would remove `name` (or its refusal).
    pub fn check_remove(
        &self,
        name: &str,
        in_use: &dyn Fn(&str) -> bool,
    ) -> Result<(), BlockError> {
        let node = self
            .node(name)
            .ok_or_else(|| BlockError::NoNodeToDelete(name.to_string()))?;
        // QEMU's order: a node a device is attached to is "in use" before anything
        // else is asked of it.
        if in_use(name) {
            return Err(BlockError::Attached(name.to_string()));
        }
        if !node.monitor_owned {
            return Err(BlockError::NotMonitorOwned(name.to_string()));
        }
        if let Some(p) = self.backing_parent_of(name) {
            return Err(BlockError::BackingBusy {
                node: name.to_string(),
                parent: p.name.clone(),
            });
        }
        if self.parent_of(name).is_some() {
            return Err(BlockError::InUse(name.to_string()));
        }
        Ok(())
    }

    /// Removes `name` and the children that go with it: those nobody else uses that
    /// blockdev-add did not create on their own.
    fn remove_with_children(&mut self, name: &str) {
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            let Some(i) = self.nodes.iter().position(|x| x.name == n) else {
                continue;
            };
            let removed = self.nodes.remove(i);
            for c in [removed.child, removed.backing].into_iter().flatten() {
                let orphan = self.node(&c).is_some_and(|c| !c.monitor_owned)
                    && self.parent_of(&c).is_none()
                    && self.backing_parent_of(&c).is_none();
                if orphan {
                    todo.push(c);
                }
            }
        }
    }
}

impl Graph {
    /// Reads the qcow2 image info of `name`'s image again, after a command changed the
    /// image (a resize, a snapshot): queries show what the image says from now on.
    pub fn refresh_image(&mut self, name: &str) -> Result<(), BlockError> {
        let Some(image) = self.image_node(name).map(|n| n.name.clone()) else {
            return Ok(());
        };
        let Some(fd) = self
            .protocol_of(&image)
            .and_then(|p| p.image.clone())
            .filter(|_| self.node(&image).is_some_and(|n| n.qcow2.is_some()))
        else {
            return Ok(());
        };
        let fresh = Qcow2Image::read(&fd)?;
        if let Some(n) = self.nodes.iter_mut().find(|n| n.name == image) {
            n.qcow2 = Some(fresh);
        }
        Ok(())
    }

    /// Removes image node `name` with its file children, not its backing chain (an
    /// image a stream or commit took out of a chain).
    pub fn remove_image(&mut self, name: &str) {
        for n in self.tree(name) {
            self.nodes.retain(|x| x.name != n);
        }
    }

    /// Removes `root` and everything below it that nothing else uses (undoing a drive
    /// whose daemon did not start).
    pub fn remove_tree(&mut self, root: &str) {
        self.remove_with_children(root);
    }
}

/// Opens a protocol node's image from a path (the gateway is the only process that
/// does), with QEMU's errors.
pub fn open_path(path: &str, driver: Driver, write: bool) -> Result<OwnedFd, BlockError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|error| BlockError::Open {
            path: path.to_string(),
            error,
        })?;
    check_kind(&file, path, driver)?;
    Ok(file.into())
}

/// host_device wants a device; file wants a regular file (QEMU's rules).
pub fn check_kind(file: &File, path: &str, driver: Driver) -> Result<(), BlockError> {
    let ty = file
        .metadata()
        .map_err(|error| BlockError::Stat {
            path: path.to_string(),
            error,
        })?
        .file_type();
    let device = ty.is_block_device() || ty.is_char_device();
    match driver {
        Driver::HostDevice if !device => Err(BlockError::NotADevice(path.to_string())),
        Driver::File if device => Err(BlockError::NotAFile(path.to_string())),
        Driver::File if ty.is_dir() => Err(BlockError::IsADirectory(path.to_string())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::blockdev::parse;
    use serde_json::{json, Value};

    fn opts(v: Value) -> NodeOptions {
        parse(v.as_object().unwrap(), "").unwrap()
    }

    fn devnull(_: &str, _: Driver, _: bool) -> Result<OwnedFd, BlockError> {
        Ok(File::open("/dev/null").unwrap().into())
    }

    fn no_disks(_: &str) -> bool {
        false
    }

    /// blockdev-add charges each image it opens to the client, for as long as its node
    /// lives: a client cannot make the gateway hold images past its share of the fds.
    #[test]
    fn each_image_opened_is_charged_until_its_node_goes_and_a_spent_budget_opens_none() {
        let budget = crate::fdstore::budget::tests::budget(3, 3);
        let client = budget.account();
        let mut charge = || Ok(Some(client.charge(1)?));
        let mut g = Graph::default();
        // A raw node over an inline file node: one image.
        let two = json!({"driver": "raw", "node-name": "r1",
                         "file": {"driver": "file", "filename": "/a"}});
        g.add(&opts(two), true, &no_disks, &mut devnull, &mut charge)
            .unwrap();
        assert_eq!(client.held(), 1);
        let plain = |n: &str| json!({"driver": "file", "node-name": n, "filename": "/b"});
        g.add(
            &opts(plain("f2")),
            true,
            &no_disks,
            &mut devnull,
            &mut charge,
        )
        .unwrap();
        g.add(
            &opts(plain("f3")),
            true,
            &no_disks,
            &mut devnull,
            &mut charge,
        )
        .unwrap();
        assert_eq!(client.held(), 3);
        // The share is spent: refused before anything is opened, nothing added.
        let mut opened = 0;
        let mut counting = |p: &str, d: Driver, w: bool| {
            opened += 1;
            devnull(p, d, w)
        };
        let err = g
            .add(
                &opts(plain("f4")),
                true,
                &no_disks,
                &mut counting,
                &mut charge,
            )
            .unwrap_err();
        assert!(
            err.to_string().starts_with("Too many file descriptors"),
            "{err}"
        );
        assert_eq!((opened, g.node("f4").is_none()), (0, true));
        // blockdev-del gives its images back, the inline child's too.
        g.remove("r1", &no_disks).unwrap();
        g.remove("f2", &no_disks).unwrap();
        assert_eq!(client.held(), 1);
        // A failure after an image was opened gives back what was charged.
        // (/dev/null is no qcow2 image: its file node is opened, then the qcow2 fails.)
        let broken = json!({"driver": "qcow2", "node-name": "q5",
                            "file": {"driver": "file", "filename": "/c"}});
        assert!(g
            .add(&opts(broken), true, &no_disks, &mut devnull, &mut charge)
            .is_err());
        assert_eq!(client.held(), 1);
    }

    #[test]
    fn add_inherit_and_delete() {
        let mut g = Graph::default();
        let f1 = g
            .add(
                &opts(json!({"driver": "file", "node-name": "f1", "filename": "/a"})),
                true,
                &no_disks,
                &mut devnull,
                &mut uncharged,
            )
            .unwrap();
        assert_eq!(f1, "f1");
        g.add(
            &opts(json!({"driver": "raw", "node-name": "r1", "file": "f1"})),
            true,
            &no_disks,
            &mut devnull,
            &mut uncharged,
        )
        .unwrap();
        g.add(
            &opts(
                json!({"driver": "raw", "node-name": "r2", "read-only": true,
                "cache": {"direct": true}, "file": {"driver": "file", "filename": "/b"}}),
            ),
            true,
            &no_disks,
            &mut devnull,
            &mut uncharged,
        )
        .unwrap();
        let child = g.node("r2").unwrap().child.clone().unwrap();
        assert!(child.starts_with("#block"));
        let c = g.node(&child).unwrap();
        assert!(c.read_only && c.cache.direct && !c.monitor_owned);
        assert_eq!(g.tree("r2"), vec!["r2".to_string(), child.clone()]);
        assert_eq!(g.protocol_of("r1").unwrap().name, "f1");

        let err = |r: Result<(), BlockError>| r.unwrap_err().to_string();
        assert_eq!(err(g.remove("f1", &no_disks)), "Block device f1 is in use");
        assert_eq!(
            err(g.remove(&child, &no_disks)),
            format!("Node {child} is not owned by the monitor")
        );
        assert_eq!(
            err(g.remove("nope", &no_disks)),
            "Failed to find node with node-name='nope'"
        );
        assert_eq!(err(g.remove("r1", &|n| n == "r1")), "Node r1 is in use");
        g.remove("r2", &no_disks).unwrap();
        assert!(
            g.node(&child).is_none(),
            "the inline child goes with its parent"
        );
        g.remove("r1", &no_disks).unwrap();
        assert!(g.node("f1").is_some(), "a node added on its own stays");
        g.remove("f1", &no_disks).unwrap();
        assert!(g.nodes().is_empty());
    }

    #[test]
    fn add_errors_leave_nothing_behind() {
        let mut g = Graph::default();
        let add = |g: &mut Graph, v: Value| {
            g.add(&opts(v), true, &|n| n == "d0", &mut devnull, &mut uncharged)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            add(&mut g, json!({"driver": "raw", "file": "f1"})),
            "'node-name' must be specified for the root node"
        );
        assert_eq!(
            add(
                &mut g,
                json!({"driver": "raw", "node-name": "r3", "file": "nofile"})
            ),
            "Cannot find device='nofile' nor node-name='nofile'"
        );
        assert_eq!(
            add(
                &mut g,
                json!({"driver": "file", "node-name": "d0", "filename": "/a"})
            ),
            "node-name=d0 is conflicting with a device id"
        );
        assert_eq!(
            add(&mut g, json!({"driver": "file", "node-name": "f", "filename": "/a", "detect-zeroes": "unmap"})),
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"
        );
        // A failing open of an inline child leaves neither it nor its parent.
        let mut failing = |_: &str, _: Driver, _: bool| -> Result<OwnedFd, BlockError> {
            Err(BlockError::Open {
                path: "/x".into(),
                error: std::io::Error::from_raw_os_error(libc::ENOENT),
            })
        };
        assert!(g
            .add(
                &opts(json!({"driver": "raw", "node-name": "r", "file": {"driver": "file", "filename": "/x"}})),
                true,
                &no_disks,
                &mut failing,
                &mut uncharged,
            )
            .is_err());
        assert!(g.nodes().is_empty());
        g.add(
            &opts(
                json!({"driver": "file", "node-name": "ro", "filename": "/a", "read-only": true}),
            ),
            true,
            &no_disks,
            &mut devnull,
            &mut uncharged,
        )
        .unwrap();
        assert_eq!(
            add(
                &mut g,
                json!({"driver": "raw", "node-name": "rw", "file": "ro"})
            ),
            "Block node is read-only"
        );
        assert_eq!(
            add(
                &mut g,
                json!({"driver": "file", "node-name": "ro", "filename": "/a"})
            ),
            "Duplicate nodes with node-name='ro'"
        );
    }

    /// A scratch directory of images made by the qcow2 library's create.
    struct Images(std::path::PathBuf);

    impl Images {
        fn new(tag: &str) -> Images {
            let dir =
                std::env::temp_dir().join(format!("flotilla-graph-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Images(dir)
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).display().to_string()
        }

        fn qcow2(&self, name: &str, backing: Option<(&str, Option<&str>)>) -> String {
            use block_daemon::formats::qcow2::create::{create, CreateOptions};
            let path = self.path(name);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            create(
                &file,
                &CreateOptions {
                    size: 1 << 20,
                    backing_file: backing.map(|(b, _)| b.to_string()),
                    backing_format: backing.and_then(|(_, f)| f.map(str::to_string)),
                    ..Default::default()
                },
            )
            .unwrap();
            path
        }

        fn raw(&self, name: &str) -> String {
            let path = self.path(name);
            std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
            path
        }
    }

    impl Drop for Images {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open_real(path: &str, driver: Driver, write: bool) -> Result<OwnedFd, BlockError> {
        open_path(path, driver, write)
    }

    fn add_qcow2(g: &mut Graph, v: Value) -> Result<String, String> {
        g.add(&opts(v), true, &no_disks, &mut open_real, &mut uncharged)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_backing_chain_from_the_headers() {
        let imgs = Images::new("chain");
        imgs.raw("base.raw");
        // A relative name with its format, then one without (probed).
        imgs.qcow2("mid.qcow2", Some(("base.raw", Some("raw"))));
        let top = imgs.qcow2("top.qcow2", Some(("mid.qcow2", None)));
        let mut g = Graph::default();
        add_qcow2(
            &mut g,
            json!({"driver": "qcow2", "node-name": "top", "file": {"driver": "file", "filename": top}}),
        )
        .unwrap();
        let chain: Vec<(Driver, bool)> = g
            .chain("top")
            .iter()
            .map(|n| (n.driver, n.read_only))
            .collect();
        assert_eq!(
            chain,
            [
                (Driver::Qcow2, false),
                (Driver::Qcow2, true),
                (Driver::Raw, true)
            ]
        );
        let mid = g.node("top").unwrap().backing.clone().unwrap();
        assert!(mid.starts_with("#block"));
        assert_eq!(g.node(&mid).unwrap().filename, imgs.path("mid.qcow2"));
        assert_eq!(g.backing_depth("top"), 2);
        // QEMU's creation order: file, format node, then the backing file's.
        let drivers: Vec<&str> = g.nodes().iter().map(|n| n.driver.name()).collect();
        assert_eq!(drivers, ["file", "qcow2", "file", "qcow2", "file", "raw"]);
        // The implicit nodes go with the top.
        g.remove("top", &no_disks).unwrap();
        assert!(g.nodes().is_empty());
    }

    #[test]
    fn backing_options_override_the_header() {
        let imgs = Images::new("override");
        let base = imgs.raw("base.raw");
        let top = imgs.qcow2("top.qcow2", Some(("missing.qcow2", Some("qcow2"))));
        let mut g = Graph::default();
        // null: no backing file even though the header names one (a missing one).
        add_qcow2(
            &mut g,
            json!({"driver": "qcow2", "node-name": "t0", "backing": null,
                   "file": {"driver": "file", "filename": top}}),
        )
        .unwrap();
        let t0 = g.node("t0").unwrap();
        assert!(t0.backing.is_none());
        assert_eq!(
            t0.filename,
            format!(
                "json:{{\"backing\": null, \"driver\": \"qcow2\", \"file\": {{\"driver\": \"file\", \"filename\": \"{top}\"}}}}"
            )
        );
        g.remove("t0", &no_disks).unwrap();
        // A node by name: shared by two overlays (QEMU allows it), then busy.
        add_qcow2(
            &mut g,
            json!({"driver": "raw", "node-name": "b", "file": {"driver": "file", "filename": base}}),
        )
        .unwrap();
        let other = imgs.qcow2("other.qcow2", None);
        for (name, file) in [("t1", &top), ("t2", &other)] {
            add_qcow2(
                &mut g,
                json!({"driver": "qcow2", "node-name": name, "backing": "b",
                       "file": {"driver": "file", "filename": file}}),
            )
            .unwrap();
        }
        assert_eq!(g.backing_depth("t1"), 1);
        assert_eq!(
            g.remove("b", &no_disks).unwrap_err().to_string(),
            "Node 'b' is busy: node is used as backing hd of 't2'"
        );
        // A second writer of an image a qcow2 node has open is refused, as on QEMU.
        assert_eq!(
            add_qcow2(
                &mut g,
                json!({"driver": "qcow2", "node-name": "t3", "backing": "b",
                       "file": {"driver": "file", "filename": other}}),
            )
            .unwrap_err(),
            format!("Failed to get \"write\" lock\nIs another process using the image [{other}]?")
        );
        let third = imgs.qcow2("third.qcow2", None);
        assert_eq!(
            add_qcow2(
                &mut g,
                json!({"driver": "qcow2", "node-name": "t3", "backing": "nosuch",
                       "file": {"driver": "file", "filename": third}}),
            )
            .unwrap_err(),
            "Could not open backing file: Cannot find device='nosuch' nor node-name='nosuch'"
        );
        assert!(g.node("t3").is_none());
        g.remove("t1", &no_disks).unwrap();
        g.remove("t2", &no_disks).unwrap();
        assert!(g.node("b").is_some(), "a node added on its own stays");
    }

    #[test]
    fn bad_chains_are_refused_and_leave_nothing() {
        let imgs = Images::new("bad");
        let missing = imgs.qcow2("m.qcow2", Some(("nosuch.qcow2", Some("qcow2"))));
        let plain = imgs.raw("plain.raw");
        let wrong = imgs.qcow2("w.qcow2", Some((plain.as_str(), Some("qcow2"))));
        let a = imgs.path("a.qcow2");
        let b = imgs.qcow2("b.qcow2", Some((a.as_str(), Some("qcow2"))));
        imgs.qcow2("a.qcow2", Some((b.as_str(), Some("qcow2"))));
        let json_named = imgs.qcow2("j.qcow2", Some(("json:{}", Some("qcow2"))));
        let mut g = Graph::default();
        let add = |g: &mut Graph, f: &str| {
            add_qcow2(
                g,
                json!({"driver": "qcow2", "node-name": "t", "read-only": true,
                       "file": {"driver": "file", "filename": f}}),
            )
            .unwrap_err()
        };
        assert_eq!(
            add(&mut g, &missing),
            format!(
                "Could not open backing file: Could not open '{}': No such file or directory",
                imgs.path("nosuch.qcow2")
            )
        );
        assert_eq!(
            add(&mut g, &wrong),
            "Could not open backing file: Image is not in qcow2 format"
        );
        assert_eq!(add(&mut g, &plain), "Image is not in qcow2 format");
        let looped = add(&mut g, &a);
        assert!(
            looped.ends_with(&format!("Backing file '{a}' creates an infinite loop.")),
            "{looped}"
        );
        assert!(add(&mut g, &json_named).contains("json:"));
        assert!(g.nodes().is_empty());
    }

    #[test]
    fn an_absurdly_deep_chain_is_refused() {
        let imgs = Images::new("deep");
        imgs.raw("0");
        for i in 1..=MAX_CHAIN {
            imgs.qcow2(&i.to_string(), Some((&(i - 1).to_string(), None)));
        }
        let mut g = Graph::default();
        let at = |i: usize| {
            json!({"driver": "qcow2", "node-name": "t", "read-only": true,
                   "file": {"driver": "file", "filename": imgs.path(&i.to_string())}})
        };
        // MAX_CHAIN images in all: served.
        add_qcow2(&mut g, at(MAX_CHAIN - 1)).unwrap();
        assert_eq!(g.chain("t").len(), MAX_CHAIN);
        g.remove("t", &no_disks).unwrap();
        // One more: refused, and nothing stays.
        let err = add_qcow2(&mut g, at(MAX_CHAIN)).unwrap_err();
        assert!(
            err.ends_with(&format!(
                "the backing chain is deeper than {MAX_CHAIN} images at '{}'",
                imgs.path("1")
            )),
            "{err}"
        );
        assert!(g.nodes().is_empty());
    }

    #[test]
    fn open_errors_read_like_qemu() {
        assert_eq!(
            open_path("/nonexistent", Driver::File, false)
                .unwrap_err()
                .to_string(),
            "Could not open '/nonexistent': No such file or directory"
        );
        assert_eq!(
            open_path("/etc/hostname", Driver::HostDevice, false)
                .unwrap_err()
                .to_string(),
            "'host_device' driver requires '/etc/hostname' to be either a character or block device"
        );
        assert!(open_path("/dev/null", Driver::HostDevice, false).is_ok());
    }
}
