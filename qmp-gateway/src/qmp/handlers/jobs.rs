//! The block job commands: arguments typed here, the work in block/jobs.rs.

use ipc::{JobControl, OnError, SyncMode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::block::chain_jobs::{CommitRequest, StreamRequest};
use crate::block::jobs::{BackupAction, BackupRequest, BackupSync, MirrorRequest, MirrorTarget};
use crate::block::snapshot::NewImageMode;
use crate::block::transaction::Action;
use crate::qmp::args::{serde_arguments, shared_members, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};
use crate::qmp::types::{BLOCKDEV_BACKUP_MEMBERS, DRIVE_BACKUP_MEMBERS};

/// MirrorSyncMode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    Full,
    Top,
    None,
    Incremental,
    Bitmap,
}

impl Sync {
    /// A mirror's (QEMU's words for the ones it refuses).
    fn mirror(self) -> Result<SyncMode, QmpError> {
        match self {
            Sync::Full => Ok(SyncMode::Full),
            Sync::Top => Ok(SyncMode::Top),
            Sync::None => Ok(SyncMode::None),
            Sync::Incremental => Err(QmpError::generic("Sync mode 'incremental' not supported")),
            Sync::Bitmap => Err(QmpError::generic("Sync mode 'bitmap' not supported")),
        }
    }

    /// A backup's ('bitmap' needs bitmap-mode, which is not taken yet).
    fn backup(self) -> Result<BackupSync, QmpError> {
        match self {
            Sync::Full => Ok(BackupSync::Full),
            Sync::Top => Ok(BackupSync::Top),
            Sync::None => Ok(BackupSync::None),
            Sync::Incremental => Ok(BackupSync::Incremental),
            Sync::Bitmap => Err(QmpError::generic(
                "must provide a valid bitmap name for 'bitmap' sync mode",
            )),
        }
    }
}

/// BlockdevOnError.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnErrorArg {
    Report,
    Ignore,
    Enospc,
    Stop,
    /// The node's own policy: a job's is report.
    Auto,
}

/// A job's policy for one side (absent: report).
fn policy(a: Option<OnErrorArg>) -> OnError {
    {
        match a {
            None | Some(OnErrorArg::Report | OnErrorArg::Auto) => OnError::Report,
            Some(OnErrorArg::Ignore) => OnError::Ignore,
            Some(OnErrorArg::Enospc) => OnError::Enospc,
            Some(OnErrorArg::Stop) => OnError::Stop,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DriveMirror {
    pub job_id: Option<String>,
    pub device: String,
    pub target: String,
    pub format: Option<String>,
    pub node_name: Option<String>,
    pub replaces: Option<String>,
    pub sync: Sync,
    pub mode: Option<NewImageMode>,
    pub speed: Option<Int>,
    pub granularity: Option<Int>,
    pub buf_size: Option<Int>,
    pub on_source_error: Option<OnErrorArg>,
    pub on_target_error: Option<OnErrorArg>,
    pub unmap: Option<bool>,
}

serde_arguments!(
    DriveMirror,
    [
        opt("job-id", Ty::Str),
        req("device", Ty::Str),
        req("target", Ty::Str),
        opt("format", Ty::Str),
        opt("node-name", Ty::Str),
        opt("replaces", Ty::Str),
        req("sync", Ty::Named("MirrorSyncMode")),
        opt("mode", Ty::Named("NewImageMode")),
        opt("speed", Ty::Int),
        opt("granularity", Ty::U32),
        opt("buf-size", Ty::Int),
        opt("on-source-error", Ty::Named("BlockdevOnError")),
        opt("on-target-error", Ty::Named("BlockdevOnError")),
        opt("unmap", Ty::Bool),
    ]
);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevMirror {
    pub job_id: Option<String>,
    pub device: String,
    pub target: String,
    pub replaces: Option<String>,
    pub sync: Sync,
    pub speed: Option<Int>,
    pub granularity: Option<Int>,
    pub buf_size: Option<Int>,
    pub on_source_error: Option<OnErrorArg>,
    pub on_target_error: Option<OnErrorArg>,
}

serde_arguments!(
    BlockdevMirror,
    [
        opt("job-id", Ty::Str),
        req("device", Ty::Str),
        req("target", Ty::Str),
        opt("replaces", Ty::Str),
        req("sync", Ty::Named("MirrorSyncMode")),
        opt("speed", Ty::Int),
        opt("granularity", Ty::U32),
        opt("buf-size", Ty::Int),
        opt("on-source-error", Ty::Named("BlockdevOnError")),
        opt("on-target-error", Ty::Named("BlockdevOnError")),
    ]
);

fn saturating(i: Option<Int>) -> Option<i64> {
    i.map(Int::saturating_i64)
}

pub fn drive_mirror(c: &mut Ctx, a: DriveMirror) -> QmpResult {
    let charge = c.charge_fds(3)?;
    c.gw.block.mirror(
        &MirrorRequest {
            job_id: a.job_id,
            device: a.device,
            target: MirrorTarget::Drive {
                path: a.target,
                format: a.format,
                node_name: a.node_name,
                mode: a.mode.unwrap_or(NewImageMode::AbsolutePaths),
            },
            replaces: a.replaces,
            speed: saturating(a.speed).unwrap_or(0),
            granularity: a.granularity.and_then(|g| g.as_u64()),
            buf_size: saturating(a.buf_size),
            sync: a.sync.mirror()?,
            on_source_error: policy(a.on_source_error),
            on_target_error: policy(a.on_target_error),
            unmap: a.unmap.unwrap_or(true),
        },
        Some(charge),
    )?;
    Ok(json!({}))
}

pub fn blockdev_mirror(c: &mut Ctx, a: BlockdevMirror) -> QmpResult {
    let charge = c.charge_fds(2)?;
    c.gw.block.mirror(
        &MirrorRequest {
            job_id: a.job_id,
            device: a.device,
            target: MirrorTarget::Node(a.target),
            replaces: a.replaces,
            speed: saturating(a.speed).unwrap_or(0),
            granularity: a.granularity.and_then(|g| g.as_u64()),
            buf_size: saturating(a.buf_size),
            sync: a.sync.mirror()?,
            on_source_error: policy(a.on_source_error),
            on_target_error: policy(a.on_target_error),
            unmap: true,
        },
        Some(charge),
    )?;
    Ok(json!({}))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockStream {
    pub job_id: Option<String>,
    pub device: String,
    pub base: Option<String>,
    pub base_node: Option<String>,
    pub backing_file: Option<String>,
    pub speed: Option<Int>,
    pub on_error: Option<OnErrorArg>,
}

// base-node (QEMU 2.8) as well as the spec's base: libvirt names nodes.
serde_arguments!(
    BlockStream,
    [
        opt("job-id", Ty::Str),
        req("device", Ty::Str),
        opt("base", Ty::Str),
        opt("base-node", Ty::Str),
        opt("backing-file", Ty::Str),
        opt("speed", Ty::Int),
        opt("on-error", Ty::Named("BlockdevOnError")),
    ]
);

pub fn block_stream(c: &mut Ctx, a: BlockStream) -> QmpResult {
    c.gw.block.stream(&StreamRequest {
        job_id: a.job_id,
        device: a.device,
        base: a.base,
        base_node: a.base_node,
        backing_file: a.backing_file,
        speed: saturating(a.speed).unwrap_or(0),
        on_error: policy(a.on_error),
    })?;
    Ok(json!({}))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockCommit {
    pub job_id: Option<String>,
    pub device: String,
    pub base: Option<String>,
    pub base_node: Option<String>,
    pub top: Option<String>,
    pub top_node: Option<String>,
    pub backing_file: Option<String>,
    pub speed: Option<Int>,
}

// base-node and top-node (QEMU 3.1) as well as the spec's base and top.
serde_arguments!(
    BlockCommit,
    [
        opt("job-id", Ty::Str),
        req("device", Ty::Str),
        opt("base", Ty::Str),
        opt("base-node", Ty::Str),
        opt("top", Ty::Str),
        opt("top-node", Ty::Str),
        opt("backing-file", Ty::Str),
        opt("speed", Ty::Int),
    ]
);

pub fn block_commit(c: &mut Ctx, a: BlockCommit) -> QmpResult {
    // A commit's base: the read-write fd the job holds.
    let charge = c.charge_fds(1)?;
    c.gw.block.commit(
        &CommitRequest {
            job_id: a.job_id,
            device: a.device,
            base: a.base,
            base_node: a.base_node,
            top: a.top,
            top_node: a.top_node,
            backing_file: a.backing_file,
            speed: saturating(a.speed).unwrap_or(0),
        },
        Some(charge),
    )?;
    Ok(json!({}))
}

pub fn query_block_jobs(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(c.gw.block.query_block_jobs())
}

/// query-jobs (not in our spec, QEMU's since 3.0): libvirt asks it when it reconnects
/// to a running VM and ends the VM if it fails.
pub fn query_jobs(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(c.gw.block.query_jobs())
}

/// block-job-pause, -resume, -complete: the job's id as "device".
#[derive(Debug, Deserialize)]
pub struct JobDevice {
    pub device: String,
}

serde_arguments!(JobDevice, [req("device", Ty::Str)]);

#[derive(Debug, Deserialize)]
pub struct JobCancel {
    pub device: String,
    pub force: Option<bool>,
}

serde_arguments!(JobCancel, [req("device", Ty::Str), opt("force", Ty::Bool)]);

#[derive(Debug, Deserialize)]
pub struct JobSetSpeed {
    pub device: String,
    pub speed: Int,
}

serde_arguments!(JobSetSpeed, [req("device", Ty::Str), req("speed", Ty::Int)]);

fn control(c: &Ctx, id: &str, control: JobControl) -> QmpResult {
    c.gw.block.control_job(id, control)?;
    Ok(Value::Object(Default::default()))
}

pub fn block_job_pause(c: &mut Ctx, a: JobDevice) -> QmpResult {
    control(c, &a.device, JobControl::Pause)
}

pub fn block_job_resume(c: &mut Ctx, a: JobDevice) -> QmpResult {
    control(c, &a.device, JobControl::Resume)
}

pub fn block_job_complete(c: &mut Ctx, a: JobDevice) -> QmpResult {
    control(c, &a.device, JobControl::Complete)
}

pub fn block_job_cancel(c: &mut Ctx, a: JobCancel) -> QmpResult {
    let force = a.force.unwrap_or(false);
    control(c, &a.device, JobControl::Cancel { force })
}

pub fn block_job_set_speed(c: &mut Ctx, a: JobSetSpeed) -> QmpResult {
    let speed = a.speed.saturating_i64();
    c.gw.block.check_job(&a.device)?;
    if speed < 0 {
        return Err(crate::block::BlockError::from(crate::block::jobs::JobError::Speed).into());
    }
    control(c, &a.device, JobControl::SetSpeed(speed as u64))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DriveBackup {
    pub job_id: Option<String>,
    pub device: String,
    pub target: String,
    pub format: Option<String>,
    pub sync: Sync,
    pub mode: Option<NewImageMode>,
    pub speed: Option<Int>,
    pub bitmap: Option<String>,
    pub compress: Option<bool>,
    pub on_source_error: Option<OnErrorArg>,
    pub on_target_error: Option<OnErrorArg>,
}

shared_members!(DriveBackup, DRIVE_BACKUP_MEMBERS);

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevBackup {
    pub job_id: Option<String>,
    pub device: String,
    pub target: String,
    pub sync: Sync,
    pub speed: Option<Int>,
    pub bitmap: Option<String>,
    pub compress: Option<bool>,
    pub on_source_error: Option<OnErrorArg>,
    pub on_target_error: Option<OnErrorArg>,
}

shared_members!(BlockdevBackup, BLOCKDEV_BACKUP_MEMBERS);

impl DriveBackup {
    fn request(self) -> Result<BackupRequest, QmpError> {
        Ok(BackupRequest {
            job_id: self.job_id,
            device: self.device,
            target: MirrorTarget::Drive {
                path: self.target,
                format: self.format,
                node_name: None,
                mode: self.mode.unwrap_or(NewImageMode::AbsolutePaths),
            },
            sync: self.sync.backup()?,
            bitmap: self.bitmap,
            speed: saturating(self.speed).unwrap_or(0),
            compress: self.compress.unwrap_or(false),
            on_source_error: policy(self.on_source_error),
            on_target_error: policy(self.on_target_error),
        })
    }
}

impl BlockdevBackup {
    fn request(self) -> Result<BackupRequest, QmpError> {
        Ok(BackupRequest {
            job_id: self.job_id,
            device: self.device,
            target: MirrorTarget::Node(self.target),
            sync: self.sync.backup()?,
            bitmap: self.bitmap,
            speed: saturating(self.speed).unwrap_or(0),
            compress: self.compress.unwrap_or(false),
            on_source_error: policy(self.on_source_error),
            on_target_error: policy(self.on_target_error),
        })
    }
}

/// The transaction actions drive-backup and blockdev-backup (their fds charged to the
/// client).
pub fn drive_backup_action(c: &Ctx, a: DriveBackup) -> Result<Box<dyn Action>, QmpError> {
    let charge = c.charge_fds(3)?;
    Ok(Box::new(BackupAction::new(a.request()?, Some(charge))))
}

pub fn blockdev_backup_action(c: &Ctx, a: BlockdevBackup) -> Result<Box<dyn Action>, QmpError> {
    let charge = c.charge_fds(2)?;
    Ok(Box::new(BackupAction::new(a.request()?, Some(charge))))
}

pub fn drive_backup(c: &mut Ctx, a: DriveBackup) -> QmpResult {
    let charge = c.charge_fds(3)?;
    c.gw.block.backup(a.request()?, Some(charge))?;
    Ok(json!({}))
}

pub fn blockdev_backup(c: &mut Ctx, a: BlockdevBackup) -> QmpResult {
    let charge = c.charge_fds(2)?;
    c.gw.block.backup(a.request()?, Some(charge))?;
    Ok(json!({}))
}
