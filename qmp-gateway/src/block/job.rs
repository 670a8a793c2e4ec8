//! A block job as the gateway keeps it: what its daemon was given (again to a new
//! daemon), its target, bitmaps and state (the commands are jobs.rs').

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use ipc::{JobKind, JobSpec, JobStatus, SharedBitmap};
use serde_json::{json, Value};

use super::error::BlockError;
use super::lock::Perms;
use crate::fdstore::Charge;

/// A job's state, as QEMU's JobStatus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Paused,
    Ready,
    /// Ready, then paused.
    Standby,
    Aborting,
    /// Done, its changes made; waiting for job-finalize (auto-finalize false).
    Pending,
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
            JobState::Pending => "pending",
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
    /// The image it writes other than the disk's top (a stream has none).
    pub target: Option<Arc<OwnedFd>>,
    /// Its bitmaps (`JobKind::bitmaps`), the first a backup's chunks to copy.
    pub bitmaps: Vec<SharedBitmap>,
    /// The target's node, and whether the job made it (drive-mirror: it goes with the
    /// job unless the disk serves it).
    pub target_node: Option<String>,
    pub made_node: bool,
    /// The locks taken on the target (given back if the disk does not serve it).
    pub locked: Option<(Perms, Perms)>,
    pub state: JobState,
    /// Its last progress a daemon reported.
    pub last: JobStatus,
    /// block-job-complete was asked (a mirror's end is then a pivot).
    pub completing: bool,
    /// The fds it holds, charged to the client that started it.
    pub charge: Option<Charge>,
    /// auto-finalize and auto-dismiss, as the command gave them.
    pub finish: JobFinish,
}

/// A job's auto-finalize and auto-dismiss (QEMU's defaults: both true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobFinish {
    pub auto_finalize: bool,
    pub auto_dismiss: bool,
}

impl Default for JobFinish {
    fn default() -> JobFinish {
        JobFinish {
            auto_finalize: true,
            auto_dismiss: true,
        }
    }
}

impl JobFinish {
    /// From a command's optional arguments.
    pub fn new(auto_finalize: Option<bool>, auto_dismiss: Option<bool>) -> JobFinish {
        JobFinish {
            auto_finalize: auto_finalize.unwrap_or(true),
            auto_dismiss: auto_dismiss.unwrap_or(true),
        }
    }
}

impl BlockJob {
    /// A job about to start on disk `disk`: nothing copied yet.
    pub fn new(disk: String, spec: JobSpec, bitmaps: Vec<SharedBitmap>) -> BlockJob {
        BlockJob {
            id: spec.id.clone(),
            kind: spec.kind.qmp_name(),
            disk,
            last: JobStatus {
                id: spec.id.clone(),
                offset: 0,
                len: 0,
                speed: spec.speed,
                paused: false,
                ready: false,
                busy: true,
                failed: false,
                nospace: false,
            },
            spec,
            target: None,
            bitmaps,
            target_node: None,
            made_node: false,
            locked: None,
            state: JobState::Running,
            completing: false,
            charge: None,
            finish: JobFinish::default(),
        }
    }

    /// What a daemon is sent to run it: the spec and its fds.
    pub fn launch(&self, resume: bool) -> Result<(JobSpec, Vec<OwnedFd>), BlockError> {
        let dup =
            |fd: std::os::fd::BorrowedFd| fd.try_clone_to_owned().map_err(BlockError::DupImage);
        let missing = || BlockError::DupImage(std::io::Error::from_raw_os_error(libc::EBADF));
        let mut fds = Vec::new();
        if let Some(t) = &self.target {
            fds.push(dup(t.as_fd())?);
        }
        for b in &self.bitmaps {
            fds.push(dup(b.fd().ok_or_else(missing)?)?);
        }
        let spec = JobSpec {
            resume,
            ready: self.last.ready,
            offset: self.last.offset,
            speed: self.last.speed,
            // What was asked of it while no daemon ran it (a new daemon's job starts so).
            paused: matches!(self.state, JobState::Paused | JobState::Standby),
            completing: self.completing,
            ..self.spec.clone()
        };
        Ok((spec, fds))
    }

    /// An incremental backup of bitmap `name`.
    pub fn uses_bitmap(&self, name: &str) -> bool {
        matches!(&self.spec.kind, JobKind::Backup(b) if b.bitmap.as_deref() == Some(name))
    }

    /// JobInfo (query-jobs), as QEMU 7.2 shows a block job there (one that ended is
    /// job_layer.rs' `EndedJob`).
    pub fn job_info(&self, now: Option<&JobStatus>) -> Value {
        let s = now.unwrap_or(&self.last);
        json!({
            "id": self.id,
            "type": self.kind,
            "status": self.state.qmp_name(),
            "current-progress": s.offset,
            "total-progress": s.len,
        })
    }

    /// BlockJobInfo, as QEMU 7.2 shows it.
    pub fn info(&self, now: Option<&JobStatus>) -> Value {
        let s = now.unwrap_or(&self.last);
        json!({
            "type": self.kind,
            "device": self.id,
            "len": s.len,
            "offset": s.offset,
            "busy": s.busy,
            "paused": s.paused,
            "speed": s.speed,
            "io-status": match (s.failed, s.nospace) {
                (_, true) => "nospace",
                (true, false) => "failed",
                _ => "ok",
            },
            "ready": s.ready,
            "status": self.state.qmp_name(),
            "auto-finalize": self.finish.auto_finalize,
            "auto-dismiss": self.finish.auto_dismiss,
        })
    }
}
