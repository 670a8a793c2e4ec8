//! net-daemon's sandbox: the jail, and the system calls it may make beyond the base set
//! every process has (sandbox::seccomp::BASE), each with its reason. Its host side (tap
//! queues or a UDP socket) arrives as fds; it creates only Unix sockets (the relay's).

use sandbox::jail::Limits;
use sandbox::seccomp::Allow::{self, Any, ArgIn, Ioctls};
use sandbox::seccomp::TCGETS;

const ALLOWED: &[Allow] = &[
    // The vhost-user listener, and the relay's private socket pair to the handler
    // (relay.rs): Unix sockets only.
    Any(libc::SYS_accept4),
    ArgIn {
        nr: libc::SYS_socket,
        arg: 0,
        values: &[libc::AF_UNIX as u64],
    },
    Any(libc::SYS_bind),
    Any(libc::SYS_listen),
    Any(libc::SYS_connect),
    // Tap offloads and vnet header size (TUNSETOFFLOAD, TUNSETVNETHDRSZ); the logger's
    // terminal check.
    Ioctls(&[0x4004_54d0, 0x4004_54d8, TCGETS]),
    // Guest memory arrives as the VM's memfd.
    Any(libc::SYS_ftruncate),
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
