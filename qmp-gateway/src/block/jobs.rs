//! Block jobs (drive-mirror, blockdev-mirror, query-block-jobs, block-job-*): the
//! gateway checks a job's arguments, opens (and for drive-mirror creates) its target as a
//! node of the graph, creates the job's two bitmaps and hands all of it to the daemon of
//! the disk, which runs the job. The job's events come back through the daemon's link to
//! `job_event`, which keeps each job's state and sends QMP's events. A job outlives its
//! daemon: a new daemon is given it again (`Disk::launch`). When a mirror completes, the
//! disk serves the target: its node becomes the disk's root and the source's nodes go.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use block_daemon::formats::qcow2::create::{self, CreateOptions};
use ipc::{
    errno_text, BlockReply, BlockRequest, ImageFormat, ImageLayer, JobControl, JobEvent, JobKind,
    JobSpec, JobStatus, MirrorSpec, OnError, SharedBitmap, SyncMode,
};
use serde_json::{json, Value};

use super::bitmaps::default_granularity;
use super::error::BlockError;
use super::graph;
use super::lock::{self, Perms};
use super::options::{Driver, NodeOptions};
use super::snapshot::NewImageMode;
use super::{BlockLayer, State};
use crate::events::{Event, JobEnded, JobError as JobErrorEvent, JobReady, JobStatusChange};
use crate::fdstore::Charge;

/// The buffer a mirror copies through by default (QEMU's default buf-size).
const DEFAULT_BUF_SIZE: u64 = 10 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("Job ID '{0}' already in use")]
    IdInUse(String),
    #[error("Invalid job ID '{0}'")]
    BadId(String),
    #[error("Node '{node}' is busy: block device is in use by block job: {kind}")]
    Busy { node: String, kind: &'static str },
    #[error("Block job '{0}' not found")]
    NotFound(String),
    #[error("Job '{id}' in state '{state}' cannot accept command verb '{verb}'")]
    Verb {
        id: String,
        state: &'static str,
        verb: &'static str,
    },
    #[error("Invalid parameter 'speed'")]
    Speed,
    #[error("Granularity must be power of 2 and at least 512")]
    Granularity,
    #[error("Parameter 'granularity' expects a value in range [512B, 64MB]")]
    GranularityRange,
    #[error("Parameter 'buf-size' expects a positive value")]
    BufSize,
    #[error("Unknown driver '{0}'")]
    UnknownFormat(String),
    #[error("Can't mirror node into itself")]
    IntoItself,
    #[error("Could not create '{path}': {why}")]
    Create { path: String, why: String },
    // Ours: where we do not (yet) do what QEMU does.
    #[error("sync 'top' of a disk whose top image has a backing file is not supported yet")]
    TopWithBacking,
    #[error("'replaces' is not supported yet")]
    Replaces,
    #[error("the target is {target} bytes, smaller than the disk's {disk}")]
    TargetSmall { target: u64, disk: u64 },
    #[error(transparent)]
    Bitmap(#[from] ipc::dirty_bitmap::BitmapError),
}

/// Where a mirror writes.
#[derive(Debug, Clone)]
pub enum MirrorTarget {
    /// drive-mirror: a file, created unless mode is existing.
    Drive {
        path: String,
        format: Option<String>,
        node_name: Option<String>,
        mode: NewImageMode,
    },
    /// blockdev-mirror: a node blockdev-add made.
    Node(String),
}

/// drive-mirror's and blockdev-mirror's arguments.
#[derive(Debug, Clone)]
pub struct MirrorRequest {
    pub job_id: Option<String>,
    pub device: String,
    pub target: MirrorTarget,
    pub replaces: Option<String>,
    pub speed: i64,
    pub granularity: Option<u64>,
    pub buf_size: Option<i64>,
    pub sync: SyncMode,
    pub on_source_error: OnError,
    pub on_target_error: OnError,
    pub unmap: bool,
}

/// A job's state, as QEMU's JobStatus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Paused,
    Ready,
    /// Ready, then paused.
    Standby,
    Aborting,
    Concluded,
}

impl JobState {
    pub fn qmp_name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Ready => "ready",
            JobState::Standby => "standby",
            JobState::Aborting => "aborting",
            JobState::Concluded => "concluded",
        }
    }
}

/// A running job.
pub struct BlockJob {
    pub id: String,
    pub kind: &'static str,
    /// The disk whose daemon runs it.
    pub disk: String,
    /// What its daemon was given (again to a new daemon, with `resume`).
    pub spec: JobSpec,
    target: Arc<OwnedFd>,
    dirty: SharedBitmap,
    copying: SharedBitmap,
    /// The target's node, and whether the job made it (drive-mirror: it goes with the
    /// job unless the disk serves it).
    target_node: String,
    made_node: bool,
    /// The locks taken on the target (given back if the disk does not serve it).
    locked: Option<(Perms, Perms)>,
    pub state: JobState,
    /// Its last progress a daemon reported.
    pub last: JobStatus,
    /// block-job-complete was asked (a mirror's end is then a pivot).
    completing: bool,
    /// The fds it holds, charged to the client that started it.
    _charge: Option<Charge>,
}

impl BlockJob {
    /// What a daemon is sent to run it: the spec and its fds.
    pub fn launch(&self, resume: bool) -> Result<(JobSpec, Vec<OwnedFd>), BlockError> {
        let dup =
            |fd: std::os::fd::BorrowedFd| fd.try_clone_to_owned().map_err(BlockError::DupImage);
        let missing = || BlockError::DupImage(std::io::Error::from_raw_os_error(libc::EBADF));
        let fds = vec![
            dup(self.target.as_fd())?,
            dup(self.dirty.fd().ok_or_else(missing)?)?,
            dup(self.copying.fd().ok_or_else(missing)?)?,
        ];
        let spec = JobSpec {
            resume,
            ready: self.last.ready,
            offset: self.last.offset,
            speed: self.last.speed,
            ..self.spec.clone()
        };
        Ok((spec, fds))
    }

    /// BlockJobInfo, as QEMU 7.2 shows it.
    fn info(&self, now: Option<&JobStatus>) -> Value {
        let s = now.unwrap_or(&self.last);
        json!({
            "type": self.kind,
            "device": self.id,
            "len": s.len,
            "offset": s.offset,
            "busy": s.busy,
            "paused": s.paused,
            "speed": s.speed,
            "io-status": if s.failed { "failed" } else { "ok" },
            "ready": s.ready,
            "status": self.state.qmp_name(),
            "auto-finalize": true,
            "auto-dismiss": true,
        })
    }
}

/// A job's target: its image layer and fd, and the locks taken on it.
type Target = (ImageLayer, Arc<OwnedFd>, Option<(Perms, Perms)>);

/// QEMU's id_wellformed: a letter first, then letters, digits, '-', '.', '_'.
fn well_formed(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

impl State {
    fn job(&self, id: &str) -> Option<&BlockJob> {
        self.jobs.iter().find(|j| j.id == id)
    }

    fn job_mut(&mut self, id: &str) -> Option<&mut BlockJob> {
        self.jobs.iter_mut().find(|j| j.id == id)
    }

    /// The job of disk `disk`, if one runs.
    pub fn job_of_disk(&self, disk: &str) -> Option<&BlockJob> {
        self.jobs.iter().find(|j| j.disk == disk)
    }
}

impl BlockLayer {
    /// drive-mirror and blockdev-mirror; `charge`: the job's three fds, charged to the
    /// client.
    pub fn mirror(&self, r: &MirrorRequest, charge: Option<Charge>) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let (link, spec, fds, id) = {
            let mut state = self.state.lock();
            let prepared = self.prepare_mirror(&mut state, r, charge)?;
            let job = state
                .jobs
                .last()
                .ok_or_else(|| BlockError::NoNode(prepared.clone()))?;
            let (spec, fds) = job.launch(false)?;
            let disk = state
                .disk_by_id(&job.disk)
                .ok_or_else(|| BlockError::DeviceNotFound(job.disk.clone()))?;
            (disk.daemon()?.link.clone(), spec, fds, job.id.clone())
        };
        let fds_ref: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = link.request(BlockRequest::StartJob(spec), &fds_ref) {
            self.drop_job(&id, false);
            return Err(e.into());
        }
        self.hooks
            .events
            .emit(Event::JobStatusChange(JobStatusChange::new(&id, "created")));
        self.hooks
            .events
            .emit(Event::JobStatusChange(JobStatusChange::new(&id, "running")));
        Ok(())
    }

    /// Checks a mirror's arguments (QEMU's order), opens its target and records the job
    /// (the last of `state.jobs`); returns its id.
    fn prepare_mirror(
        &self,
        state: &mut State,
        r: &MirrorRequest,
        charge: Option<Charge>,
    ) -> Result<String, BlockError> {
        let root = state.lookup_node(Some(&r.device), Some(&r.device))?;
        let disk_index = state
            .disks
            .iter()
            .position(|d| d.root == root)
            .ok_or_else(|| BlockError::DeviceNotFound(r.device.clone()))?;
        let disk_id = state.disks[disk_index].id.clone();
        let id = r.job_id.clone().unwrap_or_else(|| r.device.clone());
        if r.job_id.is_some() && !well_formed(&id) {
            return Err(JobError::BadId(id).into());
        }
        if state.job(&id).is_some() {
            return Err(JobError::IdInUse(id).into());
        }
        if let Some(job) = state.job_of_disk(&disk_id) {
            return Err(JobError::Busy {
                node: root.clone(),
                kind: job.kind,
            }
            .into());
        }
        if r.speed < 0 {
            return Err(JobError::Speed.into());
        }
        let granularity = match r.granularity {
            Some(g) if !(512..=64 << 20).contains(&g) => {
                return Err(JobError::GranularityRange.into())
            }
            Some(g) if !g.is_power_of_two() => return Err(JobError::Granularity.into()),
            Some(g) => g,
            None => default_granularity(&state.graph, &root),
        };
        let buf_size = match r.buf_size {
            Some(b) if b <= 0 => return Err(JobError::BufSize.into()),
            Some(b) => b as u64,
            None => DEFAULT_BUF_SIZE,
        };
        if r.replaces.is_some() {
            return Err(JobError::Replaces.into());
        }
        let has_backing = state
            .graph
            .image_node(&root)
            .is_some_and(|n| n.backing.is_some());
        if r.sync == SyncMode::Top && has_backing {
            return Err(JobError::TopWithBacking.into());
        }
        let size = super::bitmaps::node_size(&state.graph, &root);
        let (target_node, made_node, fresh) = match &r.target {
            MirrorTarget::Node(name) => {
                if state.graph.node(name).is_none() {
                    return Err(BlockError::NodeNotFound(name.clone()));
                }
                if *name == root || state.graph.tree(&root).contains(name) {
                    return Err(JobError::IntoItself.into());
                }
                if state.disks.iter().any(|d| d.root == *name) {
                    return Err(BlockError::InUse(name.clone()));
                }
                (name.clone(), false, false)
            }
            MirrorTarget::Drive {
                path,
                format,
                node_name,
                mode,
            } => {
                let source_format = state
                    .graph
                    .image_node(&root)
                    .map_or(Driver::Raw, |n| n.driver);
                let driver = match format {
                    Some(f) => {
                        Driver::format(f).ok_or_else(|| JobError::UnknownFormat(f.clone()))?
                    }
                    None => source_format,
                };
                if *mode == NewImageMode::AbsolutePaths {
                    create_target(path, driver, size)?;
                }
                let opts = NodeOptions {
                    node_name: node_name.clone(),
                    read_only: Some(false),
                    ..NodeOptions::over(driver, NodeOptions::file(path.clone()))
                };
                let ids: Vec<String> = state.disks.iter().map(|d| d.id.clone()).collect();
                let node = state.graph.add(
                    &opts,
                    false,
                    &|n| ids.iter().any(|i| i == n),
                    &mut graph::open_path,
                    &mut graph::uncharged,
                )?;
                (node, true, *mode == NewImageMode::AbsolutePaths)
            }
        };
        let undo_node = |state: &mut State| {
            if made_node {
                state.graph.remove_tree(&target_node);
            }
        };
        let target = match self.target_of(state, &target_node, size) {
            Ok(t) => t,
            Err(e) => {
                undo_node(state);
                return Err(e);
            }
        };
        let (layer, fd, locked) = target;
        let bitmaps = SharedBitmap::create(size, granularity)
            .and_then(|d| Ok((d, SharedBitmap::create(size, granularity)?)));
        let (dirty, copying) = match bitmaps {
            Ok(b) => b,
            Err(e) => {
                undo_node(state);
                return Err(JobError::from(e).into());
            }
        };
        let spec = JobSpec {
            id: id.clone(),
            kind: JobKind::Mirror(MirrorSpec {
                target: layer,
                sync: r.sync,
                granularity,
                buf_size,
                unmap: r.unmap,
                fresh_target: fresh,
            }),
            speed: r.speed as u64,
            on_source_error: r.on_source_error,
            on_target_error: r.on_target_error,
            resume: false,
            ready: false,
            offset: 0,
        };
        state.jobs.push(BlockJob {
            id: id.clone(),
            kind: "mirror",
            disk: disk_id,
            last: JobStatus {
                id: id.clone(),
                offset: 0,
                len: 0,
                speed: spec.speed,
                paused: false,
                ready: false,
                busy: true,
                failed: false,
            },
            spec,
            target: fd,
            dirty,
            copying,
            target_node,
            made_node,
            locked,
            state: JobState::Running,
            completing: false,
            _charge: charge,
        });
        Ok(id)
    }

    /// The target node's image layer and fd, locked as a disk's top (it is written).
    fn target_of(&self, state: &State, node: &str, size: u64) -> Result<Target, BlockError> {
        let image = state
            .graph
            .image_node(node)
            .ok_or_else(|| BlockError::NoNode(node.to_string()))?;
        let proto = state
            .graph
            .protocol_of(node)
            .ok_or_else(|| BlockError::NoImage(node.to_string()))?;
        let fd = proto
            .image
            .clone()
            .ok_or_else(|| BlockError::NoImage(node.to_string()))?;
        let qcow2 = image.driver == Driver::Qcow2;
        let target_size = match &image.qcow2 {
            Some(q) => q.virtual_size,
            None => super::info::image_sizes(&fd).0,
        };
        if target_size < size {
            return Err(JobError::TargetSmall {
                target: target_size,
                disk: size,
            }
            .into());
        }
        let (take, share) = if qcow2 {
            Perms::for_qcow2_disk(false)
        } else {
            Perms::for_disk(false)
        };
        let locked = if proto.locking {
            lock::lock(fd.as_fd(), take, share).map_err(|error| BlockError::Locked {
                error,
                path: proto.filename.clone(),
            })?;
            Some((take, share))
        } else {
            None
        };
        let layer = ImageLayer {
            node_name: image.name.clone(),
            format: if qcow2 {
                ImageFormat::Qcow2(image.qcow2_options.clone())
            } else {
                ImageFormat::Raw
            },
            filename: proto.filename.clone(),
        };
        Ok((layer, fd, locked))
    }

    /// Forgets job `id` (its target node goes too if the job made it, unless `keep`).
    fn drop_job(&self, id: &str, keep_node: bool) -> Option<BlockJob> {
        let mut state = self.state.lock();
        let at = state.jobs.iter().position(|j| j.id == id)?;
        let job = state.jobs.remove(at);
        if job.made_node && !keep_node {
            state.graph.remove_tree(&job.target_node);
        }
        Some(job)
    }

    /// query-block-jobs: each job's progress, from its daemon (or as last reported).
    pub fn query_block_jobs(&self) -> Value {
        let asks: Vec<(
            String,
            Option<Arc<crate::children::link::Link<super::disk::BlockProtocol>>>,
        )> = {
            let state = self.state.lock();
            state
                .jobs
                .iter()
                .map(|j| {
                    let link = state
                        .disk_by_id(&j.disk)
                        .and_then(|d| d.daemon.as_ref())
                        .map(|d| d.link.clone());
                    (j.id.clone(), link)
                })
                .collect()
        };
        let mut now = Vec::new();
        for (id, link) in asks {
            let status = link.and_then(|l| match l.request(BlockRequest::JobStatus, &[]) {
                Ok(BlockReply::Job(Some(s))) if s.id == id => Some(s),
                _ => None,
            });
            now.push((id, status));
        }
        let mut state = self.state.lock();
        let mut out = Vec::new();
        for (id, status) in now {
            if let Some(job) = state.job_mut(&id) {
                if let Some(s) = &status {
                    job.last = s.clone();
                }
                out.push(job.info(status.as_ref()));
            }
        }
        Value::Array(out)
    }

    /// That job `id` exists (checked before a command's own arguments, as QEMU does).
    pub fn check_job(&self, id: &str) -> Result<(), BlockError> {
        match self.state.lock().job(id) {
            Some(_) => Ok(()),
            None => Err(JobError::NotFound(id.to_string()).into()),
        }
    }

    /// block-job-pause, -resume, -cancel, -complete, -set-speed on job `id`.
    pub fn control_job(&self, id: &str, control: JobControl) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let (link, new_state) = {
            let mut state = self.state.lock();
            let job = state
                .job_mut(id)
                .ok_or_else(|| JobError::NotFound(id.to_string()))?;
            let verb_refused = |verb| JobError::Verb {
                id: id.to_string(),
                state: job.state.qmp_name(),
                verb,
            };
            let new_state = match control {
                JobControl::Pause => match job.state {
                    JobState::Running => Some(JobState::Paused),
                    JobState::Ready => Some(JobState::Standby),
                    // A second pause is counted by QEMU; one resume ends both here.
                    JobState::Paused | JobState::Standby => None,
                    _ => return Err(verb_refused("pause").into()),
                },
                JobControl::Resume => match job.state {
                    JobState::Paused => Some(JobState::Running),
                    JobState::Standby => Some(JobState::Ready),
                    _ => return Err(verb_refused("resume").into()),
                },
                JobControl::Complete => match job.state {
                    JobState::Ready => {
                        job.completing = true;
                        None
                    }
                    _ => return Err(verb_refused("complete").into()),
                },
                JobControl::Cancel { .. } => None,
                JobControl::SetSpeed(_) => None,
            };
            if let JobControl::SetSpeed(speed) = control {
                job.spec.speed = speed;
                job.last.speed = speed;
            }
            let disk = job.disk.clone();
            let link = state
                .disk_by_id(&disk)
                .and_then(|d| d.daemon.as_ref())
                .map(|d| d.link.clone());
            (link, new_state)
        };
        if let Some(link) = link {
            link.request(
                BlockRequest::ControlJob {
                    id: id.to_string(),
                    control,
                },
                &[],
            )?;
        }
        if let Some(s) = new_state {
            if let Some(job) = self.state.lock().job_mut(id) {
                job.state = s;
                if matches!(control, JobControl::Pause | JobControl::Resume) {
                    job.last.paused = matches!(s, JobState::Paused | JobState::Standby);
                }
            }
            self.hooks
                .events
                .emit(Event::JobStatusChange(JobStatusChange::new(
                    id,
                    s.qmp_name(),
                )));
        }
        Ok(())
    }

    /// What a disk's daemon said of its job.
    pub fn job_event(&self, disk: &str, event: JobEvent) {
        match event {
            JobEvent::Ready { id, offset, len } => {
                let speed = {
                    let mut state = self.state.lock();
                    let Some(job) = state.job_mut(&id) else {
                        return;
                    };
                    job.last.ready = true;
                    job.last.offset = offset;
                    job.last.len = len;
                    if job.state == JobState::Running {
                        job.state = JobState::Ready;
                    }
                    job.last.speed
                };
                let events = &self.hooks.events;
                events.emit(Event::JobStatusChange(JobStatusChange::new(&id, "ready")));
                events.emit(Event::BlockJobReady(JobReady {
                    kind: "mirror",
                    device: id,
                    len,
                    offset,
                    speed,
                }));
            }
            JobEvent::Error {
                id,
                operation,
                action,
            } => {
                if action == ipc::ErrorAction::Stop {
                    if let Some(job) = self.state.lock().job_mut(&id) {
                        job.last.failed = true;
                        job.last.paused = true;
                    }
                }
                self.hooks.events.emit(Event::BlockJobError(JobErrorEvent {
                    device: id,
                    operation: operation.qmp_name(),
                    action: action.qmp_name(),
                }));
            }
            JobEvent::Ended {
                id,
                offset,
                len,
                cancelled,
                error,
            } => self.job_ended(disk, &id, offset, len, cancelled, error),
        }
    }

    fn job_ended(
        &self,
        disk: &str,
        id: &str,
        offset: u64,
        len: u64,
        cancelled: bool,
        error: Option<String>,
    ) {
        let _changes = self.changes.lock();
        let pivot = {
            let state = self.state.lock();
            state
                .job(id)
                .is_some_and(|j| j.completing && !cancelled && error.is_none())
        };
        if pivot {
            self.pivot(disk, id);
        }
        let Some(job) = self.drop_job(id, pivot) else {
            return;
        };
        if let Some((take, share)) = job.locked.filter(|_| !pivot) {
            // Nothing writes the target now.
            lock::unlock(job.target.as_fd(), take, share);
        }
        let events = &self.hooks.events;
        let status = if cancelled && error.is_none() {
            "aborting"
        } else {
            "waiting"
        };
        events.emit(Event::JobStatusChange(JobStatusChange::new(id, status)));
        if status == "waiting" {
            events.emit(Event::JobStatusChange(JobStatusChange::new(id, "pending")));
        }
        events.emit(Event::JobStatusChange(JobStatusChange::new(
            id,
            "concluded",
        )));
        events.emit(Event::JobStatusChange(JobStatusChange::new(id, "null")));
        let ended = JobEnded {
            kind: job.kind,
            device: id.to_string(),
            len,
            offset,
            speed: job.last.speed,
            error,
        };
        events.emit(if cancelled {
            Event::BlockJobCancelled(ended)
        } else {
            Event::BlockJobCompleted(ended)
        });
    }

    /// A completed mirror: the disk's root is the target's node from now on (its daemon
    /// serves the target already), and the source's nodes go.
    fn pivot(&self, disk_id: &str, id: &str) {
        let mut state = self.state.lock();
        let Some(job) = state.job(id) else {
            return;
        };
        let (node, fd, layer) = match &job.spec.kind {
            JobKind::Mirror(m) => (
                job.target_node.clone(),
                job.target.clone(),
                m.target.clone(),
            ),
        };
        let Some(index) = state.disks.iter().position(|d| d.id == disk_id) else {
            return;
        };
        let old_root = state.disks[index].root.clone();
        let nodes = state.graph.tree(&node);
        let disk = &mut state.disks[index];
        disk.root = node.clone();
        disk.health.set_node(&node);
        disk.config.node_name = node.clone();
        disk.config.layers = vec![layer];
        disk.images = vec![fd];
        disk.nodes = nodes;
        disk.bitmaps.retain(|b| b.node == node);
        // The source's nodes, its backing chain too, unless another disk or node uses
        // them.
        let chain: Vec<String> = state
            .graph
            .chain(&old_root)
            .iter()
            .map(|n| n.name.clone())
            .collect();
        for name in chain.iter().rev() {
            state.graph.remove_tree(name);
        }
        log::info!("disk {disk_id}: serves node {node} now (job {id} completed)");
    }
}

/// Creates a mirror's target file: `size` bytes of `driver` (an existing file is
/// formatted anew, as QEMU's mode absolute-paths does).
fn create_target(path: &str, driver: Driver, size: u64) -> Result<(), BlockError> {
    let fail = |e: std::io::Error| JobError::Create {
        path: path.to_string(),
        why: errno_text(&e),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(fail)?;
    match driver {
        Driver::Qcow2 => create::create(
            &file,
            &CreateOptions {
                size,
                ..CreateOptions::default()
            },
        )
        .map_err(|e| JobError::Create {
            path: path.to_string(),
            why: e.to_string(),
        })?,
        _ => file.set_len(size).map_err(fail)?,
    }
    Ok(())
}
