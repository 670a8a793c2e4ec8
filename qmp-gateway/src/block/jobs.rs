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
    errno_text, BackupSpec, BlockReply, BlockRequest, ImageFormat, ImageLayer, JobControl,
    JobEvent, JobKind, JobSpec, MirrorSpec, OnError, SharedBitmap, SyncMode,
};
use serde_json::Value;

use super::bitmaps::default_granularity;
use super::error::BlockError;
pub use super::error::JobError;
pub use super::job::{BlockJob, JobState};
use super::lock::{self, Perms};
use super::options::{Backing, Driver, NodeOptions};
use super::snapshot::NewImageMode;
use super::transaction::Action;
use super::{BlockLayer, State};
use crate::events::{BlockJobData, Event, JobError as JobErrorEvent, JobStatusChange};
use crate::fdstore::Charge;
use crate::ids::well_formed;

/// The buffer a mirror copies through by default (QEMU's default buf-size).
const DEFAULT_BUF_SIZE: u64 = 10 << 20;

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
    pub finish: super::job::JobFinish,
}

/// drive-backup's and blockdev-backup's arguments.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub job_id: Option<String>,
    pub device: String,
    pub target: MirrorTarget,
    pub sync: BackupSync,
    pub bitmap: Option<String>,
    pub speed: i64,
    pub compress: bool,
    pub on_source_error: OnError,
    pub on_target_error: OnError,
    pub finish: super::job::JobFinish,
}

/// A backup's sync (MirrorSyncMode as backups take it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupSync {
    Full,
    Top,
    None,
    Incremental,
}

/// A job's target: its image layer and fd, and the locks taken on it.
type Target = (ImageLayer, Arc<OwnedFd>, Option<(Perms, Perms)>);

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

    /// The job of the disk whose chain has node `node`, if one runs (QEMU's job holds
    /// every node of the chain it works on), or the job that writes into `node` (a
    /// mirror's or backup's target, its file child too).
    pub fn job_holding(&self, node: &str) -> Option<&BlockJob> {
        if let Some(disk) = self.disk_of_node(node) {
            if let Some(job) = self.job_of_disk(&disk.id) {
                return Some(job);
            }
        }
        self.job_writing_into(node)
    }

    /// A drive no device uses (`id`) whose medium (`root`) a job writes into is held
    /// (QEMU's op blocker on the node, named by the drive): drive_del and eject refused.
    pub(super) fn drive_busy(&self, id: &str, root: &str) -> Result<(), BlockError> {
        match self.job_writing_into(root) {
            Some(job) => Err(JobError::Busy {
                node: id.to_string(),
                kind: job.kind,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// The mirror or backup whose target tree has node `node`.
    fn job_writing_into(&self, node: &str) -> Option<&BlockJob> {
        self.jobs.iter().find(|j| {
            !matches!(j.spec.kind, JobKind::Stream(_) | JobKind::Commit(_))
                && j.target_node
                    .as_deref()
                    .is_some_and(|t| self.graph.tree(t).iter().any(|n| n == node))
        })
    }

    /// Refuses what would change the chain of the disk whose root is `root` while a job
    /// runs on it (an external snapshot, a new backing file name), in QEMU's words for
    /// a node a job holds (named by its disk, as QEMU's device-or-node name); also of a
    /// job's target node (named by itself).
    pub(super) fn job_busy(&self, root: &str) -> Result<(), BlockError> {
        let busy = |node: &str, job: &BlockJob| -> Result<(), BlockError> {
            Err(JobError::Busy {
                node: node.to_string(),
                kind: job.kind,
            }
            .into())
        };
        if let Some(job) = self.job_writing_into(root) {
            return busy(root, job);
        }
        let Some(disk) = self.disks.iter().find(|d| d.root == root) else {
            return Ok(());
        };
        match self.job_of_disk(&disk.id) {
            Some(job) => busy(&disk.id, job),
            None => Ok(()),
        }
    }

    /// blockdev-del of a job's target, refused as QEMU does: a mirror's has the job's
    /// own user ("in use"), a backup's is blocked by the job.
    pub(super) fn job_target_in_use(&self, node: &str) -> Result<(), BlockError> {
        match self.job_writing_into(node) {
            Some(job) if matches!(job.spec.kind, JobKind::Mirror(_)) => {
                Err(BlockError::Attached(node.to_string()))
            }
            Some(job) => Err(JobError::Busy {
                node: node.to_string(),
                kind: job.kind,
            }
            .into()),
            None => Ok(()),
        }
    }
}

impl BlockLayer {
    /// drive-mirror and blockdev-mirror; `charge`: the job's fds, charged to the client.
    pub fn mirror(&self, r: &MirrorRequest, charge: Option<Charge>) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let id = self.prepare_mirror(&mut self.state.lock(), r, charge)?;
        self.set_finish(&id, r.finish);
        self.start_job(&id)
    }

    /// Job `id` (recorded, not started) ends as `finish` says.
    pub(super) fn set_finish(&self, id: &str, finish: super::job::JobFinish) {
        if let Some(job) = self.state.lock().job_mut(id) {
            job.finish = finish;
        }
    }

    /// Gives job `id` (prepared) to its disk's daemon, which starts it; forgets it if
    /// that fails. The caller holds `changes`.
    pub(super) fn start_job(&self, id: &str) -> Result<(), BlockError> {
        let sent = (|| {
            let (link, spec, fds) = {
                let state = self.state.lock();
                let job = state
                    .job(id)
                    .ok_or_else(|| JobError::NotFound(id.to_string()))?;
                let (spec, fds) = job.launch(false)?;
                let disk = state
                    .disk_by_layer_id(&job.disk)
                    .ok_or_else(|| BlockError::DeviceNotFound(job.disk.clone()))?;
                (disk.daemon()?.link.clone(), spec, fds)
            };
            let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            link.request(BlockRequest::StartJob(spec), &fds)?;
            Ok::<(), BlockError>(())
        })();
        if let Err(e) = sent {
            if let Some(job) = self.drop_job(id, false) {
                if matches!(job.spec.kind, JobKind::Stream(_) | JobKind::Commit(_)) {
                    // The read-only fd it relaxed (base's, a read-only top's) locks
                    // again as before.
                    self.chain_job_ended(&job, false, false);
                }
            }
            return Err(e);
        }
        let events = &self.hooks.events;
        events.emit(Event::JobStatusChange(JobStatusChange::new(id, "created")));
        events.emit(Event::JobStatusChange(JobStatusChange::new(id, "running")));
        Ok(())
    }

    /// What every job checks first (QEMU's order): the disk, the job id, a job already
    /// running there, the speed. Returns (disk index, root node, job id).
    pub(super) fn check_new_job(
        state: &State,
        records: &super::job_record::JobRecords,
        device: &str,
        job_id: Option<&str>,
        speed: i64,
        mirror: bool,
    ) -> Result<(usize, String, String), BlockError> {
        let root = state.lookup_node(Some(device), Some(device))?;
        let disk_index = state
            .disks
            .iter()
            .position(|d| d.root == root)
            .ok_or_else(|| BlockError::DeviceNotFound(device.to_string()))?;
        let running = state.job_of_disk(&state.disks[disk_index].id);
        if let (Some(_), true) = (running, mirror) {
            // QEMU's mirror sees the job's filter node over the disk first.
            return Err(JobError::NotRoot.into());
        }
        if let Some(kind) = State::job_pending_on(records, &state.disks[disk_index].id) {
            // A job waiting for job-finalize holds the disk's nodes (QEMU checks them
            // before the new job's id).
            return Err(JobError::Busy {
                node: device.to_string(),
                kind,
            }
            .into());
        }
        // QEMU's default id: the disk's drive id, whatever names it here.
        let id = job_id
            .unwrap_or(state.disks[disk_index].device_name())
            .to_string();
        if !well_formed(&id) {
            return Err(JobError::BadId(id).into());
        }
        if state.job_id_taken(records, &id) {
            return Err(JobError::IdInUse(id).into());
        }
        if let Some(job) = running {
            return Err(JobError::Busy {
                node: device.to_string(),
                kind: job.kind,
            }
            .into());
        }
        if speed < 0 {
            return Err(JobError::Speed.into());
        }
        Ok((disk_index, root, id))
    }

    /// A job's target: a node blockdev-add made, or a file (created unless mode is
    /// existing, naming `sync`'s backing file) opened as a new node without its backing
    /// file (QEMU opens it so; the daemon reads through the source's chain). Returns
    /// (node, whether the job made it, whether the file is new).
    fn job_target(
        state: &mut State,
        root: &str,
        target: &MirrorTarget,
        size: u64,
        (sync, backup): (SyncMode, bool),
    ) -> Result<(String, bool, bool), BlockError> {
        match target {
            MirrorTarget::Node(name) => {
                // QEMU's bdrv_lookup_bs(target, target): a disk's name is its root's.
                let name = state.lookup_node(Some(name), Some(name))?;
                if name == root && backup {
                    return Err(JobError::BackupIntoItself.into());
                }
                if name == root || state.graph.tree(root).contains(&name) {
                    return Err(JobError::IntoItself.into());
                }
                // A backup's target is of the source's size (a mirror's fails at its start).
                if backup && super::bitmaps::node_size(&state.graph, &name) != size {
                    return Err(JobError::BackupSizes.into());
                }
                if let Some(disk) = state.disks.iter().find(|d| d.root == name) {
                    // QEMU's block device names it by its name, else its device's path.
                    let user = format!("block device '{}'", disk.id);
                    let read_only = state.graph.node(&name).is_some_and(|n| n.read_only);
                    if !backup {
                        let perms = match read_only {
                            true => "consistent read",
                            false => "consistent read, write",
                        };
                        return Err(JobError::MirrorTargetInUse {
                            node: name,
                            perms,
                            user,
                        }
                        .into());
                    }
                    return Err(JobError::BackupTargetInUse {
                        node: name,
                        filter: state.graph.auto_name(),
                        user,
                    }
                    .into());
                }
                // A drive no device uses reads its node consistently (a mirror's target
                // may not be read so), sharing writes (a backup's target may be written).
                let drive = (state.drives.iter())
                    .find(|d| !d.attached && d.root.as_deref() == Some(name.as_str()));
                if let (Some(drive), false) = (drive, backup) {
                    return Err(JobError::MirrorTargetInUse {
                        node: name,
                        perms: "consistent read",
                        user: format!("block device '{}'", drive.id),
                    }
                    .into());
                }
                if backup && state.graph.node(&name).is_some_and(|n| n.read_only) {
                    return Err(JobError::BackupTargetReadOnly.into());
                }
                Ok((name, false, false))
            }
            MirrorTarget::Drive {
                path,
                format,
                node_name,
                mode,
            } => {
                let source_format = state
                    .graph
                    .image_node(root)
                    .map_or(Driver::Raw, |n| n.driver);
                let driver = match format {
                    Some(f) => {
                        Driver::format(f).ok_or_else(|| JobError::UnknownFormat(f.clone()))?
                    }
                    None => source_format,
                };
                if *mode == NewImageMode::AbsolutePaths {
                    create_target(path, driver, size, target_backing(state, root, sync))?;
                }
                let opts = NodeOptions {
                    node_name: node_name.clone(),
                    read_only: Some(false),
                    backing: Backing::None,
                    ..NodeOptions::over(driver, NodeOptions::file(path.clone()))
                };
                let node = state.open_internal_node(&opts)?;
                Ok((node, true, *mode == NewImageMode::AbsolutePaths))
            }
        }
    }

    /// The format of a job's target: a node's, or a drive's (its format, else the
    /// source's).
    fn target_driver(
        state: &State,
        root: &str,
        target: &MirrorTarget,
    ) -> Result<Driver, BlockError> {
        let of_node = |name: &str| state.graph.image_node(name).map(|n| n.driver);
        match target {
            MirrorTarget::Node(name) => {
                let node = state.lookup_node(Some(name), Some(name))?;
                of_node(&node).ok_or_else(|| state.no_node(name))
            }
            MirrorTarget::Drive {
                format: Some(f), ..
            } => Driver::format(f).ok_or_else(|| JobError::UnknownFormat(f.clone()).into()),
            MirrorTarget::Drive { format: None, .. } => Ok(of_node(root).unwrap_or(Driver::Raw)),
        }
    }

    /// Records a job whose target node is open: locks the target, creates the job's
    /// bitmaps. Returns its id.
    #[allow(clippy::too_many_arguments)]
    fn record_job(
        &self,
        state: &mut State,
        disk_index: usize,
        (target_node, made_node): (String, bool),
        size: u64,
        granularity: u64,
        spec: impl FnOnce(ImageLayer) -> JobSpec,
        charge: Option<Charge>,
    ) -> Result<String, BlockError> {
        let undo_node = |state: &mut State| {
            if made_node {
                state.graph.remove_tree(&target_node);
            }
        };
        let (layer, fd, locked) = match self.target_of(state, &target_node) {
            Ok(t) => t,
            Err(e) => {
                undo_node(state);
                return Err(e);
            }
        };
        let bitmaps = SharedBitmap::create(size, granularity)
            .and_then(|d| Ok(vec![d, SharedBitmap::create(size, granularity)?]));
        let bitmaps = match bitmaps {
            Ok(b) => b,
            Err(e) => {
                if let Some((take, share)) = locked {
                    lock::unlock(fd.as_fd(), take, share);
                }
                undo_node(state);
                return Err(JobError::from(e).into());
            }
        };
        let spec = spec(layer);
        let id = spec.id.clone();
        let disk = state.disks[disk_index].id.clone();
        state.jobs.push(BlockJob {
            target: Some(fd),
            target_node: Some(target_node),
            made_node,
            locked,
            charge,
            ..BlockJob::new(disk, spec, bitmaps)
        });
        Ok(id)
    }

    /// drive-backup and blockdev-backup (a transaction of one action, as in QEMU).
    pub fn backup(&self, r: BackupRequest, charge: Option<Charge>) -> Result<(), BlockError> {
        self.transaction(vec![Box::new(BackupAction::new(r, charge))], false)
    }

    /// Checks a backup's arguments (QEMU's order), opens its target and records the
    /// job; returns its id. The job starts when the transaction commits.
    fn prepare_backup(
        &self,
        state: &mut State,
        r: &BackupRequest,
        charge: Option<Charge>,
    ) -> Result<String, BlockError> {
        let root = state.lookup_node(Some(&r.device), Some(&r.device))?;
        if let Some(disk) = state.disks.iter().find(|d| d.root == root) {
            if let Some(job) = state.job_of_disk(&disk.id) {
                return Err(JobError::Busy {
                    node: r.device.clone(),
                    kind: job.kind,
                }
                .into());
            }
        }
        if r.sync == BackupSync::Incremental && r.bitmap.is_none() {
            return Err(JobError::IncrementalNeedsBitmap.into());
        }
        let granularity = match &r.bitmap {
            Some(name) => {
                let found = state
                    .disks
                    .iter()
                    .flat_map(|d| &d.bitmaps)
                    .find(|b| b.node == root && b.name == *name);
                let b = found.ok_or_else(|| JobError::NoBitmap(name.clone()))?;
                if r.sync != BackupSync::Incremental {
                    return Err(JobError::BitmapWithoutMode.into());
                }
                if b.inconsistent {
                    return Err(super::error::BitmapError::Inconsistent(name.clone()).into());
                }
                b.memory.granularity()
            }
            None => default_granularity(&state.graph, &root),
        };
        let (disk_index, root, id) = Self::check_new_job(
            state,
            &self.job_records,
            &r.device,
            r.job_id.as_deref(),
            r.speed,
            false,
        )?;
        let sync = effective_sync(
            state,
            &root,
            match r.sync {
                BackupSync::Top => SyncMode::Top,
                BackupSync::None => SyncMode::None,
                BackupSync::Full | BackupSync::Incremental => SyncMode::Full,
            },
        );
        if r.compress && Self::target_driver(state, &root, &r.target)? != Driver::Qcow2 {
            return Err(JobError::NoCompression.into());
        }
        let size = super::bitmaps::node_size(&state.graph, &root);
        let (node, made, fresh) = Self::job_target(state, &root, &r.target, size, (sync, true))?;
        // A target over a backing file is written in whole clusters (QEMU's backup
        // copies so): the daemon does not read its backing file for a copy on write.
        // Compressed data goes in whole clusters too.
        let granularity = match state.graph.image_node(&node).and_then(|n| n.qcow2.as_ref()) {
            Some(q) if q.backing_file.is_some() || r.compress => granularity.max(q.cluster_size),
            _ => granularity,
        };
        self.record_job(
            state,
            disk_index,
            (node, made),
            size,
            granularity,
            |target| JobSpec {
                id,
                kind: JobKind::Backup(BackupSpec {
                    target,
                    sync,
                    bitmap: r.bitmap.clone(),
                    granularity,
                    // An incremental's (or sync top's or none's) target goes over a
                    // backing image: its zeroes are written, or the backing's data shows.
                    fresh_target: fresh && r.bitmap.is_none() && sync == SyncMode::Full,
                    compress: r.compress,
                }),
                speed: r.speed as u64,
                on_source_error: r.on_source_error,
                on_target_error: r.on_target_error,
                resume: false,
                ready: false,
                offset: 0,
                paused: false,
                completing: false,
            },
            charge,
        )
    }

    /// Checks a mirror's arguments (QEMU's order), opens its target and records the job
    /// (the last of `state.jobs`); returns its id.
    fn prepare_mirror(
        &self,
        state: &mut State,
        r: &MirrorRequest,
        charge: Option<Charge>,
    ) -> Result<String, BlockError> {
        let (disk_index, root, id) = Self::check_new_job(
            state,
            &self.job_records,
            &r.device,
            r.job_id.as_deref(),
            r.speed,
            true,
        )?;
        if let (
            Some(_),
            MirrorTarget::Drive {
                node_name: None, ..
            },
        ) = (&r.replaces, &r.target)
        {
            return Err(JobError::ReplacesWithoutNodeName.into());
        }
        let granularity = match r.granularity.filter(|&g| g != 0) {
            Some(g) if !(512..=64 << 20).contains(&g) => {
                return Err(JobError::GranularityRange.into())
            }
            Some(g) if !g.is_power_of_two() => return Err(JobError::Granularity.into()),
            Some(g) => g,
            None => default_granularity(&state.graph, &root),
        };
        let buf_size = match r.buf_size {
            Some(b) if b < 0 => return Err(JobError::BufSize.into()),
            Some(b) if b > 0 => b as u64,
            _ => DEFAULT_BUF_SIZE,
        };
        if let Some(name) = &r.replaces {
            // Without filters or quorum, the one node a mirror of the disk can replace
            // is its root, which completion replaces anyway (QEMU's
            // bdrv_recurse_can_replace).
            if state.graph.node(name).is_none() {
                return Err(JobError::NoReplaceNode(name.clone()).into());
            }
            if *name != root {
                return Err(JobError::CannotReplace {
                    node: name.clone(),
                    from: root,
                }
                .into());
            }
        }
        let sync = effective_sync(state, &root, r.sync);
        let size = super::bitmaps::node_size(&state.graph, &root);
        let (node, made, fresh) = Self::job_target(state, &root, &r.target, size, (sync, false))?;
        self.record_job(
            state,
            disk_index,
            (node, made),
            size,
            granularity,
            |target| JobSpec {
                id,
                kind: JobKind::Mirror(MirrorSpec {
                    target,
                    sync,
                    granularity,
                    buf_size,
                    unmap: r.unmap,
                    // Over a backing file, the target's zeroes are written.
                    fresh_target: fresh && sync == SyncMode::Full,
                }),
                speed: r.speed as u64,
                on_source_error: r.on_source_error,
                on_target_error: r.on_target_error,
                resume: false,
                ready: false,
                offset: 0,
                paused: false,
                completing: false,
            },
            charge,
        )
    }

    /// The target node's image layer and fd, locked as a disk's top (it is written). A
    /// target of another size than the disk is taken: the job fails at its start, as
    /// QEMU's does.
    fn target_of(&self, state: &State, node: &str) -> Result<Target, BlockError> {
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
        let (take, share) = Perms::for_top(qcow2, false);
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
        if let (Some(node), true) = (&job.target_node, job.made_node && !keep_node) {
            state.graph.remove_tree(node);
        }
        Some(job)
    }

    /// query-block-jobs: each job's progress, from its daemon (or as last reported).
    pub fn query_block_jobs(&self) -> Value {
        self.with_records(self.jobs_now(BlockJob::info), true)
    }

    /// query-jobs: the same jobs in the generic job layer's words, and blockdev-create's.
    pub fn query_jobs(&self) -> Value {
        self.with_records(self.jobs_now(BlockJob::job_info), false)
    }

    /// `running` (the jobs daemons run), then the records, newest first.
    fn with_records(&self, running: Value, block_only: bool) -> Value {
        let mut all = match running {
            Value::Array(running) => running,
            _ => Vec::new(),
        };
        all.extend(self.records_shown(block_only).into_iter().rev());
        Value::Array(all)
    }

    /// Each job as `show` describes it, with its progress from its daemon (or as last
    /// reported).
    fn jobs_now(&self, show: fn(&BlockJob, Option<&ipc::JobStatus>) -> Value) -> Value {
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
                        .disk_by_layer_id(&j.disk)
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
                out.push(show(job, status.as_ref()));
            }
        }
        Value::Array(out)
    }

    /// That job `id` exists (checked before a command's own arguments, as QEMU does).
    pub fn check_job(&self, id: &str) -> Result<(), BlockError> {
        if self.state.lock().job(id).is_some() || self.job_record(id).is_some_and(|r| r.block) {
            return Ok(());
        }
        Err(JobError::NotFound(id.to_string()).into())
    }

    /// block-job-pause, -resume, -cancel, -complete, -set-speed on job `id`.
    pub fn control_job(&self, id: &str, control: JobControl) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let (link, new_state) = {
            let mut state = self.state.lock();
            if state.job(id).is_none() {
                let verb = match control {
                    JobControl::Pause => "pause",
                    JobControl::Resume => "resume",
                    JobControl::Cancel { .. } => "cancel",
                    JobControl::Complete => "complete",
                    JobControl::SetSpeed(_) => "set-speed",
                };
                drop(state);
                return Err(match self.job_record(id).filter(|r| r.block) {
                    Some(_) => self.record_refuses(id, verb),
                    None => None,
                }
                .unwrap_or_else(|| JobError::NotFound(id.to_string()).into()));
            }
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
                    JobState::Paused | JobState::Standby => {
                        return Err(JobError::AlreadyPaused.into())
                    }
                    _ => return Err(verb_refused("pause").into()),
                },
                JobControl::Resume => match job.state {
                    JobState::Paused => Some(JobState::Running),
                    JobState::Standby => Some(JobState::Ready),
                    _ => return Err(JobError::NotPaused.into()),
                },
                // A ready job paused completes when resumed (QEMU takes it, too).
                JobControl::Complete => match job.state {
                    JobState::Ready | JobState::Standby => {
                        job.completing = true;
                        None
                    }
                    _ => return Err(verb_refused("complete").into()),
                },
                JobControl::Cancel { force: false }
                    if matches!(job.state, JobState::Paused | JobState::Standby) =>
                {
                    return Err(JobError::CancelPaused(job.id.clone()).into())
                }
                JobControl::Cancel { .. } => None,
                JobControl::SetSpeed(_) => None,
            };
            if let JobControl::SetSpeed(speed) = control {
                job.spec.speed = speed;
                job.last.speed = speed;
            }
            let disk = job.disk.clone();
            let progress = (job.last.offset, job.last.len);
            let link = state
                .disk_by_layer_id(&disk)
                .and_then(|d| d.daemon.as_ref())
                .map(|d| d.link.clone());
            if let (None, JobControl::Cancel { .. }) = (&link, control) {
                // No daemon runs the job (it died, or the supervisor gave up on it): it
                // ends here, or a new daemon would carry it on after all. What it wrote
                // stays as it is (not a consistent copy, even of a ready mirror).
                drop(state);
                self.end_job(&disk, id, progress.0, progress.1, true, None);
                return Ok(());
            }
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
                let (speed, kind) = {
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
                    (job.last.speed, job.kind)
                };
                let events = &self.hooks.events;
                events.emit(Event::JobStatusChange(JobStatusChange::new(&id, "ready")));
                events.emit(Event::BlockJobReady(BlockJobData {
                    kind,
                    device: id,
                    len,
                    offset,
                    speed,
                    error: None,
                }));
            }
            JobEvent::Error {
                id,
                operation,
                action,
            } => {
                // Stopped by the error: paused until resumed, as QEMU's.
                let paused = (action == ipc::ErrorAction::Stop)
                    .then(|| {
                        let mut state = self.state.lock();
                        let job = state.job_mut(&id)?;
                        job.last.failed = true;
                        job.last.paused = true;
                        job.state = match job.state {
                            JobState::Ready | JobState::Standby => JobState::Standby,
                            _ => JobState::Paused,
                        };
                        Some(job.state)
                    })
                    .flatten();
                let events = &self.hooks.events;
                events.emit(Event::BlockJobError(JobErrorEvent {
                    device: id.clone(),
                    operation: operation.qmp_name(),
                    action: action.qmp_name(),
                }));
                if let Some(s) = paused {
                    events.emit(Event::JobStatusChange(JobStatusChange::new(
                        &id,
                        s.qmp_name(),
                    )));
                }
            }
            JobEvent::Ended {
                id,
                offset,
                len,
                cancelled,
                error,
            } => {
                let _changes = self.changes.lock();
                self.end_job(disk, &id, offset, len, cancelled, error)
            }
        }
    }

    /// Job `id` is over: the disk follows (a pivot, a shortened chain), the job goes and
    /// its events are sent. The caller holds `changes`.
    fn end_job(
        &self,
        disk: &str,
        id: &str,
        offset: u64,
        len: u64,
        cancelled: bool,
        error: Option<String>,
    ) {
        let (pivot, chain_job) = match self.state.lock().job(id) {
            Some(j) => (
                j.completing && !cancelled && error.is_none(),
                matches!(j.spec.kind, JobKind::Stream(_) | JobKind::Commit(_)),
            ),
            None => (false, false),
        };
        if pivot && !chain_job {
            self.pivot(disk, id);
            // The daemon marks into the target's bitmaps now (the source's stayed with
            // it); none, unless the target node has some.
            if let Err(e) = self.send_bitmaps_of(disk) {
                log::warn!("disk {disk}: the bitmaps after job {id}: {e}");
            }
        }
        let Some(job) = self.drop_job(id, pivot) else {
            return;
        };
        if chain_job {
            // A stream or commit completed cut the chain (an active commit: with a pivot).
            let cut = !cancelled && error.is_none() && (!job.spec.kind.has_ready() || pivot);
            self.chain_job_ended(&job, cut, pivot);
            if pivot {
                // The daemon marks into base's bitmaps now (the top's went loose).
                if let Err(e) = self.send_bitmaps_of(disk) {
                    log::warn!("disk {disk}: the bitmaps after job {id}: {e}");
                }
            }
        }
        if let JobKind::Backup(BackupSpec {
            bitmap: Some(name), ..
        }) = &job.spec.kind
        {
            if cancelled || error.is_some() {
                // The incremental's chunks are to copy again next time (QEMU's
                // on-success: the bitmap is as if the backup had not run).
                if let Some(taken) = job.bitmaps.first() {
                    self.merge_into_bitmap(disk, name, taken);
                }
            }
        }
        let locked = job.locked.filter(|_| !pivot && !chain_job);
        if let (Some((take, share)), Some(target)) = (locked, &job.target) {
            // Nothing writes the target now.
            lock::unlock(target.as_fd(), take, share);
        }
        // QEMU's order: the job's way to its end, its event, then concluded and null
        // (job_layer.rs: a job may wait for job-finalize or job-dismiss on the way).
        self.block_job_ended(super::job_record::JobRecord {
            id: id.to_string(),
            kind: job.kind,
            block: true,
            disk: disk.to_string(),
            state: JobState::Concluded,
            offset,
            len,
            speed: job.last.speed,
            error,
            cancelled,
            finish: job.finish,
        });
    }

    /// A completed mirror: the disk's root is the target's node from now on (its daemon
    /// serves the target already) and the source's nodes go, but for what the target
    /// goes over, as QEMU's: the source's backing chain (sync top) or the source (sync
    /// none, a backing file from now on).
    fn pivot(&self, disk_id: &str, id: &str) {
        let mut state = self.state.lock();
        let Some(job) = state.job(id) else {
            return;
        };
        let (Some(node), Some(fd), Some(layer)) = (
            job.target_node.clone(),
            job.target.clone(),
            job.spec.kind.target().cloned(),
        ) else {
            return;
        };
        let kept = match &job.spec.kind {
            JobKind::Mirror(m) if m.sync == SyncMode::Top => 1,
            JobKind::Mirror(m) if m.sync == SyncMode::None => 0,
            _ => usize::MAX,
        };
        let Some(index) = state.disks.iter().position(|d| d.id == disk_id) else {
            return;
        };
        let old_root = state.disks[index].root.clone();
        let chain: Vec<String> = state
            .graph
            .chain(&old_root)
            .iter()
            .map(|n| n.name.clone())
            .collect();
        let below = chain.get(kept).cloned();
        let image = state.graph.image_node(&node).map(|n| n.name.clone());
        if let (Some(image), Some(below)) = (image, &below) {
            state.graph.set_backing(&image, Some(below));
        }
        let old_top_locking = state
            .graph
            .protocol_of(&old_root)
            .is_some_and(|p| p.locking);
        let nodes = state.graph.tree(&node);
        let disk = &mut state.disks[index];
        if kept == 0 && old_top_locking {
            // The source is a backing file now: its top's locks drop to a backing's.
            let qcow2 = matches!(
                disk.config.layers.first().map(|l| &l.format),
                Some(ImageFormat::Qcow2(_))
            );
            if let Some(old) = disk.images.first() {
                let (take, share) = Perms::for_top(qcow2, disk.config.read_only);
                lock::unlock(old.as_fd(), take, share);
                let (take, share) = Perms::for_backing();
                if let Err(e) = lock::lock(old.as_fd(), take, share) {
                    log::warn!("disk {disk_id}: locking the source as a backing file: {e}");
                }
            }
        }
        let below_layers = disk.config.layers.get(kept..).unwrap_or_default().to_vec();
        let below_images = disk.images.get(kept..).unwrap_or_default().to_vec();
        disk.root = node.clone();
        disk.health.set_node(&node);
        disk.config.node_name = node.clone();
        disk.config.layers = std::iter::once(layer).chain(below_layers).collect();
        disk.images = std::iter::once(fd).chain(below_images).collect();
        disk.nodes = nodes;
        let read_only = disk.config.read_only;
        // The source's nodes the target does not go over go, unless another disk or
        // node uses them, or blockdev-add made them: those stay, no disk's, until
        // blockdev-del (QEMU's monitor holds them), with their backing chain.
        let mut old_top_stays = false;
        for name in chain.iter().take(kept.min(chain.len())) {
            match state.graph.node(name) {
                None => continue,
                Some(n) if n.monitor_owned => {
                    old_top_stays |= *name == old_root;
                    break;
                }
                Some(_) => state.graph.remove_tree(name),
            }
        }
        if old_top_stays && kept > 0 {
            // No disk writes it now: it keeps what its node takes of the image alone.
            state.release_top(&old_root, read_only);
        }
        // Bitmaps stay on their nodes: the source's go loose, the target's are the
        // disk's now (its daemon is sent them after this).
        state.settle_bitmaps();
        log::info!("disk {disk_id}: serves node {node} now (job {id} completed)");
    }
}

/// Sync top of a disk whose top has no backing file is all of it (QEMU's too).
fn effective_sync(state: &State, root: &str, sync: SyncMode) -> SyncMode {
    match sync {
        SyncMode::Top if state.graph.chain(root).len() < 2 => SyncMode::Full,
        s => s,
    }
}

/// The backing file (filename, format) a new target of a `sync` job names, as QEMU's
/// drive-mirror and drive-backup create it: none for full, the source's backing file
/// for top, the source for none.
fn target_backing(state: &State, root: &str, sync: SyncMode) -> Option<(String, String)> {
    let node = match sync {
        SyncMode::Full => return None,
        SyncMode::Top => state.graph.chain(root).get(1)?.name.clone(),
        SyncMode::None => root.to_string(),
    };
    let image = state.graph.image_node(&node)?;
    let proto = state.graph.protocol_of(&node)?;
    Some((proto.filename.clone(), image.driver.name().to_string()))
}

/// Creates a job's target file: `size` bytes of `driver` over `backing` (an existing
/// file is formatted anew, as QEMU's mode absolute-paths does).
fn create_target(
    path: &str,
    driver: Driver,
    size: u64,
    backing: Option<(String, String)>,
) -> Result<(), BlockError> {
    if backing.is_some() && driver != Driver::Qcow2 {
        return Err(JobError::NoBackingFiles(driver.name().to_string()).into());
    }
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
                backing_file: backing.as_ref().map(|b| b.0.clone()),
                backing_format: backing.map(|b| b.1),
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

/// The transaction actions drive-backup and blockdev-backup: prepared (target created and
/// opened, job recorded) with the other actions, started when all of them are, so the
/// backup's point in time comes after every action's change (a bitmap added or cleared
/// beside it records from before that point: the next incremental backup may copy a
/// little more, never less).
pub struct BackupAction {
    request: BackupRequest,
    charge: Option<Charge>,
    prepared: Option<String>,
}

impl BackupAction {
    pub fn new(request: BackupRequest, charge: Option<Charge>) -> BackupAction {
        BackupAction {
            request,
            charge,
            prepared: None,
        }
    }
}

impl Action for BackupAction {
    fn kind(&self) -> &'static str {
        match self.request.target {
            MirrorTarget::Node(_) => "blockdev-backup",
            MirrorTarget::Drive { .. } => "drive-backup",
        }
    }

    fn supports_grouped(&self) -> bool {
        true
    }

    fn prepare(&mut self, layer: &BlockLayer) -> Result<(), BlockError> {
        let id =
            layer.prepare_backup(&mut layer.state.lock(), &self.request, self.charge.take())?;
        layer.set_finish(&id, self.request.finish);
        self.prepared = Some(id);
        Ok(())
    }

    fn commit(&mut self, layer: &BlockLayer) {
        if let Some(id) = self.prepared.take() {
            if let Err(e) = layer.start_job(&id) {
                // Too late to undo the others: the job ends at once, as QEMU's would.
                log::error!("job {id}: starting it: {e}");
                let events = &layer.hooks.events;
                events.emit(Event::BlockJobCompleted(BlockJobData {
                    kind: "backup",
                    device: id,
                    len: 0,
                    offset: 0,
                    speed: 0,
                    error: Some(e.to_string()),
                }));
            }
        }
    }

    fn abort(&mut self, layer: &BlockLayer) {
        if let Some(id) = self.prepared.take() {
            layer.drop_job(&id, false);
        }
    }
}
