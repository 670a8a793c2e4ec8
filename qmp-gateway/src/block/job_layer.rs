//! QEMU's generic job layer over the block jobs, and blockdev-create's jobs. A block job
//! that ended stays listed as QEMU keeps it: `pending` until job-finalize when it was
//! started with auto-finalize false, `concluded` until job-dismiss when auto-dismiss was
//! false; JOB_STATUS_CHANGE follows QEMU 7.2's sequence (created, running, [ready],
//! waiting, pending, concluded, null; aborting instead of waiting and pending when it
//! failed or was cancelled). blockdev-create is a job of the gateway's own ("create"):
//! the file driver makes a file, the qcow2 driver writes an empty image into a file
//! node blockdev-add opened, by the qcow2 library drive-mirror and the snapshots create
//! their images with (block-daemon's `formats::qcow2::create`), on a thread of its own
//! after the command's answer, as QEMU's job runs after it.
//!
//! Unlike QEMU, a block job's changes to the graph are made when its daemon ends it, not
//! at job-finalize: a job pending for job-finalize has made them already (queries show
//! the new chain), and cannot be cancelled any more (QEMU's can). The records themselves:
//! job_record.rs.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use block_daemon::formats::qcow2::create::{self, Compat, CreateOptions};
use ipc::errno_text;
use serde_json::Value;

use super::error::{BlockError, JobError};
use super::job::{JobFinish, JobState};
use super::job_record::{JobRecord, JobRecords};
use super::{BlockLayer, State};
use crate::events::{Event, EventBus, JobPending, JobStatusChange};

/// The verbs of QEMU's job layer (JobVerb) the job-* commands use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Cancel,
    Pause,
    Resume,
    Complete,
    Finalize,
    Dismiss,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Cancel => "cancel",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::Complete => "complete",
            Verb::Finalize => "finalize",
            Verb::Dismiss => "dismiss",
        }
    }
}

/// blockdev-create's options, as the gateway takes them.
#[derive(Debug, Clone)]
pub enum CreateRequest {
    /// driver file: a new file of `size` bytes (an existing one emptied first).
    File { filename: String, size: u64 },
    /// driver qcow2: an empty image in file node `file`.
    Qcow2 {
        file: String,
        options: CreateOptions,
    },
}

impl State {
    /// The block job pending on disk `disk` (`Disk::id`), if one is: it still holds the
    /// disk's nodes, as QEMU's does until job-finalize.
    pub(super) fn job_pending_on(records: &JobRecords, disk: &str) -> Option<&'static str> {
        (records.lock().iter())
            .find(|r| r.block && r.state == JobState::Pending && r.disk == disk)
            .map(|r| r.kind)
    }

    /// Whether job id `id` is taken by a job a daemon runs or by a record.
    pub(super) fn job_id_taken(&self, records: &JobRecords, id: &str) -> bool {
        self.jobs.iter().any(|j| j.id == id) || records.lock().iter().any(|r| r.id == id)
    }
}

fn status(id: &str, s: &'static str) -> Event {
    Event::JobStatusChange(JobStatusChange::new(id, s))
}

/// Puts `record` in the list in place of its job's (or adds it), or takes its job's
/// out (`None`): a record changes before the event that says so is sent.
fn keep(records: &JobRecords, id: &str, record: Option<JobRecord>) {
    let mut list = records.lock();
    let at = list.iter().position(|r| r.id == id);
    match (at, record) {
        (Some(at), Some(r)) => list[at] = r,
        (None, Some(r)) => list.push(r),
        (Some(at), None) => {
            list.remove(at);
        }
        (None, None) => {}
    }
}

/// Sends a job's end after its pending state: its BLOCK_JOB_* event, concluded, and null
/// if it dismisses itself; keeps its record otherwise.
fn conclude(events: &EventBus, records: &JobRecords, mut record: JobRecord) {
    let id = record.id.clone();
    if record.block {
        let data = record.ended_data();
        events.emit(if record.cancelled {
            Event::BlockJobCancelled(data)
        } else {
            Event::BlockJobCompleted(data)
        });
    }
    if record.finish.auto_dismiss {
        keep(records, &id, None);
        events.emit(status(&id, "concluded"));
        events.emit(status(&id, "null"));
    } else {
        record.state = JobState::Concluded;
        keep(records, &id, Some(record));
        events.emit(status(&id, "concluded"));
    }
}

/// A job's work is done (`record.error`: it failed; `record.cancelled`): waiting and
/// pending, or aborting; then concluded unless it waits for job-finalize.
fn ended(events: &EventBus, records: &JobRecords, mut record: JobRecord) {
    let id = record.id.clone();
    let aborted = record.cancelled || record.error.is_some();
    if aborted {
        events.emit(status(&id, "aborting"));
        return conclude(events, records, record);
    }
    events.emit(status(&id, "waiting"));
    if record.finish.auto_finalize {
        events.emit(status(&id, "pending"));
        return conclude(events, records, record);
    }
    let kind = record.kind;
    let block = record.block;
    record.state = JobState::Pending;
    keep(records, &id, Some(record));
    events.emit(status(&id, "pending"));
    if block {
        events.emit(Event::BlockJobPending(JobPending { kind, id }));
    }
}

impl BlockLayer {
    /// A block job's daemon ended it and its changes are made (jobs.rs `end_job`): the
    /// rest of its way, as its auto-finalize and auto-dismiss say.
    pub(super) fn block_job_ended(&self, record: JobRecord) {
        ended(&self.hooks.events, &self.job_records, record)
    }

    /// The record of job `id`, if it has one.
    pub(super) fn job_record(&self, id: &str) -> Option<JobRecord> {
        self.job_records.lock().iter().find(|r| r.id == id).cloned()
    }

    /// QEMU's refusal of `verb` for a job that has a record (it ended, or is a create
    /// job at work), if it has one.
    pub(super) fn record_refuses(&self, id: &str, verb: &'static str) -> Option<BlockError> {
        let record = self.job_record(id)?;
        Some(
            JobError::Verb {
                id: id.to_string(),
                state: record.state.qmp_name(),
                verb,
            }
            .into(),
        )
    }

    /// The records query-jobs (all) or query-block-jobs (the block jobs') lists.
    pub(super) fn records_shown(&self, block_only: bool) -> Vec<Value> {
        self.job_records
            .lock()
            .iter()
            .filter(|r| r.block || !block_only)
            .map(|r| if block_only { r.info() } else { r.job_info() })
            .collect()
    }

    /// job-finalize and job-dismiss; the other verbs go to a job a daemon runs
    /// (`control_job`) unless the job has a record. `Err(JobNotFound)` for no such job.
    pub fn job_verb(&self, id: &str, verb: Verb) -> Result<(), BlockError> {
        let record = self.job_record(id);
        let Some(record) = record else {
            if self.state.lock().jobs.iter().any(|j| j.id == id) {
                return self.live_job_verb(id, verb);
            }
            return Err(JobError::JobNotFound.into());
        };
        let allowed = matches!(
            (verb, record.state),
            (Verb::Finalize, JobState::Pending) | (Verb::Dismiss, JobState::Concluded)
        );
        if !allowed {
            return Err(JobError::Verb {
                id: id.to_string(),
                state: record.state.qmp_name(),
                verb: verb.name(),
            }
            .into());
        }
        let events = &self.hooks.events;
        match verb {
            Verb::Finalize => conclude(events, &self.job_records, record),
            _ => {
                keep(&self.job_records, id, None);
                events.emit(status(id, "null"));
            }
        }
        Ok(())
    }

    /// A verb for a job a daemon runs, in QEMU's job layer's words.
    fn live_job_verb(&self, id: &str, verb: Verb) -> Result<(), BlockError> {
        let control = match verb {
            // job-cancel is a forced cancel (a ready mirror's copy is not completed).
            Verb::Cancel => ipc::JobControl::Cancel { force: true },
            Verb::Pause => ipc::JobControl::Pause,
            Verb::Resume => ipc::JobControl::Resume,
            Verb::Complete => ipc::JobControl::Complete,
            Verb::Finalize | Verb::Dismiss => {
                let state = self
                    .state
                    .lock()
                    .jobs
                    .iter()
                    .find(|j| j.id == id)
                    .map_or("running", |j| j.state.qmp_name());
                return Err(JobError::Verb {
                    id: id.to_string(),
                    state,
                    verb: verb.name(),
                }
                .into());
            }
        };
        self.control_job(id, control)
    }

    /// blockdev-create: job `id` makes the image `request` describes. The command's own
    /// checks are made here (the id); the rest, as in QEMU, by the job, whose error
    /// query-jobs shows.
    pub fn create_image(&self, id: &str, request: CreateRequest) -> Result<(), BlockError> {
        let state = self.state.lock();
        if !crate::ids::well_formed(id) {
            return Err(JobError::BadId(id.to_string()).into());
        }
        if state.job_id_taken(&self.job_records, id) {
            return Err(JobError::IdInUse(id.to_string()).into());
        }
        // What the job writes into: a node's image, opened here (the checks QEMU's job
        // makes when it opens the node, done now: their errors are the job's).
        let target: Result<Option<Arc<OwnedFd>>, String> = match &request {
            CreateRequest::File { .. } => Ok(None),
            CreateRequest::Qcow2 { file, .. } => qcow2_target(&state, file).map(Some),
        };
        drop(state);
        let record = JobRecord {
            id: id.to_string(),
            kind: "create",
            block: false,
            disk: String::new(),
            state: JobState::Running,
            offset: 0,
            len: 1,
            speed: 0,
            error: None,
            cancelled: false,
            finish: JobFinish {
                auto_finalize: true,
                auto_dismiss: false,
            },
        };
        self.job_records.lock().push(record.clone());
        let events = self.hooks.events.clone();
        events.emit(status(id, "created"));
        events.emit(status(id, "running"));
        let records = self.job_records.clone();
        let work = move || {
            let result = target.and_then(|fd| write_image(&request, fd.as_deref()));
            ended(
                &events,
                &records,
                JobRecord {
                    offset: 1,
                    error: result.err(),
                    ..record
                },
            );
        };
        // After the command's answer, as QEMU's job runs after it.
        std::thread::Builder::new()
            .name("blockdev-create".into())
            .spawn(work)
            .map_err(BlockError::DupImage)?;
        Ok(())
    }
}

/// The image a qcow2 blockdev-create writes: file node `file`'s, or QEMU's error.
fn qcow2_target(state: &State, file: &str) -> Result<Arc<OwnedFd>, String> {
    let node = state
        .lookup_node(Some(file), Some(file))
        .map_err(|e| e.to_string())?;
    if let Some(parent) = state.graph.parent_of(&node) {
        // Another node uses it: QEMU's job cannot take write and resize.
        return Err(format!(
            "Permission conflict on node '{node}': permissions 'write, resize' are both \
             required by an unnamed block device (uses node '{node}' as 'root' child) and \
             unshared by node '{}' (uses node '{node}' as 'file' child).",
            parent.name
        ));
    }
    let n = state
        .graph
        .node(&node)
        .ok_or(BlockError::NoNode(node.clone()))
        .map_err(|e| e.to_string())?;
    if n.read_only {
        return Err("Block node is read-only".to_string());
    }
    n.image
        .clone()
        .ok_or_else(|| format!("Node '{node}' is not an image file"))
}

/// The job's work: the file made, or the qcow2 image written.
fn write_image(request: &CreateRequest, fd: Option<&OwnedFd>) -> Result<(), String> {
    match (request, fd) {
        (CreateRequest::File { filename, size }, _) => {
            let could_not =
                |e: std::io::Error| format!("Could not create '{filename}': {}", errno_text(&e));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(filename)
                .map_err(could_not)?;
            // QEMU's raw_co_create: emptied, then set to its size (preallocation off).
            file.set_len(0).map_err(could_not)?;
            file.set_len(*size).map_err(could_not)
        }
        (CreateRequest::Qcow2 { options, .. }, Some(fd)) => {
            let file =
                std::fs::File::from(fd.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?);
            create::create(&file, options).map_err(|e| e.to_string())
        }
        (CreateRequest::Qcow2 { file, .. }, None) => Err(format!("Node '{file}' has no image")),
    }
}

/// qcow2's version option as the library's compat level.
pub fn compat(version: Option<&str>) -> Compat {
    match version {
        Some("v2") => Compat::V0_10,
        _ => Compat::V1_1,
    }
}
