//! What the block layer keeps of a job the daemons do not run (job_layer.rs holds what is
//! done with it): a block job that ended and waits for job-finalize or job-dismiss, or a
//! blockdev-create job, and how the queries and events show it.

use std::sync::Arc;

use serde_json::{json, Value};

use super::job::{JobFinish, JobState};
use crate::events::BlockJobData;

/// A job the daemons do not run: a block job that ended and waits for job-finalize or
/// job-dismiss, or a blockdev-create job.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: String,
    /// Its JobType ("mirror", "stream", "create", ...).
    pub kind: &'static str,
    /// A block job: query-block-jobs lists it and it has BLOCK_JOB_* events.
    pub block: bool,
    /// A block job's disk (`Disk::id`), which a pending one still holds.
    pub disk: String,
    /// Running (a create job at work), Pending or Concluded.
    pub state: JobState,
    pub offset: u64,
    pub len: u64,
    pub speed: u64,
    /// Why it failed (BLOCK_JOB_COMPLETED's error).
    pub error: Option<String>,
    pub cancelled: bool,
    pub finish: JobFinish,
}

impl JobRecord {
    /// The error the queries show: a cancelled job's is QEMU's ECANCELED text.
    fn shown_error(&self) -> Option<&str> {
        self.error
            .as_deref()
            .or(self.cancelled.then_some("Operation canceled"))
    }

    /// JobInfo (query-jobs).
    pub fn job_info(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "type": self.kind,
            "status": self.state.qmp_name(),
            "current-progress": self.offset,
            "total-progress": self.len,
        });
        if let Some(e) = self.shown_error() {
            v["error"] = json!(e);
        }
        v
    }

    /// BlockJobInfo (query-block-jobs), as QEMU 7.2 shows a job that ended.
    pub fn info(&self) -> Value {
        let mut v = json!({
            "type": self.kind,
            "device": self.id,
            "len": self.len,
            "offset": self.offset,
            "busy": false,
            "paused": false,
            "speed": self.speed,
            "io-status": "ok",
            "ready": false,
            "status": self.state.qmp_name(),
            "auto-finalize": self.finish.auto_finalize,
            "auto-dismiss": self.finish.auto_dismiss,
        });
        if let Some(e) = self.shown_error() {
            v["error"] = json!(e);
        }
        v
    }

    pub(super) fn ended_data(&self) -> BlockJobData {
        BlockJobData {
            kind: self.kind,
            device: self.id.clone(),
            len: self.len,
            offset: self.offset,
            speed: self.speed,
            error: self.error.clone(),
        }
    }
}

/// The records' list, shared with blockdev-create's threads.
pub type JobRecords = Arc<parking_lot::Mutex<Vec<JobRecord>>>;
