//! A disk: the guest's virtio-blk device, the node tree behind it, and the daemon that
//! serves it. The gateway keeps what a daemon needs (the image, the listening socket, the
//! node's settings, limits and thresholds), so a new daemon can take over at any time:
//! after a crash, or on request with another binary (an upgrade). A daemon is started
//! from a `Launch` (what the disk holds, copied), so the start runs without the block
//! layer's lock; a disk's health and counters outlive its daemons.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use ipc::{
    BlockEvent, BlockOpen, BlockReply, BlockRequest, ImageFormat, JobEvent, SharedBitmap,
    StoredBitmaps, ThrottleLimits,
};
use parking_lot::Mutex;

use super::daemon_stats::StatsCache;
use super::dirty_bitmap::DirtyBitmap;
use super::error::{BitmapError, BlockError};
use super::health::Health;
use super::job::BlockJob;
use crate::children::daemon::{connect, stop_slot, Daemon, DaemonKind};
use crate::children::link::Protocol;
use crate::children::sandbox::Policy;
use crate::children::spare::{Spare, Spares};
use crate::events::{Event, EventBus, InflightResumed, WriteThreshold};

/// A throttle group: the state page its members share, and its limits.
pub struct Group {
    pub state: OwnedFd,
    pub limits: ThrottleLimits,
}

/// What every daemon of every disk reports to.
#[derive(Clone)]
pub struct Hooks {
    /// Write thresholds by node (a crossed one is removed).
    pub thresholds: Arc<Mutex<BTreeMap<String, u64>>>,
    pub events: Arc<EventBus>,
    /// Disk ids whose daemon died.
    pub deaths: Sender<String>,
    pub sandbox: Policy,
    /// Where a disk's failure asks for the VM to stop (werror=stop and the like).
    pub stop_vm: Sender<()>,
    /// Where the daemons' job events go (disk id, event), to `BlockLayer::job_event`.
    pub jobs: Sender<(String, JobEvent)>,
    /// A daemon started ahead, once a disk was hot-added: a start takes it if it is there.
    pub spares: Arc<Spares>,
}

/// A daemon started, and the persistent bitmaps it loaded if it was told to load them.
pub type Started = (BlockDaemon, Option<Vec<DirtyBitmap>>);

/// A block daemon's control channel.
pub struct BlockProtocol;

impl Protocol for BlockProtocol {
    type Call = BlockRequest;
    type Answer = BlockReply;
    type Event = BlockEvent;
}

impl DaemonKind for BlockProtocol {
    const PROCESS: &'static str = "block-daemon";
    const NAME: &'static str = "block daemon";

    fn quit() -> BlockRequest {
        BlockRequest::Quit
    }

    fn opened(answer: &BlockReply) -> bool {
        matches!(answer, BlockReply::Opened { .. })
    }
}

/// A disk's block daemon.
pub type BlockDaemon = Daemon<BlockProtocol>;

pub struct Disk {
    /// The disk's index in vmm-core's launch request.
    pub index: u32,
    /// The block layer's name for it: the BlockBackend's name (query-block's "device")
    /// of a --drive disk, the device's QOM path for one device_add put over a node
    /// (whose BlockBackend is anonymous, as in QEMU).
    pub id: String,
    /// Made by --drive: its BlockBackend is named, and goes with its nodes when its
    /// device goes (QEMU's auto-del of a drive).
    pub drive: bool,
    /// The guest device's id ("" without one).
    pub qdev_id: String,
    /// The guest device's id or QOM path (query-block's "qdev").
    pub qdev: String,
    /// The device's QOM path (what `id` arguments may also name).
    pub qom_path: String,
    pub root: String,
    /// The nodes from the root down (their write thresholds are this disk's daemon's).
    pub nodes: Vec<String>,
    pub throttle: Option<(ThrottleLimits, String)>,
    pub config: BlockOpen,
    /// The images of the chain, top first (as `config.layers`).
    pub images: Vec<Arc<OwnedFd>>,
    /// Bound by the gateway, kept across daemons: vmm-core's reconnections land here.
    pub listener: UnixListener,
    pub socket: PathBuf,
    pub binary: PathBuf,
    /// None while no daemon runs (dead, or failed to start).
    pub daemon: Option<BlockDaemon>,
    pub started: Instant,
    /// Deaths in a row that came soon after a start.
    pub failures: u32,
    /// Not restarted automatically: a restart asked for over QMP failed, so the next
    /// one waits for QMP too.
    pub hold: bool,
    /// How its last daemon ended (what the give-up reports).
    pub last_end: String,
    /// Its I/O status, and what its daemon's failures do.
    pub health: Arc<Health>,
    /// Its counters (kept across daemons) and its daemon's last latency windows.
    pub stats: Arc<StatsCache>,
    /// The dirty bitmaps on the nodes of its chain, oldest first (each daemon marks
    /// into those of the top node from its open on).
    pub bitmaps: Vec<DirtyBitmap>,
    /// The top node whose stored (persistent) bitmaps a daemon loaded and `bitmaps`
    /// holds: the next daemon is told they are kept, not to load them again.
    pub stored_loaded: Option<String>,
    /// The last outgoing migration copied its content (block migration): its images
    /// are this side's own, so the switch-over leaves their locks and daemon be.
    pub block_migrated: bool,
    /// The iothread object its device is placed on (iothreads.rs).
    pub iothread: Option<String>,
    /// When its BlockBackend was made, among all (`State::born`): query-block lists
    /// them in that order, as QEMU does.
    pub born: u64,
}

/// What starting a daemon for a disk needs, taken from the disk so that the start (which
/// waits for the new daemon) runs without the block layer's lock.
pub struct Launch {
    binary: PathBuf,
    id: String,
    config: BlockOpen,
    images: Vec<Arc<OwnedFd>>,
    listener: OwnedFd,
    throttle: Option<(ThrottleLimits, OwnedFd)>,
    nodes: Vec<String>,
    health: Arc<Health>,
    /// The disk's counters page: the new daemon counts on from what is there.
    counters: OwnedFd,
    /// The memfds of the dirty bitmaps it marks into (`config.dirty_bitmaps`).
    bitmaps: Vec<OwnedFd>,
    /// The fds of the block job it carries on (`config.job`).
    job_fds: Vec<OwnedFd>,
    /// The top node (where bitmaps the daemon loads belong).
    root: String,
}

impl Disk {
    /// query-block's "device": the drive's name, "" for an anonymous BlockBackend.
    pub fn device_name(&self) -> &str {
        if self.drive {
            &self.id
        } else {
            ""
        }
    }

    /// Whether `name` is its BlockBackend's name (an anonymous one has none).
    pub fn named(&self, name: &str) -> bool {
        self.drive && self.id == name
    }

    /// Whether it has a medium: a disk whose drive HMP drive_del deleted has none (no
    /// node; its daemons serve `ImageFormat::NoMedium`).
    pub fn has_medium(&self) -> bool {
        let top = self.config.layers.first().map(|l| &l.format);
        !matches!(top, Some(ImageFormat::NoMedium { .. }))
    }

    pub fn daemon(&self) -> Result<&BlockDaemon, BlockError> {
        self.daemon
            .as_ref()
            .ok_or_else(|| BlockError::DaemonNotRunning(self.id.clone()))
    }

    /// What a new daemon for this disk needs (`groups`: the throttle groups; `job`: the
    /// disk's block job, which a new daemon carries on).
    pub fn launch(
        &self,
        groups: &BTreeMap<String, Group>,
        job: Option<&BlockJob>,
    ) -> Result<Launch, BlockError> {
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(BlockError::DupImage);
        let throttle = match &self.throttle {
            Some((limits, group)) => match groups.get(group) {
                Some(g) => Some((*limits, dup(&g.state)?)),
                None => None,
            },
            None => None,
        };
        let (dirty_bitmaps, bitmaps) = self.bitmap_set()?;
        let (job, job_fds) = match job.map(|j| j.launch(true)).transpose()? {
            Some((spec, fds)) => (Some(spec), fds),
            None => (None, Vec::new()),
        };
        let stored_bitmaps = if self.config.read_only {
            StoredBitmaps::NotKept
        } else if self.stored_loaded.as_ref() == Some(&self.root) {
            StoredBitmaps::Kept
        } else {
            StoredBitmaps::Load
        };
        Ok(Launch {
            binary: self.binary.clone(),
            id: self.id.clone(),
            root: self.root.clone(),
            config: BlockOpen {
                dirty_bitmaps,
                stored_bitmaps,
                job,
                ..self.config.clone()
            },
            images: self.images.clone(),
            listener: OwnedFd::from(self.listener.try_clone().map_err(BlockError::DupImage)?),
            throttle,
            nodes: self.nodes.clone(),
            health: self.health.clone(),
            counters: dup(self.stats.counters().fd())?,
            bitmaps,
            job_fds,
        })
    }

    /// `daemon` serves the disk from now on; `loaded`: the persistent bitmaps it loaded
    /// from the top image, if it was told to load them.
    pub fn install(&mut self, (daemon, loaded): Started) -> u32 {
        self.adopt_loaded(loaded);
        let pid = daemon.pid().unwrap_or(0);
        self.daemon = Some(daemon);
        self.started = Instant::now();
        self.hold = false;
        self.stats.new_daemon();
        self.health.daemon_back();
        pid
    }

    /// The persistent bitmaps a daemon loaded from the top image, if it was told to.
    pub fn adopt_loaded(&mut self, loaded: Option<Vec<DirtyBitmap>>) {
        let Some(loaded) = loaded else {
            return;
        };
        self.stored_loaded = Some(self.root.clone());
        for b in loaded {
            if self
                .bitmaps
                .iter()
                .any(|o| o.node == b.node && o.name == b.name)
            {
                log::warn!(
                    "disk {}: bitmap '{}' is already on {}",
                    self.id,
                    b.name,
                    b.node
                );
                continue;
            }
            self.bitmaps.push(b);
        }
    }

    /// Starts a daemon for this disk (at its attach, before anything else can reach
    /// it), in `process` if given (the daemon its iothread started); returns its pid.
    pub fn start(
        &mut self,
        groups: &BTreeMap<String, Group>,
        hooks: &Hooks,
        process: Option<Spare>,
    ) -> Result<u32, BlockError> {
        let daemon = self.launch(groups, None)?.start_in(hooks, process)?;
        Ok(self.install(daemon))
    }

    /// A connection to the daemon's socket, for vmm-core.
    pub fn connect(&self) -> Result<UnixStream, BlockError> {
        Ok(connect::<BlockProtocol>(&self.socket, &self.id)?)
    }

    /// Stops the daemon if one runs; says how it ended.
    pub fn stop(&mut self) -> Option<String> {
        stop_slot(&mut self.daemon)
    }
}

impl Launch {
    /// Starts the daemon: the node with its image and listening socket, then the disk's
    /// I/O limits and write thresholds.
    pub fn start(self, hooks: &Hooks) -> Result<Started, BlockError> {
        self.start_in(hooks, None)
    }

    /// `start` in `process`, a daemon started ahead for this disk, if given; else in
    /// the spare daemon if one is ready, or a new one.
    pub fn start_in(self, hooks: &Hooks, process: Option<Spare>) -> Result<Started, BlockError> {
        let (thresholds, events) = (hooks.thresholds.clone(), hooks.events.clone());
        let jobs = hooks.jobs.clone();
        let health = self.health.clone();
        let device = self.id.clone();
        let on_event = move |e| match e {
            BlockEvent::WriteThreshold {
                node_name,
                amount_exceeded,
                threshold,
            } => {
                thresholds.lock().remove(&node_name);
                events.emit(Event::BlockWriteThreshold(WriteThreshold {
                    node_name,
                    amount_exceeded,
                    write_threshold: threshold,
                }));
            }
            BlockEvent::IoError {
                operation,
                action,
                errno,
            } => health.io_error(operation, action, errno),
            BlockEvent::InflightResumed { queue, requests } => {
                events.emit(Event::BlockInflightResumed(InflightResumed {
                    device: device.clone(),
                    queue,
                    requests,
                }))
            }
            BlockEvent::Job(e) => {
                // Handled away from this reader: it may change the disk.
                let _ = jobs.send((device.clone(), e));
            }
        };
        let (sandbox, deaths) = (&hooks.sandbox, hooks.deaths.clone());
        let process = process.or_else(|| hooks.spares.take(&self.binary, sandbox.mode));
        let daemon = match process {
            Some(spare) => BlockDaemon::from_spare(spare, &self.id, sandbox, on_event, deaths),
            None => BlockDaemon::spawn_ahead(&self.binary, &self.id, sandbox, on_event, deaths),
        }?;
        let (daemon, answer, memfds) = daemon.open(
            BlockRequest::Open(self.config.clone()),
            &[self.listener.as_fd(), self.counters.as_fd()]
                .into_iter()
                .chain(self.images.iter().map(|i| i.as_fd()))
                .chain(self.bitmaps.iter().map(|b| b.as_fd()))
                .chain(self.job_fds.iter().map(|f| f.as_fd()))
                .collect::<Vec<_>>(),
        )?;
        if let Some((limits, state)) = &self.throttle {
            daemon
                .link
                .request(BlockRequest::SetThrottle(Some(*limits)), &[state.as_fd()])?;
        }
        let thresholds: Vec<(String, u64)> = hooks
            .thresholds
            .lock()
            .iter()
            .filter(|(n, _)| self.nodes.contains(n))
            .map(|(n, b)| (n.clone(), *b))
            .collect();
        for (node_name, bytes) in thresholds {
            daemon
                .link
                .request(BlockRequest::SetWriteThreshold { node_name, bytes }, &[])?;
        }
        let loaded = self.loaded(answer, memfds)?;
        Ok((daemon, loaded))
    }

    /// The running daemon `link` serves the disk's images for real again, in place
    /// (`BlockRequest::Activate`), as a daemon started now would (the launch says
    /// active). Returns the persistent bitmaps it loaded, if it was told to.
    pub fn activate(
        self,
        link: &crate::children::link::Link<BlockProtocol>,
    ) -> Result<Option<Vec<DirtyBitmap>>, BlockError> {
        let fds: Vec<_> = (self.images.iter().map(|i| i.as_fd()))
            .chain(self.bitmaps.iter().map(|b| b.as_fd()))
            .chain(self.job_fds.iter().map(|f| f.as_fd()))
            .collect();
        let request = BlockRequest::Activate(Box::new(self.config.clone()));
        let (answer, memfds) = link.request_with_fds(request, &fds)?;
        self.loaded(answer, memfds)
    }

    /// The persistent bitmaps a daemon's `Opened` answer handed over (with `memfds`),
    /// if the launch told it to load them.
    fn loaded(
        &self,
        answer: BlockReply,
        memfds: Vec<OwnedFd>,
    ) -> Result<Option<Vec<DirtyBitmap>>, BlockError> {
        Ok(match (self.config.stored_bitmaps, answer) {
            (StoredBitmaps::Load, BlockReply::Opened { loaded_bitmaps, .. }) => Some(
                loaded_bitmaps
                    .into_iter()
                    .zip(memfds)
                    .map(|(spec, fd)| {
                        let memory = SharedBitmap::adopt(fd, spec.size, spec.granularity)
                            .map_err(BitmapError::from)?;
                        Ok(DirtyBitmap {
                            node: self.root.clone(),
                            name: spec.name,
                            memory,
                            persistent: true,
                            recording: spec.recording,
                            inconsistent: spec.inconsistent,
                            // Held for the image, as the disk itself: no client's.
                            charge: None,
                        })
                    })
                    .collect::<Result<Vec<_>, BlockError>>()?,
            ),
            _ => None,
        })
    }
}
