//! The block job commands: arguments typed here, the work in block/jobs.rs.

use ipc::{JobControl, OnError, SyncMode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::block::chain_jobs::{CommitRequest, StreamRequest};
use crate::block::job::JobFinish;
use crate::block::job_layer::{compat, CreateRequest, Verb};
use crate::block::jobs::{BackupAction, BackupRequest, BackupSync, MirrorRequest, MirrorTarget};
use crate::block::snapshot::NewImageMode;
use crate::block::transaction::Action;
use crate::qmp::args::{serde_arguments, shared_members, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};
use crate::qmp::types::{BLOCKDEV_BACKUP_MEMBERS, DRIVE_BACKUP_MEMBERS};
use block_daemon::formats::qcow2::create::CreateOptions;

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
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
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
        opt("auto-finalize", Ty::Bool),
        opt("auto-dismiss", Ty::Bool),
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
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
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
        opt("auto-finalize", Ty::Bool),
        opt("auto-dismiss", Ty::Bool),
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
            finish: JobFinish::new(a.auto_finalize, a.auto_dismiss),
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
            finish: JobFinish::new(a.auto_finalize, a.auto_dismiss),
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
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
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
        opt("auto-finalize", Ty::Bool),
        opt("auto-dismiss", Ty::Bool),
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
        finish: JobFinish::new(a.auto_finalize, a.auto_dismiss),
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
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
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
        opt("auto-finalize", Ty::Bool),
        opt("auto-dismiss", Ty::Bool),
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
            finish: JobFinish::new(a.auto_finalize, a.auto_dismiss),
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
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
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
    pub auto_finalize: Option<bool>,
    pub auto_dismiss: Option<bool>,
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
            finish: JobFinish::new(self.auto_finalize, self.auto_dismiss),
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
            finish: JobFinish::new(self.auto_finalize, self.auto_dismiss),
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

/// job-cancel, job-pause, job-resume, job-complete, job-finalize, job-dismiss: QEMU's
/// generic job layer, over every job by its id.
#[derive(Debug, Deserialize)]
pub struct JobId {
    pub id: String,
}

serde_arguments!(JobId, [req("id", Ty::Str)]);

fn verb(c: &Ctx, id: &str, verb: Verb) -> QmpResult {
    c.gw.block.job_verb(id, verb)?;
    Ok(json!({}))
}

pub fn job_cancel(c: &mut Ctx, a: JobId) -> QmpResult {
    verb(c, &a.id, Verb::Cancel)
}

pub fn job_pause(c: &mut Ctx, a: JobId) -> QmpResult {
    verb(c, &a.id, Verb::Pause)
}

pub fn job_resume(c: &mut Ctx, a: JobId) -> QmpResult {
    verb(c, &a.id, Verb::Resume)
}

pub fn job_complete(c: &mut Ctx, a: JobId) -> QmpResult {
    verb(c, &a.id, Verb::Complete)
}

pub fn job_finalize(c: &mut Ctx, a: JobId) -> QmpResult {
    verb(c, &a.id, Verb::Finalize)
}

pub fn job_dismiss(c: &mut Ctx, a: JobId) -> QmpResult {
    verb(c, &a.id, Verb::Dismiss)
}

/// blockdev-create: `options` checked against BlockdevCreateOptions (the file and qcow2
/// branches) before the handler sees them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevCreate {
    pub job_id: String,
    pub options: Value,
}

serde_arguments!(
    BlockdevCreate,
    [
        req("job-id", Ty::Str),
        req("options", Ty::Named("BlockdevCreateOptions")),
    ]
);

/// What Flotilla does not create, in a sentence of its own (QEMU would).
fn not_created(what: &str) -> QmpError {
    QmpError::generic(format!("blockdev-create: Flotilla does not create {what}"))
}

pub fn blockdev_create(c: &mut Ctx, a: BlockdevCreate) -> QmpResult {
    let o = a.options.as_object().cloned().unwrap_or_default();
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    let number = |k: &str| o.get(k).and_then(Value::as_u64);
    let flag = |k: &str| o.get(k).and_then(Value::as_bool);
    let size = number("size").unwrap_or(0);
    if text("preallocation").is_some_and(|p| p != "off") {
        return Err(not_created("preallocated images (preallocation off only)"));
    }
    let request = match text("driver").as_deref() {
        Some("file") => CreateRequest::File {
            filename: text("filename").unwrap_or_default(),
            size,
        },
        Some("qcow2") => {
            let Some(file) = o.get("file").and_then(Value::as_str) else {
                return Err(not_created(
                    "qcow2 images in an inline file definition: blockdev-add the file node \
                     and name it",
                ));
            };
            if o.contains_key("data-file") || o.contains_key("data-file-raw") {
                return Err(not_created("qcow2 images with an external data file"));
            }
            if o.contains_key("encrypt") {
                return Err(not_created("encrypted qcow2 images"));
            }
            if flag("extended-l2") == Some(true) {
                return Err(not_created("qcow2 images with extended L2 entries"));
            }
            if text("compression-type").is_some_and(|t| t != "zlib") {
                return Err(not_created("qcow2 images compressed with zstd"));
            }
            let defaults = CreateOptions::default();
            CreateRequest::Qcow2 {
                file: file.to_string(),
                options: CreateOptions {
                    size,
                    cluster_size: number("cluster-size").unwrap_or(defaults.cluster_size),
                    backing_file: text("backing-file"),
                    backing_format: text("backing-fmt"),
                    compat: compat(text("version").as_deref()),
                    refcount_bits: o
                        .get("refcount-bits")
                        .and_then(Value::as_u64)
                        .map_or(defaults.refcount_bits, |b| {
                            b.min(u64::from(u32::MAX)) as u32
                        }),
                    lazy_refcounts: flag("lazy-refcounts").unwrap_or(false),
                },
            }
        }
        Some(driver) => {
            return Err(not_created(&format!(
                "'{driver}' images (file and qcow2 only)"
            )))
        }
        None => return Err(QmpError::generic("Parameter 'options.driver' is missing")),
    };
    c.gw.block.create_image(&a.job_id, request)?;
    Ok(json!({}))
}
