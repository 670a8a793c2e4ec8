//! vmm-core's sandbox: the jail, and the system calls it may make beyond the base set
//! every process has (sandbox::seccomp::BASE), each with its reason. /dev/kvm, the boot
//! files and the device sockets arrive as fds; it has no network.

use sandbox::jail::Limits;
use sandbox::seccomp::Allow::{self, Any, IoctlType, Ioctls};
use sandbox::seccomp::TCGETS;

const ALLOWED: &[Allow] = &[
    // KVM itself (any request of type KVMIO: the VM, vCPUs, memory slots, irqfds,
    // ioeventfds); the logger's terminal check. No other ioctl: no terminal, network or
    // block-device requests.
    IoctlType(0xae),
    Ioctls(&[TCGETS]),
    // Guest RAM is a sealed memfd shared with the daemons.
    Any(libc::SYS_memfd_create),
    Any(libc::SYS_ftruncate),
    // A reset gives guest RAM back to the host (punching a hole in the memfd).
    Any(libc::SYS_fallocate),
    // Boot files are read by offset.
    Any(libc::SYS_pread64),
    // The console socket accepts one client at a time.
    Any(libc::SYS_accept4),
    // Kicking a vCPU out of KVM_RUN (a signal to its thread).
    Any(libc::SYS_rt_sigtimedwait),
    Any(libc::SYS_timerfd_create),
    Any(libc::SYS_timerfd_settime),
];

pub fn enter(mode: sandbox::Mode) -> Result<(), sandbox::SandboxError> {
    sandbox::enter(
        mode,
        "vmm-core",
        Limits {
            open_files: 4096,
            processes: 256,
        },
        &[ALLOWED],
    )
}
