//! The gateway's block layer: the node graph (images the gateway opened and the raw nodes
//! over them), the disks the guest sees (a node tree attached to a virtio-blk device and
//! served by its own block daemon), throttle groups, write thresholds, and the block QMP
//! commands, each answered from the graph or by the daemon that serves the disk.

pub mod disk;
pub mod drive;
pub mod graph;
pub mod info;
pub mod options;
pub mod throttle;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Instant;

use ipc::{BlockOpen, BlockReply, BlockRequest, BlockStats, CacheFlags, DiskLaunch, VmmRequest};
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::children::link::VmmLink;
use crate::children::sandbox::Policy;
use crate::children::supervise::{supervise, Death, Supervised};
use crate::events::{DaemonExited, DaemonRestarted, Event, EventBus};
use crate::fdstore::FdSets;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::sockets::{bind_private, RuntimeDir};
use disk::{Disk, Group, Hooks};
use drive::DriveSpec;
use graph::{errno_text, Graph};
use options::{ChildRef, Driver, NodeOptions, Source};

#[derive(Default)]
struct State {
    graph: Graph,
    disks: Vec<Disk>,
    groups: BTreeMap<String, Group>,
}

impl State {
    fn disk_by_id(&self, id: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.id == id)
    }

    fn disk_by_qdev(&self, id: &str) -> Option<&Disk> {
        self.disks
            .iter()
            .find(|d| d.qdev == id || d.qom_path == id || (!d.id.is_empty() && d.id == id))
    }

    /// QEMU's bdrv_lookup_bs: the root node of disk `device`, else node `node`.
    fn lookup_node(&self, device: Option<&str>, node: Option<&str>) -> Result<String, QmpError> {
        device
            .and_then(|d| self.disk_by_id(d).map(|d| d.root.clone()))
            .or_else(|| {
                node.filter(|n| self.graph.node(n).is_some())
                    .map(str::to_string)
            })
            .ok_or_else(|| {
                QmpError::generic(format!(
                    "Cannot find device='{}' nor node-name='{}'",
                    device.unwrap_or_default(),
                    node.unwrap_or_default()
                ))
            })
    }

    /// The disk whose tree holds `node`.
    fn disk_of_node(&self, node: &str) -> Option<&Disk> {
        self.disks
            .iter()
            .find(|d| self.graph.tree(&d.root).iter().any(|n| n == node))
    }

    fn group_members(&self, group: &str) -> Vec<usize> {
        (0..self.disks.len())
            .filter(|i| {
                self.disks[*i]
                    .throttle
                    .as_ref()
                    .is_some_and(|(_, g)| g == group)
            })
            .collect()
    }
}

pub struct BlockLayer {
    state: Mutex<State>,
    /// Write thresholds by node. Apart from `state`: the daemons' event readers update it,
    /// and must never wait for a lock held across a call to a daemon.
    thresholds: Arc<Mutex<BTreeMap<String, u64>>>,
    hooks: Hooks,
    /// Ids of disks whose daemon died, for the supervisor (taken when it starts).
    deaths: Mutex<Option<Receiver<String>>>,
    vmm: Arc<VmmLink>,
    daemon_binary: PathBuf,
    runtime: RuntimeDir,
    stopping: AtomicBool,
}

fn str_arg<'a>(args: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

/// QMP's "exactly one of device and id": the name given, and whether it was an id.
pub fn device_or_id(args: &Map<String, Value>) -> Result<(&str, bool), QmpError> {
    match (str_arg(args, "device"), str_arg(args, "id")) {
        (Some(d), None) => Ok((d, false)),
        (None, Some(i)) => Ok((i, true)),
        _ => Err(QmpError::generic("Need exactly one of 'device' and 'id'")),
    }
}

impl BlockLayer {
    pub fn new(
        events: Arc<EventBus>,
        vmm: Arc<VmmLink>,
        daemon_binary: PathBuf,
        sandbox: Policy,
    ) -> std::io::Result<BlockLayer> {
        let thresholds = Arc::new(Mutex::new(BTreeMap::new()));
        let (deaths_tx, deaths_rx) = mpsc::channel();
        Ok(BlockLayer {
            state: Mutex::new(State::default()),
            hooks: Hooks {
                thresholds: thresholds.clone(),
                events,
                deaths: deaths_tx,
                sandbox,
            },
            thresholds,
            deaths: Mutex::new(Some(deaths_rx)),
            vmm,
            daemon_binary,
            runtime: RuntimeDir::create()?,
            stopping: AtomicBool::new(false),
        })
    }

    /// Opens an image path or /dev/fdset/N for a protocol node.
    fn opener<'a>(
        fdsets: &'a FdSets,
    ) -> impl FnMut(&str, Driver, bool) -> Result<OwnedFd, QmpError> + 'a {
        move |path: &str, driver: Driver, write: bool| {
            let Some(set) = path.strip_prefix("/dev/fdset/") else {
                return graph::open_path(path, driver, write);
            };
            let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
            let fail = |e: std::io::Error| {
                QmpError::generic(format!(
                    "Could not dup FD for {path} flags {flags}: {}",
                    errno_text(&e)
                ))
            };
            let id: i64 = set
                .parse()
                .map_err(|_| fail(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
            let fd = fdsets.dup_for_open(id, write).map_err(fail)?;
            graph::check_kind(
                &std::fs::File::from(fd.try_clone().map_err(fail)?),
                path,
                driver,
            )?;
            Ok(fd)
        }
    }

    /// `--drive`: the nodes, the daemon, and vmm-core's end of the vhost-user socket.
    pub fn add_drive(
        &self,
        index: usize,
        spec: &DriveSpec,
        fdsets: &FdSets,
    ) -> anyhow::Result<(DiskLaunch, OwnedFd)> {
        let id = spec.id.clone().unwrap_or_else(|| format!("virtio{index}"));
        let opts = NodeOptions {
            driver: Driver::Raw,
            node_name: spec.node_name.clone(),
            read_only: Some(spec.read_only),
            direct: Some(spec.direct),
            no_flush: Some(spec.no_flush),
            discard_unmap: Some(spec.discard_unmap),
            detect_zeroes: Some(spec.detect_zeroes),
            source: Source::Child(ChildRef::Inline(Box::new(NodeOptions {
                driver: Driver::File,
                node_name: None,
                read_only: None,
                direct: None,
                no_flush: None,
                discard_unmap: None,
                detect_zeroes: None,
                source: Source::Path(spec.file.clone()),
            }))),
        };
        let mut state = self.state.lock();
        if state.disk_by_id(&id).is_some() || state.graph.node(&id).is_some() {
            anyhow::bail!("drive id {id} is used twice");
        }
        let root = state
            .graph
            .add(&opts, false, &|n| n == id, &mut Self::opener(fdsets))
            .map_err(|e| anyhow::anyhow!("drive {id}: {}", e.desc))?;
        let qom_path = format!("/machine/peripheral-anon/device[{index}]");
        let serial = spec.serial.clone().unwrap_or_else(|| id.clone());
        let attached = self.attach(
            &mut state,
            &id,
            &root,
            spec.queues,
            serial,
            spec.stats_intervals.clone(),
            qom_path,
        );
        match attached {
            Ok(stream) => Ok((
                DiskLaunch {
                    id: id.clone(),
                    max_queues: spec.queues,
                },
                stream,
            )),
            Err(e) => {
                // Nothing of the drive stays: its nodes go too.
                state.graph.remove_tree(&root);
                Err(anyhow::anyhow!("drive {id}: {}", e.desc))
            }
        }
    }

    /// Starts the daemon for a disk over `root`; returns vmm-core's end of its socket.
    #[allow(clippy::too_many_arguments)]
    fn attach(
        &self,
        state: &mut State,
        id: &str,
        root: &str,
        queues: u32,
        serial: String,
        stats_intervals: Vec<u32>,
        qom_path: String,
    ) -> Result<OwnedFd, QmpError> {
        let node = state
            .graph
            .node(root)
            .ok_or_else(|| QmpError::generic(format!("no node {root}")))?;
        let proto = state
            .graph
            .protocol_of(root)
            .ok_or_else(|| QmpError::generic(format!("node {root} has no image")))?;
        let image = proto
            .image
            .clone()
            .ok_or_else(|| QmpError::generic(format!("node {} has no image", proto.name)))?;
        let config = BlockOpen {
            node_name: root.to_string(),
            serial,
            read_only: node.read_only || proto.read_only,
            cache: CacheFlags {
                direct: proto.cache.direct,
                no_flush: node.cache.no_flush,
            },
            discard_unmap: node.discard_unmap && proto.discard_unmap,
            detect_zeroes: node.detect_zeroes,
            queues,
            stats_intervals,
        };
        let socket = self
            .runtime
            .path()
            .join(format!("disk{}.sock", state.disks.len()));
        let listener = bind_private(&socket).map_err(|e| QmpError::generic(e.to_string()))?;
        let mut disk = Disk {
            index: state.disks.len() as u32,
            id: id.to_string(),
            qdev: format!("{qom_path}/virtio-backend"),
            qom_path,
            root: root.to_string(),
            nodes: state.graph.tree(root),
            throttle: None,
            config,
            image,
            listener,
            socket,
            binary: self.daemon_binary.clone(),
            daemon: None,
            started: Instant::now(),
            failures: 0,
            hold: false,
        };
        let pid = disk.start(&state.groups, &self.hooks)?;
        let stream = disk.connect()?;
        log::info!("disk {id}: node {root}, block daemon pid {pid}");
        state.disks.push(disk);
        Ok(stream.into())
    }

    /// Replaces disk `id`'s daemon (stopping it if it runs) with a new one, from
    /// `binary` if given, and hands vmm-core a connection to it. Returns the new pid.
    pub fn restart(&self, id: &str, binary: Option<PathBuf>) -> Result<u32, QmpError> {
        let mut state = self.state.lock();
        let State { disks, groups, .. } = &mut *state;
        let disk = disks
            .iter_mut()
            .find(|d| d.id == id)
            .ok_or_else(|| QmpError::device_not_found(id))?;
        if let Some(b) = binary {
            disk.binary = b;
        }
        if let Some(how) = disk.stop() {
            log::info!("disk {id}: block daemon stopped ({how})");
        }
        let pid = disk.start(groups, &self.hooks)?;
        let stream = disk.connect()?;
        self.vmm.request(
            VmmRequest::DiskReconnect { disk: disk.index },
            &[stream.as_fd()],
        )?;
        log::info!("disk {id}: block daemon pid {pid} serves it now");
        Ok(pid)
    }

    /// `restart` for QMP: named by device or id; the failure count starts over.
    pub fn restart_requested(&self, args: &Map<String, Value>) -> QmpResult {
        let (name, by_id) = device_or_id(args)?;
        let id = {
            let state = self.state.lock();
            let disk = if by_id {
                state.disk_by_qdev(name)
            } else {
                state.disk_by_id(name)
            };
            disk.map(|d| d.id.clone())
                .ok_or_else(|| QmpError::device_not_found(name))?
        };
        if let Some(d) = self.state.lock().disks.iter_mut().find(|d| d.id == id) {
            d.failures = 0;
            // The supervisor keeps out of it: this restart's outcome is reported here.
            d.hold = true;
        }
        let binary = str_arg(args, "binary").map(PathBuf::from);
        match self.restart(&id, binary) {
            Ok(pid) => {
                self.hooks
                    .events
                    .emit(Event::BlockDaemonRestarted(DaemonRestarted {
                        device: id.clone(),
                        pid,
                    }));
                Ok(json!({"pid": pid}))
            }
            Err(e) => {
                if let Some(d) = self.state.lock().disks.iter_mut().find(|d| d.id == id) {
                    d.stop();
                }
                self.hooks
                    .events
                    .emit(Event::BlockDaemonExited(DaemonExited {
                        device: id.clone(),
                        pid: None,
                        reason: format!("failed to start: {}", e.desc),
                        restart_in_ms: None,
                    }));
                Err(e)
            }
        }
    }

    /// Restarts daemons that die, with backoff; gives up on one that keeps dying.
    pub fn start_supervisor(self: &Arc<Self>) -> std::io::Result<()> {
        match self.deaths.lock().take() {
            Some(deaths) => supervise(self.clone(), deaths, "block-supervisor"),
            None => Ok(()),
        }
    }

    pub fn blockdev_add(&self, args: &Map<String, Value>, fdsets: &FdSets) -> QmpResult {
        // QEMU 2.x wrapped the options in "options"; later QEMU takes them as they are.
        let obj = match args.get("options") {
            Some(Value::Object(o)) if args.len() == 1 => o,
            Some(_) if args.len() == 1 => {
                return Err(QmpError::generic(
                    "Invalid parameter type for 'options', expected: object",
                ))
            }
            _ => args,
        };
        let opts = options::parse(obj, "")?;
        let mut state = self.state.lock();
        let ids: Vec<String> = state.disks.iter().map(|d| d.id.clone()).collect();
        state.graph.add(
            &opts,
            true,
            &|n| ids.iter().any(|i| i == n),
            &mut Self::opener(fdsets),
        )?;
        Ok(json!({}))
    }

    pub fn blockdev_del(&self, name: &str) -> QmpResult {
        let mut state = self.state.lock();
        let roots: Vec<String> = state.disks.iter().map(|d| d.root.clone()).collect();
        state
            .graph
            .remove(name, &|n| roots.iter().any(|r| r == n))?;
        self.thresholds.lock().remove(name);
        Ok(json!({}))
    }

    fn threshold(&self, node: &str) -> u64 {
        self.thresholds.lock().get(node).copied().unwrap_or(0)
    }

    pub fn query_block(&self) -> QmpResult {
        let state = self.state.lock();
        let out: Vec<Value> = state
            .disks
            .iter()
            .filter_map(|d| {
                let node = state.graph.node(&d.root)?;
                let throttle = d.throttle.as_ref().map(|(l, g)| (l, g.as_str()));
                Some(json!({
                    "device": d.id,
                    "qdev": d.qdev,
                    "type": "unknown",
                    "removable": false,
                    "locked": false,
                    "io-status": "ok",
                    "inserted": info::node_info(&state.graph, node, throttle, self.threshold(&d.root)),
                }))
            })
            .collect();
        Ok(Value::Array(out))
    }

    pub fn query_named_block_nodes(&self) -> QmpResult {
        let state = self.state.lock();
        // Newest first, as QEMU lists them.
        Ok(state
            .graph
            .nodes()
            .iter()
            .rev()
            .map(|n| info::node_info(&state.graph, n, None, self.threshold(&n.name)))
            .collect())
    }

    /// A disk's counters from its daemon (zeroes while it has none: a restarted daemon
    /// counts from zero too).
    fn daemon_stats(disk: &Disk) -> Result<BlockStats, QmpError> {
        let Some(daemon) = disk.daemon.as_ref() else {
            return Ok(BlockStats::default());
        };
        match daemon.link.request(BlockRequest::Stats, &[])? {
            BlockReply::Stats(s) => Ok(*s),
            other => Err(QmpError::generic(format!(
                "{} answered the stats call with {other:?}",
                daemon.link.name()
            ))),
        }
    }

    pub fn query_blockstats(&self, query_nodes: bool) -> QmpResult {
        let state = self.state.lock();
        let mut stats_of: BTreeMap<String, BlockStats> = BTreeMap::new();
        for d in &state.disks {
            stats_of.insert(d.id.clone(), Self::daemon_stats(d)?);
        }
        let disk_stats = |node: &str| -> Option<&BlockStats> {
            state.disk_of_node(node).and_then(|d| stats_of.get(&d.id))
        };
        // A node's own entry: node-level stats, its child as "parent", file counters.
        let node_entry = |name: &str, stats: Value| -> Value {
            let mut v = json!({"node-name": name, "stats": stats});
            let Some(node) = state.graph.node(name) else {
                return v;
            };
            let s = disk_stats(name).cloned().unwrap_or_default();
            if node.driver.is_protocol() {
                v["driver-specific"] = info::file_driver_stats(&s);
            }
            if let Some(child) = &node.child {
                let mut parent = json!({
                    "node-name": child,
                    "stats": info::node_stats(s.wr_highest_offset),
                });
                if state
                    .graph
                    .node(child)
                    .is_some_and(|c| c.driver.is_protocol())
                {
                    parent["driver-specific"] = info::file_driver_stats(&s);
                }
                v["parent"] = parent;
            }
            v
        };
        let out: Vec<Value> = if query_nodes {
            state
                .graph
                .nodes()
                .iter()
                .map(|n| {
                    let offset = disk_stats(&n.name).map_or(0, |s| s.wr_highest_offset);
                    node_entry(&n.name, info::node_stats(offset))
                })
                .collect()
        } else {
            state
                .disks
                .iter()
                .map(|d| {
                    let s = stats_of.get(&d.id).cloned().unwrap_or_default();
                    let mut v = node_entry(&d.root, info::device_stats(&s));
                    v["device"] = json!(d.id);
                    v["qdev"] = json!(d.qdev);
                    v
                })
                .collect()
        };
        Ok(Value::Array(out))
    }

    /// Resizes a node; returns the index of the disk whose guest must be told.
    pub fn block_resize(
        &self,
        device: Option<&str>,
        node: Option<&str>,
        size: i64,
    ) -> Result<Option<u32>, QmpError> {
        let state = self.state.lock();
        let name = state.lookup_node(device, node)?;
        let size = u64::try_from(size)
            .map_err(|_| QmpError::generic("Parameter 'size' expects a >0 size"))?;
        let read_only = state.graph.node(&name).is_some_and(|n| n.read_only);
        if read_only {
            return Err(QmpError::generic("Image is read-only"));
        }
        // Raw images are whole sectors.
        let bytes = size.div_ceil(512) * 512;
        if let Some(disk) = state.disk_of_node(&name) {
            disk.daemon()?
                .link
                .request(BlockRequest::Resize { bytes }, &[])?;
            return Ok(Some(disk.index));
        }
        let image = state
            .graph
            .protocol_of(&name)
            .and_then(|p| p.image.clone())
            .ok_or_else(|| QmpError::generic(format!("node {name} has no image")))?;
        let file = std::fs::File::from(
            image
                .try_clone()
                .map_err(|e| QmpError::generic(e.to_string()))?,
        );
        let (current, _) = info::image_sizes(&image);
        let is_device = file.metadata().is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
        if is_device {
            if bytes > current {
                return Err(QmpError::generic("Cannot grow device files"));
            }
            return Ok(None);
        }
        file.set_len(bytes)
            .map_err(|e| QmpError::generic(format!("Could not resize file: {}", errno_text(&e))))?;
        Ok(None)
    }

    pub fn set_io_throttle(&self, args: &Map<String, Value>) -> QmpResult {
        let (name, by_id) = device_or_id(args)?;
        let mut state = self.state.lock();
        let index = state
            .disks
            .iter()
            .position(|d| {
                if by_id {
                    d.qdev == name || d.qom_path == name
                } else {
                    d.id == name
                }
            })
            .ok_or_else(|| QmpError::device_not_found(name))?;
        let limits = throttle::parse(args)?;
        let old_group = state.disks[index].throttle.as_ref().map(|(_, g)| g.clone());
        if !limits.enabled() {
            if let Some(d) = state.disks[index].daemon.as_ref() {
                d.link.request(BlockRequest::SetThrottle(None), &[])?;
            }
            state.disks[index].throttle = None;
            if let Some(g) = old_group {
                if state.group_members(&g).is_empty() {
                    state.groups.remove(&g);
                }
            }
            return Ok(json!({}));
        }
        let group = str_arg(args, "group")
            .map(str::to_string)
            .unwrap_or_else(|| state.disks[index].qdev.clone());
        if !state.groups.contains_key(&group) {
            let page = ipc::new_throttle_state()
                .map_err(|e| QmpError::generic(format!("throttle group state: {e}")))?;
            state.groups.insert(
                group.clone(),
                Group {
                    state: page,
                    limits,
                },
            );
        }
        // The new limits are the group's: every member applies them.
        state.disks[index].throttle = Some((limits, group.clone()));
        if let Some(g) = state.groups.get_mut(&group) {
            g.limits = limits;
        }
        let members = state.group_members(&group);
        for &i in &members {
            let Some(g) = state.groups.get(&group) else {
                break;
            };
            // A disk whose daemon is down gets the limits when one starts.
            if let Some(d) = state.disks[i].daemon.as_ref() {
                d.link.request(
                    BlockRequest::SetThrottle(Some(g.limits)),
                    &[g.state.as_fd()],
                )?;
            }
        }
        for &i in &members {
            state.disks[i].throttle = Some((limits, group.clone()));
        }
        if let Some(old) = old_group.filter(|g| *g != group) {
            if state.group_members(&old).is_empty() {
                state.groups.remove(&old);
            }
        }
        Ok(json!({}))
    }

    pub fn set_write_threshold(&self, node: &str, bytes: i64) -> QmpResult {
        let state = self.state.lock();
        if state.graph.node(node).is_none() {
            return Err(QmpError::generic(format!("Device '{node}' not found")));
        }
        let bytes = u64::try_from(bytes).map_err(|_| {
            QmpError::generic("Parameter 'write-threshold' expects a non-negative value")
        })?;
        if let Some(daemon) = state.disk_of_node(node).and_then(|d| d.daemon.as_ref()) {
            daemon.link.request(
                BlockRequest::SetWriteThreshold {
                    node_name: node.to_string(),
                    bytes,
                },
                &[],
            )?;
        }
        let mut thresholds = self.thresholds.lock();
        if bytes == 0 {
            thresholds.remove(node);
        } else {
            thresholds.insert(node.to_string(), bytes);
        }
        Ok(json!({}))
    }

    /// For the removable-medium commands: the disk named by `device` or `id` (QEMU's
    /// lookup and errors), which is never removable here.
    pub fn not_removable(&self, args: &Map<String, Value>) -> QmpResult {
        let (name, by_id) = device_or_id(args)?;
        let state = self.state.lock();
        let found = if by_id {
            state.disk_by_qdev(name).is_some()
        } else {
            state.disk_by_id(name).is_some()
        };
        if !found {
            return Err(QmpError::device_not_found(name));
        }
        Err(QmpError::generic(format!(
            "Device '{name}' is not removable"
        )))
    }

    /// blockdev-insert-medium: the node must exist, then the device is not removable.
    pub fn insert_medium(&self, args: &Map<String, Value>) -> QmpResult {
        let node = str_arg(args, "node-name").unwrap_or_default();
        if self.state.lock().graph.node(node).is_none() {
            return Err(QmpError::generic(format!("Node '{node}' not found")));
        }
        self.not_removable(args)
    }

    /// block_passwd: nothing here is encrypted (QEMU 2.x's lookup and message).
    pub fn block_passwd(&self, device: Option<&str>, node: Option<&str>) -> QmpResult {
        let state = self.state.lock();
        let name = state.lookup_node(device, node)?;
        let shown = device
            .filter(|d| state.disk_by_id(d).is_some())
            .unwrap_or(&name);
        Err(QmpError::generic(format!(
            "Device '{shown}' is not encrypted"
        )))
    }

    /// `change DEVICE TARGET`: a medium change, which no disk here accepts.
    pub fn change(&self, device: &str) -> QmpResult {
        let state = self.state.lock();
        if state.disk_by_id(device).is_none() {
            return Err(QmpError::device_not_found(device));
        }
        Err(QmpError::generic(format!(
            "Device '{device}' is not removable"
        )))
    }

    pub fn node_exists(&self, name: &str) -> bool {
        self.state.lock().graph.node(name).is_some()
    }

    /// Stops every daemon (after vmm-core, their frontend, has gone) and removes their
    /// sockets' directory.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut disks = std::mem::take(&mut self.state.lock().disks);
        for d in &mut disks {
            d.stop();
        }
        self.runtime.remove();
    }
}

impl Supervised for BlockLayer {
    const DEVICE: &'static str = "disk";
    const DAEMON: &'static str = "block daemon";
    const EXITED: fn(DaemonExited) -> Event = Event::BlockDaemonExited;
    const RESTARTED: fn(DaemonRestarted) -> Event = Event::BlockDaemonRestarted;
    type Error = QmpError;

    fn events(&self) -> &EventBus {
        &self.hooks.events
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn reap(&self, id: &str) -> Option<Death> {
        let mut state = self.state.lock();
        let disk = state.disks.iter_mut().find(|d| d.id == id)?;
        if disk.hold {
            // Its failed start was reported to whoever asked for it.
            disk.stop();
            return None;
        }
        Some(Death::reap(
            &mut disk.daemon,
            disk.started,
            &mut disk.failures,
        ))
    }

    fn restart(&self, id: &str) -> Result<u32, QmpError> {
        BlockLayer::restart(self, id, None)
    }

    fn died(&self, id: &str) {
        let _ = self.hooks.deaths.send(id.to_string());
    }
}
