//! net-daemon's sandbox: the jail, and the system calls it may make beyond the base set
//! every process has (sandbox::seccomp::BASE), each with its reason. Its host side (tap
//! queues or a UDP socket) and its vhost-user listener arrive as fds; it creates no
//! socket and no file.

use sandbox::limits::Limits;
use sandbox::seccomp::Allow::{self, Any, Ioctls};
use sandbox::seccomp::TCGETS;

const ALLOWED: &[Allow] = &[
    // The vhost-user listener: the frontend's (re)connections.
    Any(libc::SYS_accept4),
    // Tap offloads and vnet header size (TUNSETOFFLOAD, TUNSETVNETHDRSZ); the logger's
    // terminal check.
    Ioctls(&[0x4004_54d0, 0x4004_54d8, TCGETS]),
    // Postcopy at a migration's destination: the vhost-user backend makes its
    // userfaultfd through the /dev/userfaultfd fd it is handed and registers guest
    // memory with it (the migration agent reads the faults).
    Ioctls(ipc::userfault::REGISTER_IOCTLS),
];

/// The most queue pairs a NIC may have (the gateway's `queues=` accepts 1 to 16).
const MAX_QUEUE_PAIRS: u64 = 16;

/// Open files a net daemon needs at most: 16 of its own (stdio, its control channel and
/// violation pipe, the listener and the frontend's connection, the guest's memory,
/// epoll, the logger), 5 per queue pair (a tap queue, and the kick and call eventfds of
/// its receive and transmit rings), 2 for the control ring and 3 at a postcopy
/// migration's destination (/dev/userfaultfd, the backend's userfaultfd and, while
/// ADVISE is answered, its copy for the frontend); 50 were counted with 7 pairs under
/// traffic.
const OPEN_FILES_NEEDED: u64 = 16 + 5 * MAX_QUEUE_PAIRS + 2 + 3;

pub fn enter(mode: sandbox::Mode) -> Result<(), sandbox::SandboxError> {
    sandbox::enter(
        mode,
        "net-daemon",
        Limits {
            open_files: 1024,
            open_files_needed: OPEN_FILES_NEEDED,
            processes: 256,
        },
        &[ALLOWED],
    )
}
