//! net-daemon's sandbox: the jail, and the system calls it may make beyond the base set
//! every process has (sandbox::seccomp::BASE), each with its reason. Its host side (tap
//! queues or a UDP socket) and its vhost-user listener arrive as fds; it creates no
//! socket and no file.

use sandbox::jail::Limits;
use sandbox::seccomp::Allow::{self, Any, Ioctls};
use sandbox::seccomp::TCGETS;

const ALLOWED: &[Allow] = &[
    // The vhost-user listener: the frontend's (re)connections.
    Any(libc::SYS_accept4),
    // Tap offloads and vnet header size (TUNSETOFFLOAD, TUNSETVNETHDRSZ); the logger's
    // terminal check.
    Ioctls(&[0x4004_54d0, 0x4004_54d8, TCGETS]),
];

pub fn enter(mode: sandbox::Mode) -> Result<(), sandbox::SandboxError> {
    sandbox::enter(
        mode,
        "net-daemon",
        Limits {
            open_files: 1024,
            processes: 256,
        },
        &[ALLOWED],
    )
}
