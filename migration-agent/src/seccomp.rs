//! migration-agent's sandbox: the jail, and the one system call it makes beyond the base
//! set every process has (sandbox::seccomp::BASE). Its connection (or the listener to
//! accept it on), guest RAM, the dirty log and a block migration's disk channels arrive
//! as fds: it creates no socket, connects nowhere and opens no file.

use sandbox::limits::Limits;
use sandbox::seccomp::Allow::{self, Any, Ioctls};
use sandbox::seccomp::TCGETS;

const ALLOWED: &[Allow] = &[
    // The destination's one connection, on the listener the gateway made.
    Any(libc::SYS_accept4),
    // The send timeout on the connection (SO_RCVTIMEO), so a peer that stops answering
    // fails the migration instead of holding it; the same on the disk channels, for a
    // block daemon that stops answering.
    Any(libc::SYS_setsockopt),
    // The logger's terminal check.
    Ioctls(&[TCGETS]),
    // Postcopy, destination: discarded pages punched out of guest RAM's memfd, the
    // processes' userfaultfds waited on, their faults resolved (pages placed, waiters
    // woken); the userfaultfds come made and registered from their owners.
    Any(libc::SYS_fallocate),
    Any(libc::SYS_poll),
    Any(libc::SYS_ppoll),
    Ioctls(ipc::userfault::RESOLVE_IOCTLS),
];

/// Open files the agent needs: stdio, its control channel and violation pipe, guest
/// RAM, the dirty log, the connection and its listener, the logger: 16 leaves room; and
/// a block migration's disk channels, one per disk (`crate::disks`), at most one per
/// PCI slot.
const OPEN_FILES_NEEDED: u64 = 16 + 32;

/// Threads (RLIMIT_NPROC counts them): the agent's own, and the compress or decompress
/// workers a migration asks for (compress-threads, decompress-threads: up to 255).
const THREADS_NEEDED: u64 = 64 + u8::MAX as u64;

pub fn enter(mode: sandbox::Mode) -> Result<(), sandbox::SandboxError> {
    sandbox::enter(
        mode,
        "migration-agent",
        Limits {
            open_files: 64,
            open_files_needed: OPEN_FILES_NEEDED,
            processes: THREADS_NEEDED,
        },
        &[ALLOWED],
    )
}
