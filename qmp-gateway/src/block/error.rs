//! What can go wrong in the block layer. The texts are QEMU's where QEMU has one (clients
//! and the tests compare them); qmp/errors.rs gives each its QMP class.

use ipc::errno_text;

use super::lock::LockError;
use super::throttle::ThrottleError;
use crate::children::daemon::DaemonError;
use crate::children::link::LinkError;
use crate::sockets::SocketError;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("Need exactly one of 'device' and 'id'")]
    NeedDeviceOrId,
    /// No disk by that name (QMP's DeviceNotFound).
    #[error("Device '{0}' not found")]
    DeviceNotFound(String),
    #[error("Cannot find device='{device}' nor node-name='{node}'")]
    NoDeviceNorNode { device: String, node: String },
    /// A BlockBackend without a medium, named where a node is looked up (QEMU's
    /// bdrv_lookup_bs).
    #[error("Device '{0}' has no medium")]
    NoMedium(String),
    /// block_set_io_throttle's words for a BlockBackend without a medium (QEMU 7.2 names
    /// none).
    #[error("Device has no medium")]
    NoMediumToThrottle,
    /// An "id" naming a device that has no BlockBackend (QEMU's blk_by_qdev_id).
    #[error("Device does not have a block device backend")]
    NoBlockBackend,
    /// block-set-write-threshold's word for a node it does not know.
    #[error("Device '{0}' not found")]
    NoThresholdNode(String),
    #[error("Node '{0}' not found")]
    NodeNotFound(String),
    /// blockdev-insert-medium of a node a BlockBackend has (QEMU's bdrv_has_blk).
    #[error("Node '{0}' is already in use")]
    NodeHasBackend(String),
    #[error("Failed to find node with node-name='{0}'")]
    NoNodeToDelete(String),

    /// device_add's drive=, as QEMU's drive property takes it.
    #[error("Property 'virtio-blk-device.drive' can't find value '{0}'")]
    DriveNotFound(String),
    #[error("Drive '{0}' is already in use by another device")]
    DriveInUse(String),
    #[error("Device needs media, but drive is empty")]
    DriveEmpty,
    /// Two writers of one node (QEMU's permission check, for 'write').
    #[error(
        "Permission conflict on node '{node}': permissions 'write' are both required by \
         {required} (uses node '{node}' as '{required_role}' child) and unshared by \
         {unshared} (uses node '{node}' as '{unshared_role}' child)."
    )]
    PermissionConflict {
        node: String,
        required: String,
        required_role: &'static str,
        unshared: String,
        unshared_role: &'static str,
    },

    #[error("'node-name' must be specified for the root node")]
    RootNeedsName,
    #[error("Duplicate nodes with node-name='{0}'")]
    DuplicateNode(String),
    #[error("node-name={0} is conflicting with a device id")]
    NameIsDeviceId(String),
    #[error("Invalid node-name: '{0}'")]
    InvalidNodeName(String),
    #[error("Node name too long")]
    NodeNameTooLong,
    #[error(
        "setting detect-zeroes to unmap is not allowed without setting discard operation to \
         unmap"
    )]
    DetectZeroesUnmap,
    #[error("Conflicts with use by {parent} as '{role}', which does not allow 'write' on {child}")]
    ChildTaken {
        parent: String,
        role: &'static str,
        child: String,
    },
    #[error("Block node is read-only")]
    NodeReadOnly,
    #[error("Node {0} is not owned by the monitor")]
    NotMonitorOwned(String),
    #[error("Block device {0} is in use")]
    InUse(String),
    /// blockdev-del of a node some node uses as its backing file (the newest user).
    #[error("Node '{node}' is busy: node is used as backing hd of '{parent}'")]
    BackingBusy { node: String, parent: String },

    /// What an image's header or snapshot table says is wrong or unsupported (the
    /// qcow2 library's text, QEMU's where QEMU has one).
    #[error("{0}")]
    Image(String),
    /// Snapshots and transactions (block/snapshot.rs), in QEMU's words.
    #[error("{0}")]
    Snapshot(String),
    #[error("{0}")]
    Qcow2Option(&'static str),
    /// Opening a node's backing file failed (QEMU's prefix; nests down the chain).
    #[error("Could not open backing file: {0}")]
    Backing(Box<BlockError>),
    #[error("{0}")]
    BackingName(String),
    #[error("Cannot use relative backing file names for '{0}'")]
    BackingRelative(String),
    /// QEMU itself recurses until it runs out of memory; these are qemu-img's words.
    #[error("Backing file '{0}' creates an infinite loop.")]
    BackingLoop(String),
    /// `overlay`: the image whose backing file would go past the limit.
    #[error("the backing chain is deeper than {max} images at '{overlay}'")]
    BackingTooDeep { overlay: String, max: usize },
    /// A backing file format Flotilla does not serve.
    #[error("Driver '{0}' is not supported: Flotilla serves raw and qcow2 backing files")]
    BackingFormat(String),
    /// A disk's device is attached to the node (QEMU asks this first).
    #[error("Node {0} is in use")]
    Attached(String),
    #[error("no node {0}")]
    NoNode(String),
    #[error("node {0} has no image")]
    NoImage(String),

    #[error("Could not open '{path}': {}", errno_text(error))]
    Open { path: String, error: std::io::Error },
    #[error("Could not stat '{path}': {error}")]
    Stat { path: String, error: std::io::Error },
    #[error("'host_device' driver requires '{0}' to be either a character or block device")]
    NotADevice(String),
    #[error("'file' driver requires '{0}' to be a regular file")]
    NotAFile(String),
    #[error("'{0}' is a directory")]
    IsADirectory(String),
    /// An image blockdev-add would open is past the client's share of the fd budget.
    #[error(transparent)]
    FdBudget(#[from] crate::fdstore::FdError),
    #[error("Could not dup FD for {path} flags {flags}: {}", errno_text(error))]
    FdSet {
        path: String,
        flags: i32,
        error: std::io::Error,
    },

    #[error("Parameter 'size' expects a >0 size")]
    NegativeSize,
    /// block_resize of a disk a job holds (QEMU names the device argument).
    #[error("Device '{0}' is in use")]
    DeviceInUse(String),
    /// Beyond what QEMU's block layer addresses (BDRV_MAX_LENGTH).
    #[error("offset({offset}) exceeds maximum({max})")]
    SizeTooLarge { offset: i64, max: i64 },
    #[error("Image is read-only")]
    ImageReadOnly,
    #[error("{0}")]
    DupImage(std::io::Error),
    #[error("block_resize of qcow2 node {0}: only a qcow2 node a disk uses can be resized")]
    ResizeUnserved(String),
    /// block_resize of an image's file under a qcow2 node, which shares no resize.
    #[error(
        "Permission conflict on node '{node}': permissions 'resize' are both required by an \
         unnamed block device (uses node '{node}' as 'root' child) and unshared by node \
         '{parent}' (uses node '{node}' as 'file' child)."
    )]
    ResizeUnshared { node: String, parent: String },
    #[error("Cannot grow device files")]
    CannotGrowDevice,
    #[error("Could not resize file: {}", errno_text(.0))]
    Resize(std::io::Error),
    #[error("Parameter 'write-threshold' expects uint64")]
    ThresholdOutOfRange,
    /// Another user of the image (QEMU, another drive) holds a lock ours conflicts
    /// with; the hint is QEMU's.
    #[error("{error}\nIs another process using the image [{path}]?")]
    Locked { error: LockError, path: String },
    /// A migration's switch-over could not hand a disk over.
    #[error("{0}")]
    Migration(String),
    /// A lock a resize needs.
    #[error("{0}")]
    ResizeLock(LockError),
    #[error(transparent)]
    Throttle(#[from] ThrottleError),
    #[error(transparent)]
    Bitmap(#[from] BitmapError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("throttle group state: {0}")]
    ThrottleGroup(std::io::Error),
    #[error(transparent)]
    Counters(ipc::block_counters::CountersError),

    #[error("Device '{0}' is not removable")]
    NotRemovable(String),
    /// blockdev-insert-medium's words for it (QEMU 7.2 names no device there).
    #[error("Device is not removable")]
    NotRemovableToInsert,
    #[error("Device '{0}' is not encrypted")]
    NotEncrypted(String),

    #[error("the block daemon of disk {0} is not running (I/O waits for it)")]
    DaemonNotRunning(String),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Socket(#[from] SocketError),

    /// HMP drive_add and drive_del (drives.rs), in QEMU's words where it has them.
    #[error("Duplicate ID '{0}' for drive")]
    DuplicateDriveId(String),
    #[error(
        "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', \
         '.', '_', starting with a letter."
    )]
    DriveIdMalformed,
    #[error("Device with id '{0}' already exists")]
    BackendExists(String),
    #[error("Device name '{0}' conflicts with an existing node name")]
    DriveNameIsNode(String),
    #[error("A block device must be specified for \"file\"")]
    NoFileForFormat,
    #[error("Must specify either driver or file")]
    NoDriverNorFile,
    #[error("format=raw or format=qcow2 is required (image formats are never guessed)")]
    FormatNotGiven,
    /// blockdev-change-medium's format, which QEMU opens as a driver.
    #[error("Unknown driver '{0}'")]
    UnknownDriver(String),
    #[error("Block format '{format}' does not support the option '{key}'")]
    UnsupportedOption { format: &'static str, key: String },
    #[error("Too many drives: at most {0} made by drive_add may exist")]
    TooManyDrives(usize),

    /// `--drive` errors, for the command line.
    #[error("drive id {0} is used twice")]
    DriveIdTaken(String),
    #[error("drive {id}: {error}")]
    Drive { id: String, error: Box<BlockError> },
}

/// Dirty bitmaps (block/bitmaps.rs), in QEMU's words where QEMU has them.
#[derive(Debug, thiserror::Error)]
pub enum BitmapError {
    #[error("Bitmap name cannot be empty")]
    EmptyName,
    #[error("Bitmap name too long: {0}")]
    NameTooLong(String),
    #[error("Granularity must be power of 2 and at least 512")]
    Granularity,
    #[error("Bitmap already exists: {0}")]
    Exists(String),
    #[error("Can't store persistent bitmaps to {0}: Operation not supported")]
    PersistentUnsupported(String),
    #[error("Node '{0}' not found")]
    NodeNotFound(String),
    #[error("Dirty bitmap '{0}' not found")]
    NotFound(String),
    #[error("Bitmap '{0}' is currently in use by another operation and cannot be used")]
    Busy(String),
    // Ours: where we do not (yet) do what QEMU does.
    #[error("a disk uses node '{0}' beside its chain's images: dirty bitmaps are kept on a disk's image nodes or on nodes no disk uses")]
    Unserved(String),
    #[error("persistent dirty bitmaps are stored in the writable top image of a disk only ('{0}' is not one)")]
    PersistentNotTop(String),
    #[error("Can't make bitmap '{name}' persistent in '{node}': {why}")]
    CannotPersist {
        name: String,
        node: String,
        why: &'static str,
    },
    #[error("Bitmaps are of different sizes (destination size is {dest}, source size is {src}) and can't be merged")]
    DifferentSizes { dest: u64, src: u64 },
    #[error("Bitmap '{0}' is inconsistent and cannot be used")]
    Inconsistent(String),
    #[error("disk {disk} has {max} dirty bitmaps, as many as a disk may have")]
    TooMany { disk: String, max: usize },
    #[error("dirty bitmaps would take {need} bytes of memory: at most {max} in all")]
    OutOfMemory { need: u64, max: u64 },
    #[error(transparent)]
    Memory(#[from] ipc::dirty_bitmap::BitmapError),
    #[error("dirty bitmap memory: {0}")]
    Dup(std::io::Error),
}

/// Block jobs (block/jobs.rs), in QEMU's words where QEMU has them.
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
    /// The job-* commands' (QEMU's generic job layer) for any job.
    #[error("Job not found")]
    JobNotFound,
    #[error("Job '{id}' in state '{state}' cannot accept command verb '{verb}'")]
    Verb {
        id: String,
        state: &'static str,
        verb: &'static str,
    },
    #[error("Parameter 'speed' expects a non-negative value")]
    Speed,
    #[error("Parameter 'granularity' expects a power of 2")]
    Granularity,
    #[error("Parameter 'granularity' expects a value in range [512B, 64MB]")]
    GranularityRange,
    #[error("Invalid parameter 'buf-size'")]
    BufSize,
    #[error("Unknown file format '{0}'")]
    UnknownFormat(String),
    /// A mirror of a disk that has a job already.
    #[error("Need a root block node")]
    NotRoot,
    #[error("Job is already paused")]
    AlreadyPaused,
    #[error("Can't resume a job that was not paused")]
    NotPaused,
    #[error("The block job for device '{0}' is currently paused")]
    CancelPaused(String),
    #[error("must provide a valid bitmap name for 'incremental' sync mode")]
    IncrementalNeedsBitmap,
    #[error("Bitmap '{0}' could not be found")]
    NoBitmap(String),
    #[error("Bitmap sync mode must be given when providing a bitmap")]
    BitmapWithoutMode,
    #[error("Sync mode '{0}' not supported")]
    SyncUnsupported(&'static str),
    #[error("Can't mirror node into itself")]
    IntoItself,
    #[error("Source and target cannot be the same")]
    BackupIntoItself,
    #[error("Source and target image have different sizes")]
    BackupSizes,
    /// A backup into a read-only node: QEMU's copy-before-write filter cannot write it.
    #[error("Could not create node: Block node is read-only")]
    BackupTargetReadOnly,
    /// A mirror's target a disk uses: QEMU's permission check names the disk
    /// (`user`) and the mirror's own BlockBackend on the target.
    #[error(
        "Permission conflict on node '{node}': permissions '{perms}' are both required by \
         {user} (uses node '{node}' as 'root' child) and unshared by an unnamed block device \
         (uses node '{node}' as 'root' child)."
    )]
    MirrorTargetInUse {
        node: String,
        perms: &'static str,
        user: String,
    },
    /// A backup's target a disk uses: QEMU's copy-before-write filter (`filter`, a node
    /// of an automatic name) cannot take it.
    #[error(
        "Could not create node: Permission conflict on node '{node}': permissions 'write' \
         are both required by node '{filter}' (uses node '{node}' as 'target' child) and \
         unshared by {user} (uses node '{node}' as 'root' child)."
    )]
    BackupTargetInUse {
        node: String,
        filter: String,
        user: String,
    },
    #[error("Could not create '{path}': {why}")]
    Create { path: String, why: String },
    #[error("a node-name must be provided when replacing a named node of the graph")]
    ReplacesWithoutNodeName,
    #[error("Failed to find node with node-name='{0}'")]
    NoReplaceNode(String),
    #[error("Cannot replace '{node}' by a node mirrored from '{from}', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data")]
    CannotReplace { node: String, from: String },
    // QEMU names the target's device here, which a job's target node has not.
    #[error("Compression is not supported for this drive ")]
    NoCompression,
    #[error("Backing file not supported for file format '{0}'")]
    NoBackingFiles(String),
    #[error("'base' and 'base-node' cannot be specified at the same time")]
    BaseTwice,
    #[error("'base-node' and 'base' are mutually exclusive")]
    BaseNodeTwice,
    #[error("'top-node' and 'top' are mutually exclusive")]
    TopTwice,
    #[error("Node '{base}' is not a backing image of '{top}'")]
    NotBackingOf { base: String, top: String },
    #[error("Can't find '{0}' in the backing chain")]
    NoBase(String),
    #[error("Top image file {0} not found")]
    NoTop(String),
    #[error("'{0}' is not in this backing file chain")]
    NotInChain(String),
    #[error("backing file specified, but streaming the entire chain")]
    BackingFileWholeChain,
    #[error("'backing-file' specified, but 'top' is the active layer")]
    BackingFileActive,
    #[error("cannot commit an image into itself")]
    CommitIntoItself,
    #[error(transparent)]
    Bitmap(#[from] ipc::dirty_bitmap::BitmapError),
}
