//! gateway <-> block-daemon: opening a node on an image the gateway opened, serving it to
//! vmm-core over a vhost-user listener the gateway bound, and the node's management
//! (statistics, resize, I/O limits, write threshold, what to do when the image fails a
//! request and the retry of the requests held after one).

use serde::{Deserialize, Serialize};

use super::job::{JobControl, JobEvent, JobSpec, JobStatus};
use super::node::{CacheFlags, DetectZeroes, ErrorAction, ImageLayer, IoOperation, OnError};
use super::{Call, Message, Upcall};

/// A node to serve. The frame carries the listening vhost-user socket frontends connect
/// to, the disk's counters page, which outlives the daemon, and then one fd per entry of
/// `layers`, in order (the top image opened with the access `read_only` implies, its
/// backing files read-only).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockOpen {
    /// The node the guest device is attached to (named in events).
    pub node_name: String,
    /// What the guest reads with GET_ID (at most 20 bytes are used).
    pub serial: String,
    pub read_only: bool,
    pub cache: CacheFlags,
    /// Guest discards deallocate (QEMU discard=unmap); otherwise they are ignored.
    pub discard_unmap: bool,
    pub detect_zeroes: DetectZeroes,
    pub queues: u32,
    /// Lengths in seconds of the windows timed statistics are kept over.
    pub stats_intervals: Vec<u32>,
    /// What a failed read does (rerror=).
    pub on_read_error: OnError,
    /// What a failed write, flush, discard or write-zeroes does (werror=).
    pub on_write_error: OnError,
    /// The image chain, top first (at least one).
    pub layers: Vec<ImageLayer>,
    /// The dirty bitmaps to mark into from the first request on (their memfds follow
    /// the images'), as `BlockRequest::SetDirtyBitmaps` sets them.
    pub dirty_bitmaps: Vec<DirtyBitmapSpec>,
    /// What becomes of the persistent bitmaps a qcow2 top image stores.
    pub stored_bitmaps: StoredBitmaps,
    /// A block job to carry on from the first request on (its fds come last, as
    /// `BlockRequest::StartJob`'s).
    pub job: Option<JobSpec>,
    /// The images belong to a VM still arriving by migration (its source writes them):
    /// they are opened read-only and nothing is written to them, at open or at close,
    /// until a daemon opened without this serves them. The guest still sees the
    /// device's own read-only setting.
    pub inactive: bool,
}

/// What a daemon does with the persistent dirty bitmaps its writable qcow2 top image
/// stores (qcow2's bitmaps extension).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoredBitmaps {
    /// Not kept: the writes would make them stale, so the image says they are (a
    /// read-only node, or an image the gateway does not look after).
    #[default]
    NotKept,
    /// The node's first open: load them, mark them in use in the image, mark writes
    /// into those that record from the first request on, and hand them to the gateway
    /// (`BlockReply::Opened`); the set is stored back at a clean close.
    Load,
    /// The gateway has them already (a daemon started again): the persistent bitmaps
    /// of the set it sends are what is stored back at a clean close.
    Kept,
}

/// One leaky bucket of a throttle configuration (QEMU's LeakyBucket settings).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BucketLimits {
    /// Sustained rate (bytes or operations per second); 0: unlimited.
    pub avg: u64,
    /// Burst rate; 0: no burst beyond a tenth of a second at `avg`.
    pub max: u64,
    /// How long a burst at `max` may last, in seconds.
    pub burst_length: u64,
}

/// Which bucket is which in `ThrottleLimits::buckets`.
pub const BPS_TOTAL: usize = 0;
pub const BPS_READ: usize = 1;
pub const BPS_WRITE: usize = 2;
pub const OPS_TOTAL: usize = 3;
pub const OPS_READ: usize = 4;
pub const OPS_WRITE: usize = 5;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ThrottleLimits {
    pub buckets: [BucketLimits; 6],
    /// An operation larger than this counts as size / iops_size operations; 0: off.
    pub iops_size: u64,
}

/// Size of a throttle group's state page: a memfd the gateway creates and hands every
/// member of the group with its limits; the daemons keep the bucket levels in it.
pub const THROTTLE_STATE_SIZE: u64 = 4096;

/// A new, zeroed throttle group state page.
pub fn new_throttle_state() -> std::io::Result<std::os::fd::OwnedFd> {
    crate::shm::memfd(c"flotilla-throttle", THROTTLE_STATE_SIZE, false)
}

impl ThrottleLimits {
    pub fn enabled(&self) -> bool {
        self.buckets.iter().any(|b| b.avg > 0)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum BlockRequest {
    /// Must come first; answered with `Opened`. Carries the listener, the disk's counters
    /// page (`crate::BlockCounters`), one image fd per layer and one memfd per dirty
    /// bitmap.
    Open(BlockOpen),
    /// Answered with `Stats`.
    Stats,
    /// Grow or shrink the image; the guest hears of it through a config-change interrupt.
    Resize { bytes: u64 },
    /// New I/O limits, shared with the other members of the throttle group through the
    /// state page that comes with them (one fd); `None` removes the limits (no fd).
    SetThrottle(Option<ThrottleLimits>),
    /// Raise `WriteThreshold` for `node_name` once a write ends beyond `bytes`; 0
    /// disables it. Each node of the disk's tree has its own.
    SetWriteThreshold { node_name: String, bytes: u64 },
    /// Start again the requests held after a failure whose action was `Stop` (QMP cont).
    Resume,
    /// Serve what the guest made available, wait for every request to finish, and
    /// flush if asked (QMP stop, once the vCPUs stopped; I/O limits hold nothing
    /// meanwhile). A migration's stop does not ask: its `Inactivate` flushes.
    Drain { flush: bool },
    /// Quiesce, make internal snapshot `name` of the top image, resume. Answered with
    /// `Snapshot`.
    SnapshotCreate { name: String },
    /// Quiesce, delete the top image's internal snapshot with this id and/or name,
    /// resume. Answered with `Snapshot` (the one deleted).
    SnapshotDelete {
        id: Option<String>,
        name: Option<String>,
    },
    /// Quiesce, open `layer` (its fd, read-write, comes with the call) over the chain
    /// served now as its new top, resume. The old top is only read from then on.
    PushTop(ImageLayer),
    /// Undoes the last `PushTop` (a transaction that failed): its top image goes, the
    /// one below serves again.
    PopTop,
    /// Quiesce, write `backing_file` (empty: none) and `backing_format` into the top
    /// image's header, resume.
    ChangeBackingFile {
        backing_file: String,
        backing_format: Option<String>,
    },
    /// Quiesce, then mark the chunks writes, write-zeroes and discards reach in exactly
    /// these dirty bitmaps (their memfds come with the call, one each, in order:
    /// `crate::SharedBitmap`), in place of those marked into so far; resume. With nothing
    /// in flight at the swap, a write is in the old memory or the new one, never lost
    /// in between: the gateway clears a bitmap, grows it or stops marking into it by
    /// sending the set again with other memory.
    SetDirtyBitmaps(Vec<DirtyBitmapSpec>),
    /// Start a block job (one at a time; fds: `JobSpec`'s).
    StartJob(JobSpec),
    /// Act on the running job `id`.
    ControlJob { id: String, control: JobControl },
    /// Answered with `Job`: the running job's progress, if one runs.
    JobStatus,
    /// A migration's switch-over: the persistent bitmaps are stored and the image left
    /// clean, and from then on nothing is written to it (the destination owns it), not
    /// even at close.
    Inactivate,
    /// The other way (the VM arrived here, or its migration failed and it stays): the
    /// node serves its images for real again, in place, without a new daemon. Carries
    /// the node's configuration as `Open` would for a daemon started now (`inactive`
    /// false, the bitmaps and job to carry on) and its fds from the images on (no
    /// listener, no counters). The chain is opened afresh (the other side wrote it);
    /// answered with `Opened`, and refused unless the node is inactive.
    Activate(Box<BlockOpen>),
    /// A block migration's source: from now on the chunks writes reach are marked for
    /// the migration (beside the disk's dirty bitmaps, and shown nowhere), and the fd,
    /// a disk channel's end (`crate::disk_channel`), is served on a thread of its own:
    /// the disk read as the guest sees it, what the top image holds, the marks taken.
    /// Marking stops when the channel closes. Answered once marking is on.
    MigrationSource,
    /// A block migration's destination: the fd, a disk channel's end, is served on a
    /// thread of its own, its writes and zeroes going through the image's format.
    /// Refused while the node is inactive or read-only.
    MigrationSink,
    /// A postcopy migration comes in: the frame carries /dev/userfaultfd, with which the
    /// daemon's vhost-user backend opens its userfaultfd when vmm-core sends
    /// POSTCOPY_ADVISE (the sandbox lets it make none otherwise). Kept until
    /// POSTCOPY_END.
    Userfault,
    /// The disk's drive was deleted (HMP drive_del) while its device stays: its images
    /// are left clean (bitmaps stored) and closed, and from then on it has no medium
    /// (`ImageFormat::NoMedium` of its size): every request fails, reported to the guest
    /// whatever the error actions (QEMU: further I/O must not pause the guest).
    RemoveMedium,
    /// Stop serving and exit.
    Quit,
}

/// A dirty bitmap as a daemon maps it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmapSpec {
    /// Its name on the node (QMP's `name`).
    pub name: String,
    /// Disk bytes it covers.
    pub size: u64,
    /// Disk bytes per bit.
    pub granularity: u64,
    /// Writes mark it (a disabled bitmap is sent only to be stored).
    pub recording: bool,
    /// Stored in the qcow2 image at a clean close (see `StoredBitmaps`).
    pub persistent: bool,
    /// Loaded marked in use: its bits may be stale (QEMU's `inconsistent`). Kept as
    /// it is, never marked into or used, until removed.
    pub inconsistent: bool,
}

impl Message for BlockRequest {
    fn fd_count(&self) -> usize {
        match self {
            BlockRequest::Open(open) => {
                2 + ImageLayer::images(&open.layers)
                    + open.dirty_bitmaps.len()
                    + open.job.as_ref().map_or(0, JobSpec::fd_count)
            }
            BlockRequest::Activate(open) => {
                ImageLayer::images(&open.layers)
                    + open.dirty_bitmaps.len()
                    + open.job.as_ref().map_or(0, JobSpec::fd_count)
            }
            BlockRequest::SetThrottle(Some(_)) => 1,
            BlockRequest::PushTop(_) => 1,
            BlockRequest::SetDirtyBitmaps(set) => set.len(),
            BlockRequest::StartJob(spec) => spec.fd_count(),
            BlockRequest::MigrationSource | BlockRequest::MigrationSink => 1,
            BlockRequest::Userfault => 1,
            _ => 0,
        }
    }
}

/// Counters of one kind of operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OpCounters {
    pub operations: u64,
    pub bytes: u64,
    pub failed: u64,
    /// Refused before reaching the image (malformed, out of range).
    pub invalid: u64,
    pub total_time_ns: u64,
}

/// Latencies of one kind of operation over one window.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub struct Latency {
    pub min_ns: u64,
    pub max_ns: u64,
    pub avg_ns: u64,
    /// Mean number of these operations in flight over the window.
    pub avg_queue_depth: f64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub struct TimedStats {
    pub interval_length: u32,
    pub read: Latency,
    pub write: Latency,
    pub flush: Latency,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct BlockStats {
    pub size: u64,
    pub read: OpCounters,
    pub write: OpCounters,
    pub flush: OpCounters,
    pub unmap: OpCounters,
    /// The offset after the greatest byte written.
    pub wr_highest_offset: u64,
    /// Since the last completed operation; None before the first.
    pub idle_time_ns: Option<u64>,
    pub timed: Vec<TimedStats>,
    /// Discards that reached the image file (the file node's driver-specific counters).
    pub discard_ok: u64,
    pub discard_bytes_ok: u64,
    pub discard_failed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum BlockReply {
    Done,
    /// The image's size in bytes, and the persistent bitmaps it stores when the open
    /// said `StoredBitmaps::Load` (their memfds follow, in order).
    Opened {
        size: u64,
        loaded_bitmaps: Vec<DirtyBitmapSpec>,
    },
    Stats(Box<BlockStats>),
    Snapshot(SnapshotRecord),
    Job(Option<JobStatus>),
}

/// An internal snapshot as QMP's SnapshotInfo shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: String,
    pub name: String,
    pub vm_state_size: u64,
    pub date_sec: u64,
    pub date_nsec: u64,
    pub vm_clock_nsec: u64,
    pub icount: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum BlockEvent {
    /// A write ended `amount_exceeded` bytes past `threshold`; the threshold is now off.
    WriteThreshold {
        node_name: String,
        amount_exceeded: u64,
        threshold: u64,
    },
    /// The image failed a request with `errno`, and the node did `action` about it (with
    /// `Stop` the request is held until `Resume`).
    IoError {
        operation: IoOperation,
        action: ErrorAction,
        errno: i32,
    },
    /// On a frontend's reconnection, queue `queue`'s inflight region listed `requests`
    /// requests a previous daemon had taken and not completed: they are started again.
    InflightResumed {
        queue: u32,
        requests: u32,
    },
    Job(JobEvent),
}

pub type ToBlock = Call<BlockRequest>;
impl Message for BlockReply {
    fn fd_count(&self) -> usize {
        match self {
            BlockReply::Opened { loaded_bitmaps, .. } => loaded_bitmaps.len(),
            _ => 0,
        }
    }
}

pub type FromBlock = Upcall<BlockReply, BlockEvent>;

#[cfg(test)]
mod tests {
    use super::super::node::{ImageFormat, Qcow2Options};
    use super::*;

    #[test]
    fn requests_declare_their_fds() {
        let open = BlockRequest::Open(BlockOpen {
            node_name: "n".into(),
            serial: "s".into(),
            read_only: false,
            cache: CacheFlags::default(),
            discard_unmap: false,
            detect_zeroes: DetectZeroes::Off,
            queues: 1,
            stats_intervals: vec![],
            on_read_error: OnError::Report,
            on_write_error: OnError::Enospc,
            layers: vec![
                ImageLayer {
                    node_name: "top".into(),
                    format: ImageFormat::Qcow2(Qcow2Options::default()),
                    filename: "/top.qcow2".into(),
                },
                ImageLayer {
                    node_name: "base".into(),
                    format: ImageFormat::Raw,
                    filename: "/base.raw".into(),
                },
            ],
            dirty_bitmaps: vec![DirtyBitmapSpec {
                name: "b".into(),
                size: 1 << 20,
                granularity: 65536,
                recording: true,
                persistent: false,
                inconsistent: false,
            }],
            stored_bitmaps: StoredBitmaps::NotKept,
            job: None,
            inactive: false,
        });
        assert_eq!(
            ToBlock {
                id: 1,
                request: open
            }
            .fd_count(),
            5
        );
        let limits = ThrottleLimits::default();
        assert_eq!(BlockRequest::SetThrottle(Some(limits)).fd_count(), 1);
        assert_eq!(BlockRequest::SetThrottle(None).fd_count(), 0);
        assert_eq!(BlockRequest::Stats.fd_count(), 0);
        assert_eq!(BlockRequest::Resume.fd_count(), 0);
        let spec = |name: &str| DirtyBitmapSpec {
            name: name.into(),
            size: 4096,
            granularity: 512,
            recording: true,
            persistent: false,
            inconsistent: false,
        };
        let set = BlockRequest::SetDirtyBitmaps(vec![spec("a"), spec("b")]);
        assert_eq!(set.fd_count(), 2);
    }
}
