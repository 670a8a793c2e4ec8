//! The gateway's block layer: the node graph (images the gateway opened and the raw nodes
//! over them), the disks the guest sees (a node tree attached to a virtio-blk device and
//! served by its own block daemon), throttle groups, write thresholds, and what the block
//! QMP commands ask of them, each answered from the graph or by the daemon that serves
//! the disk. This file holds the layer's state, its disks' lives (attach, restart,
//! supervision, shutdown, cont); nodes.rs, limits.rs and queries.rs hold the rest.
//!
//! Two locks: `state` (the graph and the disks) is only ever held briefly, never while
//! waiting for a daemon, so queries answer whatever a daemon does; `changes` serializes
//! what changes a disk's daemon or asks it to change (restarts, resize, limits,
//! thresholds) and is held across those calls. `changes` is always taken first.

pub mod activation;
mod backing_file;
pub mod bitmaps;
pub mod chain_jobs;
mod daemon_stats;
pub mod dirty_bitmap;
pub mod disk;
pub mod drive;
mod drive_record;
pub mod drives;
pub mod error;
pub mod graph;
pub mod health;
pub mod hotplug;
pub mod image_info;
pub mod info;
mod iothread_host;
pub mod iothreads;
pub mod job;
pub mod job_layer;
pub mod job_record;
pub mod jobs;
mod limits;
pub mod lock;
pub mod migration;
mod nodes;
pub mod options;
pub mod qcow2_options;
mod queries;
pub mod snapshot;
pub mod throttle;
pub mod transaction;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use ipc::{
    BlockOpen, BlockRequest, CacheFlags, DiskLaunch, ImageFormat, ImageLayer, OnError, VmmRequest,
};
use parking_lot::Mutex;

use crate::children::daemon::{connect, serves, stop_slot};
use crate::children::link::VmmLink;
use crate::children::sandbox::Policy;
use crate::children::supervise::{Death, Supervised, Supervision};
use crate::events::{DaemonExited, DaemonRestarted, Event, EventBus};
use crate::fdstore::FdSets;
use crate::sockets::{bind_private, RuntimeDir};
use daemon_stats::StatsCache;
use disk::{BlockProtocol, Disk, Group, Hooks};
use drive::DriveSpec;
pub use error::BlockError;
use graph::Graph;
use health::Health;
use iothreads::IoThreads;
use lock::Perms;
use options::{Driver, NodeOptions};

/// How a command names a disk: by its drive id (QMP's "device"), or by its guest
/// device's id or QOM path (QMP's "id").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskRef<'a> {
    Device(&'a str),
    Qdev(&'a str),
}

impl<'a> DiskRef<'a> {
    /// The name as the client gave it.
    pub fn name(&self) -> &'a str {
        match self {
            DiskRef::Device(n) | DiskRef::Qdev(n) => n,
        }
    }
}

/// What a command's name for a BlockBackend leads to (QEMU's qmp_get_blk, then blk_bs):
/// `State::backend` alone decides whether it has a medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// A disk (its index in `State::disks`), over its medium.
    Disk(usize),
    /// A drive_add drive no device uses, over its medium (its index in `State::drives`).
    Drive(usize),
    /// A BlockBackend without a medium: a drive_add drive made without one, or a disk
    /// whose drive HMP drive_del deleted (anonymous: only its device names it).
    NoMedium,
}

#[derive(Default)]
struct State {
    graph: Graph,
    disks: Vec<Disk>,
    groups: BTreeMap<String, Group>,
    /// The block jobs that run.
    jobs: Vec<job::BlockJob>,
    /// The drives drive_add made (drives.rs).
    drives: Vec<drive_record::NamedDrive>,
    /// Dirty bitmaps on nodes no disk uses (bitmaps.rs: marked by nobody).
    loose_bitmaps: Vec<dirty_bitmap::DirtyBitmap>,
    /// The next BlockBackend's place in the order they were made (`Disk::born`).
    next_born: u64,
    /// The next disk's index (in vmm-core's requests): never reused while the VM lives.
    next_index: u32,
}

impl State {
    /// A new BlockBackend's place among them.
    fn born(&mut self) -> u64 {
        self.next_born += 1;
        self.next_born
    }

    /// Opens a node the gateway makes for a job's target or a snapshot's overlay (no
    /// client's: its fds are not charged), the disks' ids taken as names.
    pub(super) fn open_internal_node(&mut self, opts: &NodeOptions) -> Result<String, BlockError> {
        let ids: Vec<String> = self.disks.iter().map(|d| d.id.clone()).collect();
        self.graph.add(
            opts,
            false,
            &|n| ids.iter().any(|i| i == n),
            &mut graph::open_path,
            &mut graph::uncharged,
        )
    }

    /// The disk the layer knows as `id` (`Disk::id`: its drive's name, or its device's
    /// QOM path when its BlockBackend is anonymous).
    fn disk_by_layer_id(&self, id: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.id == id)
    }

    /// The disk whose BlockBackend is named `id` (QMP's "device").
    fn disk_by_id(&self, id: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.named(id))
    }

    fn disk_by_qdev(&self, id: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| {
            d.qdev == id
                || d.qom_path == id
                || (!d.qdev_id.is_empty() && d.qdev_id == id)
                || (!d.id.is_empty() && d.named(id))
        })
    }

    /// The disk a command names, by QEMU's rules for "device" and "id".
    fn disk(&self, r: DiskRef) -> Option<&Disk> {
        match r {
            DiskRef::Device(name) => self.disk_by_id(name),
            DiskRef::Qdev(name) => self.disk_by_qdev(name),
        }
    }

    /// The BlockBackend `r` names, as QEMU 7.2's qmp_get_blk finds it: by "device" its
    /// name, by "id" the virtio backend of its device, a QOM path (relative to
    /// /machine/peripheral unless it starts with '/': "hb/virtio-backend"); the device
    /// itself ("hb") has none (qmp/handlers/block.rs tells that apart from no device).
    fn backend(&self, r: DiskRef) -> Option<Backend> {
        let at = self.disks.iter().position(|d| match r {
            DiskRef::Device(name) => d.named(name),
            DiskRef::Qdev(name) => d.qdev == backend_path(name),
        });
        match (at, r) {
            (Some(i), _) if self.disks[i].has_medium() => Some(Backend::Disk(i)),
            (Some(_), _) => Some(Backend::NoMedium),
            (None, DiskRef::Device(name)) => {
                let at = (self.drives.iter()).position(|d| d.id == name && !d.attached)?;
                match self.drives[at].root {
                    Some(_) => Some(Backend::Drive(at)),
                    None => Some(Backend::NoMedium),
                }
            }
            (None, DiskRef::Qdev(_)) => None,
        }
    }

    /// QEMU's bdrv_lookup_bs: the root node of the BlockBackend `device` names (refused
    /// without a medium, whatever `node` says), else node `node`.
    fn lookup_node(&self, device: Option<&str>, node: Option<&str>) -> Result<String, BlockError> {
        if let Some(name) = device {
            match self.backend(DiskRef::Device(name)) {
                Some(Backend::Disk(i)) => return Ok(self.disks[i].root.clone()),
                Some(Backend::Drive(i)) => {
                    if let Some(root) = &self.drives[i].root {
                        return Ok(root.clone());
                    }
                }
                Some(Backend::NoMedium) => return Err(BlockError::NoMedium(name.to_string())),
                None => {}
            }
        }
        node.filter(|n| self.graph.node(n).is_some())
            .map(str::to_string)
            .ok_or_else(|| BlockError::NoDeviceNorNode {
                device: device.unwrap_or_default().to_string(),
                node: node.unwrap_or_default().to_string(),
            })
    }

    /// What QEMU's bdrv_lookup_bs(name, name) answers where `name`, taken as a node's
    /// name only (a job's target), names no node.
    fn no_node(&self, name: &str) -> BlockError {
        if self.backend(DiskRef::Device(name)) == Some(Backend::NoMedium) {
            return BlockError::NoMedium(name.to_string());
        }
        BlockError::NoDeviceNorNode {
            device: name.to_string(),
            node: name.to_string(),
        }
    }

    /// The disk whose tree holds `node`.
    fn disk_of_node(&self, node: &str) -> Option<&Disk> {
        self.disks
            .iter()
            .find(|d| self.graph.tree(&d.root).iter().any(|n| n == node))
    }
}

/// The QOM path "id" `id` names for QEMU's find_device_state: relative to
/// /machine/peripheral unless absolute, empty parts left out.
fn backend_path(id: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    if !id.starts_with('/') {
        parts.extend(["machine", "peripheral"]);
    }
    parts.extend(id.split('/').filter(|p| !p.is_empty()));
    format!("/{}", parts.join("/"))
}

/// A disk about to be attached to a node tree.
struct NewDisk {
    id: String,
    /// Made by --drive (see `Disk::drive`).
    drive: bool,
    qdev_id: String,
    root: String,
    queues: u32,
    serial: String,
    stats_intervals: Vec<u32>,
    qom_path: String,
    on_read_error: OnError,
    on_write_error: OnError,
    /// The iothread object its device is placed on.
    iothread: Option<String>,
    /// Its BlockBackend's place among them: its drive's, or a new one.
    born: Option<u64>,
}

pub struct BlockLayer {
    state: Mutex<State>,
    /// Held across a change to a disk's daemon or a call that asks it for one.
    changes: Mutex<()>,
    /// Write thresholds by node. Apart from `state`: the daemons' event readers update it,
    /// and must never wait for a lock held across a call to a daemon.
    thresholds: Arc<Mutex<BTreeMap<String, u64>>>,
    hooks: Hooks,
    /// The daemons' job events, until `start_job_watcher` takes them.
    job_events: Mutex<Option<std::sync::mpsc::Receiver<(String, ipc::JobEvent)>>>,
    supervision: Supervision,
    vmm: Arc<VmmLink>,
    daemon_binary: PathBuf,
    runtime: RuntimeDir,
    /// The iothread objects' daemons (iothreads.rs).
    iothreads: Mutex<IoThreads>,
    /// The jobs that ended and wait for job-finalize or job-dismiss, and blockdev-create's
    /// (job_layer.rs).
    job_records: job_record::JobRecords,
}

impl BlockLayer {
    pub fn new(
        events: Arc<EventBus>,
        vmm: Arc<VmmLink>,
        daemon_binary: PathBuf,
        sandbox: Policy,
        stop_vm: Sender<()>,
    ) -> std::io::Result<BlockLayer> {
        let thresholds = Arc::new(Mutex::new(BTreeMap::new()));
        let supervision = Supervision::new(events.clone());
        let (jobs, job_events) = std::sync::mpsc::channel();
        Ok(BlockLayer {
            state: Mutex::new(State::default()),
            changes: Mutex::new(()),
            hooks: Hooks {
                thresholds: thresholds.clone(),
                events,
                deaths: supervision.deaths(),
                sandbox,
                stop_vm,
                jobs,
                spares: Arc::default(),
            },
            thresholds,
            job_events: Mutex::new(Some(job_events)),
            supervision,
            vmm,
            daemon_binary,
            runtime: RuntimeDir::create()?,
            iothreads: Mutex::default(),
            job_records: job_record::JobRecords::default(),
        })
    }

    /// Opens an image path or /dev/fdset/N for a protocol node.
    fn opener<'a>(
        fdsets: &'a FdSets,
    ) -> impl FnMut(&str, Driver, bool) -> Result<OwnedFd, BlockError> + 'a {
        move |path: &str, driver: Driver, write: bool| {
            let Some(set) = path.strip_prefix("/dev/fdset/") else {
                return graph::open_path(path, driver, write);
            };
            let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
            let fail = |error: std::io::Error| BlockError::FdSet {
                path: path.to_string(),
                flags,
                error,
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

    /// `--drive` number `index`, its device in bus 0's `slot` at `qom_path`: the nodes,
    /// the daemon, and vmm-core's end of the vhost-user socket.
    pub fn add_drive(
        &self,
        index: usize,
        spec: &DriveSpec,
        fdsets: &FdSets,
        (slot, qom_path): (u8, String),
    ) -> Result<(DiskLaunch, OwnedFd), BlockError> {
        let id = spec.id.clone().unwrap_or_else(|| format!("virtio{index}"));
        let opts = spec.node_options();
        let failed = |error| BlockError::Drive {
            id: id.clone(),
            error: Box::new(error),
        };
        let mut state = self.state.lock();
        if state.disk_by_id(&id).is_some() || state.graph.node(&id).is_some() {
            return Err(BlockError::DriveIdTaken(id));
        }
        let root = state
            .graph
            .add(
                &opts,
                false,
                &|n| n == id,
                &mut Self::opener(fdsets),
                &mut graph::uncharged,
            )
            .map_err(failed)?;
        let disk = NewDisk {
            id: id.clone(),
            drive: true,
            qdev_id: String::new(),
            root: root.clone(),
            queues: spec.queues,
            serial: spec.serial.clone().unwrap_or_else(|| id.clone()),
            stats_intervals: spec.stats_intervals.clone(),
            qom_path,
            on_read_error: spec.on_read_error,
            on_write_error: spec.on_write_error,
            iothread: None,
            born: None,
        };
        match self.attach(&mut state, disk) {
            Ok((disk_index, stream)) => Ok((
                DiskLaunch {
                    index: disk_index,
                    slot: Some(slot),
                    id: id.clone(),
                    // An anonymous device, as QEMU's -drive if=virtio makes (its QOM
                    // path is under peripheral-anon): no qdev id.
                    qdev_id: String::new(),
                    max_queues: spec.queues,
                },
                stream,
            )),
            Err(e) => {
                // Nothing of the drive stays: its nodes go too.
                state.graph.remove_tree(&root);
                Err(failed(e))
            }
        }
    }

    /// Starts the daemon for a disk over its root node; returns the disk's index and
    /// vmm-core's end of its socket.
    fn attach(&self, state: &mut State, new: NewDisk) -> Result<(u32, OwnedFd), BlockError> {
        let NewDisk {
            id,
            drive,
            qdev_id,
            root,
            queues,
            serial,
            stats_intervals,
            qom_path,
            on_read_error,
            on_write_error,
            iothread,
            born,
        } = new;
        let node = state
            .graph
            .node(&root)
            .ok_or_else(|| BlockError::NoNode(root.clone()))?;
        let proto = state
            .graph
            .protocol_of(&root)
            .ok_or_else(|| BlockError::NoImage(root.clone()))?;
        let read_only = node.read_only || proto.read_only;
        // The images of the chain, top first, each locked as QEMU locks it: the top as
        // a disk's image (a qcow2 image also resizes as it grows), backing files as
        // read-only images others may read beside it but nobody may change.
        let mut layers = Vec::new();
        let mut images = Vec::new();
        for (i, format_node) in state.graph.chain(&root).into_iter().enumerate() {
            let image_node = state
                .graph
                .image_node(&format_node.name)
                .unwrap_or(format_node);
            let p = state
                .graph
                .protocol_of(&image_node.name)
                .ok_or_else(|| BlockError::NoImage(image_node.name.clone()))?;
            let fd = p
                .image
                .clone()
                .ok_or_else(|| BlockError::NoImage(p.name.clone()))?;
            let qcow2 = image_node.driver == Driver::Qcow2;
            let (take, share) = match i {
                0 if qcow2 => Perms::for_qcow2_disk(read_only),
                0 => Perms::for_disk(read_only),
                _ => Perms::for_backing(),
            };
            if p.locking && !state.graph.inactive() {
                lock::lock(fd.as_fd(), take, share).map_err(|error| {
                    let locked = BlockError::Locked {
                        error,
                        path: p.filename.clone(),
                    };
                    (1..=i).fold(locked, |e, _| BlockError::Backing(Box::new(e)))
                })?;
            }
            layers.push(ImageLayer {
                node_name: image_node.name.clone(),
                format: if qcow2 {
                    ImageFormat::Qcow2(image_node.qcow2_options.clone())
                } else {
                    ImageFormat::Raw
                },
                filename: p.filename.clone(),
            });
            images.push(fd);
        }
        let config = BlockOpen {
            node_name: root.clone(),
            serial,
            read_only,
            cache: CacheFlags {
                direct: proto.cache.direct,
                no_flush: node.cache.no_flush,
            },
            discard_unmap: node.discard_unmap && proto.discard_unmap,
            detect_zeroes: node.detect_zeroes,
            queues,
            stats_intervals,
            on_read_error,
            on_write_error,
            layers,
            // Sent with each start, from the disk's bitmaps and job.
            dirty_bitmaps: Vec::new(),
            stored_bitmaps: ipc::StoredBitmaps::NotKept,
            job: None,
            // A VM arriving by migration: its source still writes the images.
            inactive: state.graph.inactive(),
        };
        let health = Health::new(
            if drive { &id } else { "" },
            &root,
            on_read_error,
            on_write_error,
            self.hooks.events.clone(),
            self.hooks.stop_vm.clone(),
        );
        let index = state.next_index;
        // Taken even if the start fails: an index is never given twice.
        state.next_index += 1;
        let socket = self.runtime.path().join(format!("disk{index}.sock"));
        let listener = bind_private(&socket)?;
        // A drive_add drive's limits (set while no device used it) are the disk's.
        let throttle = (state.drives.iter())
            .find(|n| drive && n.id == id && !n.attached)
            .and_then(|n| n.throttle.clone());
        let mut disk = Disk {
            index,
            id,
            drive,
            qdev_id,
            qdev: format!("{qom_path}/virtio-backend"),
            qom_path,
            nodes: state.graph.tree(&root),
            root,
            throttle,
            config,
            images,
            listener,
            socket,
            binary: self.daemon_binary.clone(),
            daemon: None,
            started: Instant::now(),
            failures: 0,
            hold: false,
            last_end: String::new(),
            health,
            stats: Arc::new(StatsCache::new().map_err(BlockError::Counters)?),
            bitmaps: Vec::new(),
            stored_loaded: None,
            block_migrated: false,
            iothread,
            born: born.unwrap_or_else(|| state.born()),
        };
        // The bitmaps on its chain's nodes (loose while no disk used them) are its own:
        // its daemon gets them at its start.
        let chain: Vec<String> = (state.graph.chain(&disk.root).iter())
            .flat_map(|n| {
                [
                    Some(n.name.clone()),
                    state.graph.image_node(&n.name).map(|i| i.name.clone()),
                ]
            })
            .flatten()
            .collect();
        let (own, loose) = std::mem::take(&mut state.loose_bitmaps)
            .into_iter()
            .partition(|b| chain.contains(&b.node));
        state.loose_bitmaps = loose;
        disk.bitmaps = own;
        // The first disk on an iothread is served by the daemon the iothread started.
        let process = (disk.iothread.as_deref()).and_then(|t| self.take_iothread_daemon(t));
        let started = disk
            .start(&state.groups, &self.hooks, process)
            .and_then(|pid| disk.connect().map(|stream| (pid, stream)));
        let (pid, stream) = match started {
            Ok(started) => started,
            Err(e) => {
                // Loose again, as before.
                state.loose_bitmaps.append(&mut disk.bitmaps);
                return Err(e);
            }
        };
        log::info!(
            "disk {}: node {}, block daemon pid {pid}",
            disk.id,
            disk.root
        );
        state.disks.push(disk);
        Ok((index, stream.into()))
    }

    /// Replaces disk `id`'s daemon (stopping it if it runs) with a new one, from
    /// `binary` if given, and hands vmm-core a connection to it. Returns the new pid.
    pub fn restart(&self, id: &str, binary: Option<PathBuf>) -> Result<u32, BlockError> {
        let _changes = self.changes.lock();
        self.replace_daemon(id, binary)
    }

    /// The body of `restart`, with the changes lock held.
    fn replace_daemon(&self, id: &str, binary: Option<PathBuf>) -> Result<u32, BlockError> {
        let (mut old, launch, index) = {
            let mut state = self.state.lock();
            let State {
                disks,
                groups,
                jobs,
                ..
            } = &mut *state;
            let disk = disks
                .iter_mut()
                .find(|d| d.id == id)
                .ok_or_else(|| BlockError::DeviceNotFound(id.to_string()))?;
            if let Some(b) = binary {
                disk.binary = b;
            }
            let job = jobs.iter().find(|j| j.disk == disk.id);
            (disk.daemon.take(), disk.launch(groups, job)?, disk.index)
        };
        if let Some(how) = stop_slot(&mut old) {
            log::info!("disk {id}: block daemon stopped ({how})");
        }
        let daemon = launch.start(&self.hooks)?;
        let (pid, socket) = {
            let mut state = self.state.lock();
            let disk = state
                .disks
                .iter_mut()
                .find(|d| d.id == id)
                .ok_or_else(|| BlockError::DeviceNotFound(id.to_string()))?;
            (disk.install(daemon), disk.socket.clone())
        };
        let stream = connect::<BlockProtocol>(&socket, id)?;
        self.vmm
            .request(VmmRequest::DiskReconnect { disk: index }, &[stream.as_fd()])?;
        log::info!("disk {id}: block daemon pid {pid} serves it now");
        Ok(pid)
    }

    /// A restart asked for over QMP (our extension): the failure count starts over, and
    /// the outcome is announced here rather than by the supervisor. Returns the new pid.
    pub fn restart_requested(
        &self,
        disk: DiskRef,
        binary: Option<PathBuf>,
    ) -> Result<u32, BlockError> {
        let id = {
            let state = self.state.lock();
            state
                .disk(disk)
                .map(|d| d.id.clone())
                .ok_or_else(|| BlockError::DeviceNotFound(disk.name().to_string()))?
        };
        if let Some(d) = self.state.lock().disks.iter_mut().find(|d| d.id == id) {
            d.failures = 0;
            // The supervisor keeps out of it: this restart's outcome is reported here.
            d.hold = true;
        }
        match self.restart(&id, binary) {
            Ok(pid) => {
                self.hooks
                    .events
                    .emit(Event::BlockDaemonRestarted(DaemonRestarted {
                        device: id,
                        pid,
                    }));
                Ok(pid)
            }
            Err(e) => {
                let stopped = {
                    let mut state = self.state.lock();
                    state.disks.iter_mut().find(|d| d.id == id).map(|d| {
                        d.health.daemon_lost(&format!("failed to start: {e}"));
                        d.daemon.take()
                    })
                };
                stop_slot(&mut stopped.flatten());
                self.hooks
                    .events
                    .emit(Event::BlockDaemonExited(DaemonExited {
                        device: id,
                        pid: None,
                        reason: format!("failed to start: {e}"),
                        restart_in_ms: None,
                    }));
                Err(e)
            }
        }
    }

    /// Handles the daemons' job events on a thread of its own (once; later calls do
    /// nothing): they may change a disk, which waits for `changes`.
    pub fn start_job_watcher(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(events) = self.job_events.lock().take() else {
            return Ok(());
        };
        let layer = self.clone();
        std::thread::Builder::new()
            .name("block-jobs".into())
            .spawn(move || {
                for (disk, event) in events {
                    layer.job_event(&disk, event);
                }
            })?;
        Ok(())
    }

    /// QMP stop, once the vCPUs stopped: every daemon serves what its guest device
    /// made available and flushes (QEMU drains and flushes every disk before stop
    /// returns), all at once. A daemon that fails to is logged; the VM stays stopped.
    pub fn drain(&self) {
        let drain = BlockRequest::Drain { flush: true };
        self.on_every_daemon(drain, "draining its requests at stop");
    }

    /// A migration's stop-and-copy: `drain` without the flush, which the disks'
    /// inactivation does next (and a VM that stays here does not need).
    pub fn drain_unflushed(&self) {
        let drain = BlockRequest::Drain { flush: false };
        self.on_every_daemon(drain, "draining its requests at the migration's stop");
    }

    /// `request` to every disk's daemon at once; failures are logged (`doing`).
    fn on_every_daemon(&self, request: BlockRequest, doing: &str) {
        let links: Vec<(String, Arc<crate::children::link::Link<BlockProtocol>>)> = self
            .state
            .lock()
            .disks
            .iter()
            .filter_map(|d| Some((d.id.clone(), d.daemon.as_ref()?.link.clone())))
            .collect();
        std::thread::scope(|scope| {
            for (id, link) in &links {
                let request = request.clone();
                scope.spawn(move || {
                    if let Err(e) = link.request(request, &[]) {
                        log::warn!("disk {id}: {doing}: {e}");
                    }
                });
            }
        });
    }

    /// QMP cont: every disk's I/O status is ok again, and the daemons that hold
    /// requests after a failure start them again (after vmm-core resumed the vCPUs, as
    /// QEMU restarts them once the VM runs: one that fails again stops the VM again).
    pub fn cont(&self) {
        let holding: Vec<(String, Arc<crate::children::link::Link<BlockProtocol>>)> = self
            .state
            .lock()
            .disks
            .iter()
            .filter(|d| d.health.cont())
            .filter_map(|d| Some((d.id.clone(), d.daemon.as_ref()?.link.clone())))
            .collect();
        for (id, link) in holding {
            if let Err(e) = link.request(BlockRequest::Resume, &[]) {
                // Its requests are still in flight: a new daemon starts them again.
                log::warn!("disk {id}: retrying the failed requests: {e}");
            }
        }
    }

    /// Stops every daemon (after vmm-core, their frontend, has gone) and removes their
    /// sockets' directory.
    pub fn shutdown(&self) {
        self.hooks.spares.close();
        self.iothreads_shutdown();
        self.supervision.stop();
        // A restart under way finishes first and its daemon is stopped with the others
        // (cleanly: stored bitmaps, a clean image), rather than being cut off as the
        // gateway exits.
        let _changes = self.changes.lock();
        let mut disks = std::mem::take(&mut self.state.lock().disks);
        // Each daemon stores its bitmaps and closes its images on its own: they stop
        // side by side, so the VM's end waits for the slowest disk, not for their sum.
        std::thread::scope(|scope| {
            for d in &mut disks {
                scope.spawn(move || d.stop());
            }
        });
        // The persistent bitmaps of nodes no disk used, as QEMU stores them at its exit.
        self.store_all_loose();
        self.runtime.remove();
    }
}

impl Supervised for BlockLayer {
    const DEVICE: &'static str = "disk";
    type Daemon = BlockProtocol;
    const THREAD: &'static str = "block-supervisor";
    const EXITED: fn(DaemonExited) -> Event = Event::BlockDaemonExited;
    const RESTARTED: fn(DaemonRestarted) -> Event = Event::BlockDaemonRestarted;
    type Error = BlockError;

    fn supervision(&self) -> &Supervision {
        &self.supervision
    }

    fn reap(&self, id: &str) -> Option<Death> {
        let _changes = self.changes.lock();
        // The dead daemon is reaped (which may wait for its process) outside the lock.
        let (mut slot, started, mut failures, hold) = {
            let mut state = self.state.lock();
            let disk = state.disks.iter_mut().find(|d| d.id == id)?;
            (disk.daemon.take(), disk.started, disk.failures, disk.hold)
        };
        if hold {
            // Its failed start was reported to whoever asked for it.
            stop_slot(&mut slot);
            return None;
        }
        let death = Death::reap(&mut slot, started, &mut failures);
        if let Some(disk) = self.state.lock().disks.iter_mut().find(|d| d.id == id) {
            disk.failures = failures;
            // Still serving if the news was of a daemon it replaced.
            disk.daemon = slot;
            if let Some(death) = &death {
                disk.last_end.clone_from(&death.reason);
            }
        }
        death
    }

    fn gave_up(&self, id: &str) {
        if let Some(disk) = self.state.lock().disks.iter().find(|d| d.id == id) {
            disk.health.daemon_lost(&disk.last_end);
        }
    }

    fn restart(&self, id: &str) -> Result<Option<u32>, BlockError> {
        let _changes = self.changes.lock();
        let requested = {
            let state = self.state.lock();
            let disk = state
                .disks
                .iter()
                .find(|d| d.id == id)
                .ok_or_else(|| BlockError::DeviceNotFound(id.to_string()))?;
            disk.hold || serves(&disk.daemon)
        };
        if requested {
            return Ok(None);
        }
        self.replace_daemon(id, None).map(Some)
    }
}
