//! block-daemon's sandbox: the jail, and the system calls it may make beyond the base set
//! every process has (sandbox::seccomp::BASE), each with its reason. It opens nothing
//! (the image and the listener arrive as fds) and has no network.

use sandbox::limits::Limits;
use sandbox::seccomp::Allow::{self, Any, Ioctls};
use sandbox::seccomp::TCGETS;

const ALLOWED: &[Allow] = &[
    // The vhost-user listener: the frontend's (re)connections.
    Any(libc::SYS_accept4),
    // Guest memory arrives as the VM's memfd; the inflight region is a memfd of ours.
    Any(libc::SYS_memfd_create),
    Any(libc::SYS_ftruncate),
    // Image I/O: the sync engine and the io_uring engine.
    Any(libc::SYS_pread64),
    Any(libc::SYS_pwrite64),
    Any(libc::SYS_preadv),
    Any(libc::SYS_pwritev),
    Any(libc::SYS_preadv2),
    Any(libc::SYS_pwritev2),
    Any(libc::SYS_fsync),
    Any(libc::SYS_fdatasync),
    Any(libc::SYS_fallocate),
    // A block job copies between raw files in the kernel (jobs::kernel_copy), and
    // starts its raw target's writeback as it goes.
    Any(libc::SYS_copy_file_range),
    Any(libc::SYS_sync_file_range),
    Any(libc::SYS_io_uring_setup),
    Any(libc::SYS_io_uring_enter),
    Any(libc::SYS_io_uring_register),
    // Block devices: size, discard, write-zeroes, logical block size (BLKGETSIZE64,
    // BLKDISCARD, BLKZEROOUT, BLKSSZGET); the logger's terminal check.
    Ioctls(&[0x8008_1272, 0x1277, 0x127f, 0x1268, TCGETS]),
    // Postcopy at a migration's destination: the vhost-user backend makes its
    // userfaultfd through the /dev/userfaultfd fd it is handed and registers guest
    // memory with it (the migration agent reads the faults).
    Ioctls(ipc::userfault::REGISTER_IOCTLS),
    // The throttle timer.
    Any(libc::SYS_timerfd_create),
    Any(libc::SYS_timerfd_settime),
    // The throttle group's shared state page.
    Any(libc::SYS_msync),
    // A block job's thread lowers its own priority (raising it needs a capability the
    // daemon does not have).
    Any(libc::SYS_setpriority),
];

/// The most queues a disk may have (the gateway's `queues=` accepts 1 to 16).
const MAX_QUEUES: u64 = 16;

/// Open files a block daemon needs at most: 23 of its own (stdio, its control channel and
/// violation pipe, the listener and the frontend's connection, the inflight region, the
/// guest's memory, epoll, the throttle timer, the logger, a throttle group page's or a
/// dirty bitmap's memfd while it is mapped: the mapping is kept, the fd is not), one per image
/// of the deepest chain it serves (`paths::MAX_DEPTH`; the gateway refuses deeper), 1
/// for the early links of its top image (a writable O_DIRECT qcow2 image has an io_uring
/// of its own: `formats::qcow2::early_link`; only the top is writable, and an external
/// snapshot, which would put a second writable image in the chain, is refused with
/// O_DIRECT), and 4 per queue (its kick and call eventfds and its io_uring, which the
/// worker polls for completions itself, and one spare: the ring had a completion
/// eventfd when 80 were counted with 16 queues under I/O), the memfds of a set of
/// dirty bitmaps while they are mapped (they come together, at most 64), a block
/// job's (`JOB_FILES`), a block migration's (`MIGRATION_FILES`) and a postcopy
/// migration's (`POSTCOPY_FILES`).
const OPEN_FILES_NEEDED: u64 = 23
    + crate::paths::MAX_DEPTH as u64
    + EARLY_LINK_RINGS
    + 4 * MAX_QUEUES
    + ipc::dirty_bitmap::MAX_BITMAPS_PER_DISK as u64
    + JOB_FILES
    + MIGRATION_FILES
    + POSTCOPY_FILES;

/// At a postcopy migration's destination: /dev/userfaultfd, the backend's userfaultfd
/// and, while ADVISE is answered, its copy for the frontend.
const POSTCOPY_FILES: u64 = 3;

/// A block migration's disk channel (and the second handle kept to end it), and, on a
/// source, the memfds of its marks and of the marks taken (`crate::migration`).
const MIGRATION_FILES: u64 = 4;

/// A block job's target image and its early-link ring (an O_DIRECT qcow2 target), and
/// the memfds of its two bitmaps while they are mapped.
const JOB_FILES: u64 = 4;

/// The early-link rings a daemon holds at most (see `OPEN_FILES_NEEDED`).
const EARLY_LINK_RINGS: u64 = 1;

/// What the daemon allows itself (RLIMIT_NOFILE): what it needs must fit under it, or
/// `sandbox::enter` refuses every start (checked when the daemon is built).
const OPEN_FILES: u64 = 1024;
const _: () = assert!(OPEN_FILES_NEEDED <= OPEN_FILES);

pub fn enter(mode: sandbox::Mode) -> Result<(), sandbox::SandboxError> {
    sandbox::enter(
        mode,
        "block-daemon",
        Limits {
            open_files: OPEN_FILES,
            open_files_needed: OPEN_FILES_NEEDED,
            processes: 256,
        },
        &[ALLOWED],
    )
}
