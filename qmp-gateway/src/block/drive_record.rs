//! A drive HMP drive_add made (QEMU's DriveInfo of an if=none drive): what the block
//! layer keeps of it (drives.rs holds what is done with it), and how many there may be.

use ipc::ThrottleLimits;

use super::drive::DriveSpec;

/// The most drive_add drives there may be at once (attached ones included): each holds
/// its images' fds (also charged to the client's fd budget) and a record.
pub const MAX_DRIVES: usize = 64;

/// One drive_add drive.
pub struct NamedDrive {
    pub id: String,
    /// Its unit among the if=none drives (QEMU's DriveInfo unit).
    pub unit: u32,
    /// The root of its node tree; None: no medium.
    pub root: Option<String>,
    /// What was given (serial, error actions: the disk it is attached to takes them).
    pub spec: DriveSpec,
    /// A disk (the layer knows it by the drive's id) uses it.
    pub attached: bool,
    /// Its BlockBackend's place among them (`Disk::born`).
    pub born: u64,
    /// Its I/O limits and throttle group (block_set_io_throttle): a device that comes
    /// applies them, as QEMU's BlockBackend keeps them (unattached drives only).
    pub throttle: Option<(ThrottleLimits, String)>,
}
