//! Block jobs (QMP's drive-mirror, blockdev-mirror, ...) between the gateway and the
//! block daemon that runs them on the disk it serves. The gateway opens the target and
//! creates the job's two bitmaps (shared memory it keeps), so that a job survives its
//! daemon: a new daemon is given the same job with `resume`, and carries on from what
//! the bitmaps say is left to copy.

use serde::{Deserialize, Serialize};

use super::node::{ErrorAction, ImageLayer, IoOperation, OnError};

/// What parts of the disk a job copies (QEMU's MirrorSyncMode).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// The whole disk.
    Full,
    /// What the top image holds (the target has the same backing chain below).
    Top,
    /// Only what the guest writes from the job's start on.
    None,
}

/// A mirror: the guest's disk copied to the target while the guest runs; once the copy
/// has caught up the job is ready, and on completion the disk serves the target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MirrorSpec {
    /// The target image (its fd comes with the call).
    pub target: ImageLayer,
    /// Top and None: the target reads through the source's backing chain (top) or the
    /// source (none), and goes over it once completed.
    pub sync: SyncMode,
    /// Disk bytes per bit of the job's bitmaps, and the unit of copying.
    pub granularity: u64,
    /// Bytes in flight from source to target at most.
    pub buf_size: u64,
    /// Zeroes on the source are written to the target as unmapped zeroes.
    pub unmap: bool,
    /// The gateway created the target: it reads as zeroes, so zeroes need no write.
    pub fresh_target: bool,
}

/// A backup: the disk as it was at the job's start copied to the target while the guest
/// runs; a guest write to a chunk not yet copied waits for its old data to be copied
/// first (copy before write).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BackupSpec {
    /// The target image (its fd comes with the call).
    pub target: ImageLayer,
    /// Full: every chunk; Top: those the top image holds (it has a backing file, which
    /// the target names); None: only what the guest overwrites while the job runs.
    pub sync: SyncMode,
    /// Incremental: the chunks marked in the disk's dirty bitmap of this name; the job
    /// takes its marks at the start (the bitmap records anew from there).
    pub bitmap: Option<String>,
    /// Disk bytes per bit of the job's bitmaps, and the unit of copying.
    pub granularity: u64,
    /// The gateway created the target: it reads as zeroes, so zeroes need no write.
    pub fresh_target: bool,
    /// Data goes into the target compressed (a qcow2 target; `granularity` is a whole
    /// number of its clusters).
    pub compress: bool,
}

/// A stream: the data of the backing images above `base` copied into the top image
/// while the guest runs; at the end the top names base as its backing file and the
/// images between go.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    /// Where base is in the chain the daemon serves (1: the top's backing image, so
    /// nothing is copied); None: no base, every backing image is copied.
    pub base_depth: Option<usize>,
    /// What the top's header names as its backing file at the end ("" with no base).
    pub backing_file: String,
    pub backing_format: Option<String>,
    /// Disk bytes per bit of the job's bitmap, and the unit of copying.
    pub granularity: u64,
    /// A read-only disk's top, opened read-write for the job (its fd comes with the
    /// call): the daemon writes the stream through it, the guest still cannot.
    pub writable_top: Option<ImageLayer>,
}

/// A commit: the data of the images from `top` down to just above `base` copied into
/// base; at the end the image over `top` names base as its backing file and the images
/// between go. Committing the served top (an active commit) runs as a mirror whose
/// target is base: it becomes ready, and on completion the node serves base.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CommitSpec {
    /// The base image (its fd, opened read-write, comes with the call).
    pub base: ImageLayer,
    /// Where top is in the chain the daemon serves (0: the served top).
    pub top_depth: usize,
    /// Where base is (below top).
    pub base_depth: usize,
    /// What the image over top names as its backing file at the end.
    pub backing_file: String,
    pub backing_format: Option<String>,
    /// Disk bytes per bit of the job's bitmaps, and the unit of copying.
    pub granularity: u64,
    /// An active commit's bytes in flight at most (as a mirror's).
    pub buf_size: u64,
}

impl CommitSpec {
    /// Commits the served top: a mirror into base, ready and completed as one.
    pub fn active(&self) -> bool {
        self.top_depth == 0
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    Mirror(MirrorSpec),
    Backup(BackupSpec),
    Stream(StreamSpec),
    Commit(CommitSpec),
}

impl JobKind {
    /// QMP's JobType.
    pub fn qmp_name(&self) -> &'static str {
        match self {
            JobKind::Mirror(_) => "mirror",
            JobKind::Backup(_) => "backup",
            JobKind::Stream(_) => "stream",
            JobKind::Commit(_) => "commit",
        }
    }

    /// The image the job writes, other than the served top (its fd comes first with
    /// the job's call).
    pub fn target(&self) -> Option<&ImageLayer> {
        match self {
            JobKind::Mirror(m) => Some(&m.target),
            JobKind::Backup(b) => Some(&b.target),
            JobKind::Stream(s) => s.writable_top.as_ref(),
            JobKind::Commit(c) => Some(&c.base),
        }
    }

    /// How many bitmaps (memfds after the target's fd) the job keeps its progress in: a
    /// mirror's (and an active commit's) dirty and copy bitmaps, a backup's to-copy and
    /// done, a stream's or commit's chunks done.
    pub fn bitmaps(&self) -> usize {
        match self {
            JobKind::Mirror(_) | JobKind::Backup(_) => 2,
            JobKind::Commit(c) if c.active() => 2,
            JobKind::Stream(_) | JobKind::Commit(_) => 1,
        }
    }

    pub fn granularity(&self) -> u64 {
        match self {
            JobKind::Mirror(m) => m.granularity,
            JobKind::Backup(b) => b.granularity,
            JobKind::Stream(s) => s.granularity,
            JobKind::Commit(c) => c.granularity,
        }
    }

    /// A job that becomes ready and waits for block-job-complete.
    pub fn has_ready(&self) -> bool {
        match self {
            JobKind::Mirror(_) => true,
            JobKind::Commit(c) => c.active(),
            JobKind::Backup(_) | JobKind::Stream(_) => false,
        }
    }
}

/// A job for the daemon to run. Its call carries the target image's fd (if the job has
/// one: `JobKind::target`), then the memfds of the job's bitmaps (`JobKind::bitmaps`),
/// each of `granularity` over the disk's size: a mirror's dirty bitmap (chunks the guest
/// wrote, which the daemon marks as it marks the disk's dirty bitmaps) and copy bitmap
/// (chunks taken from the dirty bitmap and not yet copied); a backup's chunks to copy
/// (set at its start, not changed after) and chunks copied; a stream's or commit's
/// chunks settled (copied, or needing no copy).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// QMP's job id.
    pub id: String,
    pub kind: JobKind,
    /// Bytes per second at most (0: no limit).
    pub speed: u64,
    pub on_source_error: OnError,
    pub on_target_error: OnError,
    /// The bitmaps hold a previous daemon's progress: carry on from them (else the job
    /// starts: with sync full, every chunk is to be copied).
    pub resume: bool,
    /// It was ready under a previous daemon.
    pub ready: bool,
    /// Bytes a previous daemon copied (the job's progress goes on from there).
    pub offset: u64,
    /// Paused (block-job-pause) while no daemon ran it: it starts paused.
    pub paused: bool,
    /// block-job-complete was asked of it, ready, while no daemon ran it.
    pub completing: bool,
}

impl JobSpec {
    /// The fds its call carries: the target's, then the bitmaps'.
    pub fn fd_count(&self) -> usize {
        usize::from(self.kind.target().is_some()) + self.kind.bitmaps()
    }
}

/// A request about a running job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobControl {
    Pause,
    Resume,
    /// Stop; a ready mirror first brings its target up to date (`force`: not).
    Cancel {
        force: bool,
    },
    /// A ready mirror: bring the target up to date and serve it from now on.
    Complete,
    SetSpeed(u64),
}

/// A job's progress, as query-block-jobs shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobStatus {
    pub id: String,
    /// Bytes copied.
    pub offset: u64,
    /// Bytes to copy in all (grows as the guest writes).
    pub len: u64,
    pub speed: u64,
    pub paused: bool,
    pub ready: bool,
    /// Copying now (not paused, not waiting for the guest to write).
    pub busy: bool,
    /// The last failure stopped it (on-*-error stop or enospc).
    pub failed: bool,
    /// ... by a full disk (ENOSPC).
    pub nospace: bool,
}

/// What a job tells the gateway on its own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum JobEvent {
    /// The target has caught up with the source (BLOCK_JOB_READY).
    Ready { id: String, offset: u64, len: u64 },
    /// A copy failed, and the job did `action` (BLOCK_JOB_ERROR; with Stop it is paused
    /// until resumed).
    Error {
        id: String,
        operation: IoOperation,
        action: ErrorAction,
    },
    /// The job is over: completed (`cancelled` false), cancelled, or failed (`error`).
    /// After a completed mirror, the disk serves the target.
    Ended {
        id: String,
        offset: u64,
        len: u64,
        cancelled: bool,
        error: Option<String>,
    },
}
