//! The block node graph: protocol nodes (an image the gateway opened) and raw format nodes
//! over them, with QEMU's naming rules, option inheritance (an inline child takes its
//! parent's read-only, cache and discard settings unless it sets its own) and rules for
//! adding and deleting (a node in use stays).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::sync::Arc;

use ipc::{CacheFlags, DetectZeroes};

use super::error::BlockError;
use super::options::{check_node_name, ChildRef, Driver, NodeOptions, Source};

pub struct Node {
    pub name: String,
    pub driver: Driver,
    /// The image's path as given (protocol nodes), or the child's (format nodes).
    pub filename: String,
    pub read_only: bool,
    pub cache: CacheFlags,
    pub discard_unmap: bool,
    pub detect_zeroes: DetectZeroes,
    /// The opened image (protocol nodes).
    pub image: Option<Arc<OwnedFd>>,
    /// A format node's protocol child.
    pub child: Option<String>,
    /// Added by blockdev-add as the root of what it created: blockdev-del may delete it.
    pub monitor_owned: bool,
}

/// Opens a protocol node's image: (path, driver, writable) to an fd, or QEMU's error.
pub type Opener<'a> = dyn FnMut(&str, Driver, bool) -> Result<OwnedFd, BlockError> + 'a;

/// Settings an inline child inherits from its parent.
#[derive(Clone, Copy, Default)]
struct Inherited {
    read_only: Option<bool>,
    direct: Option<bool>,
    no_flush: Option<bool>,
    discard_unmap: Option<bool>,
}

#[derive(Default)]
pub struct Graph {
    /// In creation order.
    nodes: Vec<Node>,
    next_auto: u64,
}

impl Graph {
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The protocol node under `name` (itself, or its child).
    pub fn protocol_of(&self, name: &str) -> Option<&Node> {
        let node = self.node(name)?;
        match &node.child {
            None => Some(node),
            Some(child) => self.protocol_of(child),
        }
    }

    /// `root` and every node below it.
    pub fn tree(&self, root: &str) -> Vec<String> {
        let mut out = vec![root.to_string()];
        let mut at = self.node(root).and_then(|n| n.child.clone());
        while let Some(name) = at {
            at = self.node(&name).and_then(|n| n.child.clone());
            out.push(name);
        }
        out
    }

    fn parent_of(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.child.as_deref() == Some(name))
    }

    /// QEMU's automatic names: "#block", a counter, two more digits.
    fn auto_name(&mut self) -> String {
        let n = self.next_auto;
        self.next_auto += 1;
        let salt = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 100;
        format!("#block{n}{salt:02}")
    }

    /// Adds the nodes `opts` describes; returns the root's name. `root_needs_name`: a
    /// blockdev-add root must be named; `taken`: names node names may not take (disk
    /// ids). Nothing is added if anything fails.
    pub fn add(
        &mut self,
        opts: &NodeOptions,
        monitor_owned: bool,
        taken: &dyn Fn(&str) -> bool,
        open: &mut Opener,
    ) -> Result<String, BlockError> {
        if monitor_owned && opts.node_name.is_none() {
            return Err(BlockError::RootNeedsName);
        }
        let mut created = Vec::new();
        let result = self.add_node(opts, Inherited::default(), taken, open, &mut created);
        match &result {
            Err(_) => self.nodes.retain(|n| !created.contains(&n.name)),
            Ok(root) => {
                if let Some(n) = self.nodes.iter_mut().find(|n| &n.name == root) {
                    n.monitor_owned = monitor_owned;
                }
            }
        }
        result
    }

    fn add_node(
        &mut self,
        opts: &NodeOptions,
        inherited: Inherited,
        taken: &dyn Fn(&str) -> bool,
        open: &mut Opener,
        created: &mut Vec<String>,
    ) -> Result<String, BlockError> {
        let name = match &opts.node_name {
            Some(n) => {
                check_node_name(n)?;
                if self.node(n).is_some() {
                    return Err(BlockError::DuplicateNode(n.clone()));
                }
                if taken(n) {
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
        let detect_zeroes = opts.detect_zeroes.unwrap_or_default();
        if detect_zeroes == DetectZeroes::Unmap && !discard_unmap {
            return Err(BlockError::DetectZeroesUnmap);
        }
        let (filename, image, child) = match &opts.source {
            Source::Path(path) => {
                let fd = open(path, opts.driver, !read_only)?;
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
                };
                let child = self.add_node(child_opts, inherit, taken, open, created)?;
                let c = self.node(&child).map(|c| c.filename.clone());
                (c.unwrap_or_default(), None, Some(child))
            }
        };
        self.nodes.push(Node {
            name: name.clone(),
            driver: opts.driver,
            filename,
            read_only,
            cache,
            discard_unmap,
            detect_zeroes,
            image,
            child,
            monitor_owned: false,
        });
        created.push(name.clone());
        Ok(name)
    }

    /// blockdev-del: removes a node blockdev-add created, with the children created with
    /// it. `in_use`: nodes a disk is attached to.
    pub fn remove(&mut self, name: &str, in_use: &dyn Fn(&str) -> bool) -> Result<(), BlockError> {
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
        if self.parent_of(name).is_some() {
            return Err(BlockError::InUse(name.to_string()));
        }
        let mut at = Some(name.to_string());
        while let Some(n) = at.take() {
            let Some(i) = self.nodes.iter().position(|x| x.name == n) else {
                break;
            };
            let removed = self.nodes.remove(i);
            // A child goes with its parent unless blockdev-add created it on its own.
            if let Some(c) = removed.child {
                if self.node(&c).is_some_and(|c| !c.monitor_owned) && self.parent_of(&c).is_none() {
                    at = Some(c);
                }
            }
        }
        Ok(())
    }
}

impl Graph {
    /// Removes `root` and everything below it, whoever created them (undoing a drive
    /// whose daemon did not start).
    pub fn remove_tree(&mut self, root: &str) {
        let tree = self.tree(root);
        self.nodes.retain(|n| !tree.contains(&n.name));
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

    #[test]
    fn add_inherit_and_delete() {
        let mut g = Graph::default();
        let f1 = g
            .add(
                &opts(json!({"driver": "file", "node-name": "f1", "filename": "/a"})),
                true,
                &no_disks,
                &mut devnull,
            )
            .unwrap();
        assert_eq!(f1, "f1");
        g.add(
            &opts(json!({"driver": "raw", "node-name": "r1", "file": "f1"})),
            true,
            &no_disks,
            &mut devnull,
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
            g.add(&opts(v), true, &|n| n == "d0", &mut devnull)
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
                &mut failing
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
