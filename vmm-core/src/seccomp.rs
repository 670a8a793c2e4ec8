//! vmm-core's sandbox: the jail, and the system calls it may make beyond the base set
//! every process has (sandbox::seccomp::BASE), each with its reason. /dev/kvm, the boot
//! files and the device sockets arrive as fds; it has no network.

use sandbox::limits::{LimitError, Limits};
use sandbox::seccomp::Allow::{self, Any, IoctlType, Ioctls};
use sandbox::seccomp::TCGETS;

const ALLOWED: &[Allow] = &[
    // KVM itself (any request of type KVMIO: the VM, vCPUs, memory slots, irqfds,
    // ioeventfds); the logger's terminal check. No other ioctl: no terminal, network or
    // block-device requests.
    IoctlType(0xae),
    Ioctls(&[TCGETS]),
    // Postcopy at a destination: guest RAM's mapping registered with a userfaultfd made
    // through /dev/userfaultfd (the syscall is not needed, nor the pages placed here).
    Ioctls(ipc::userfault::REGISTER_IOCTLS),
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

/// Open files vmm-core needs for a VM: 16 of its own (stdio, its control channel and
/// violation pipe, KVM and the VM, guest RAM, the boot files, the console, its threads'
/// epoll and event fds), 2 per vCPU, and per virtio device 8 (its vhost-user connection
/// and backend channel, the inflight region, the configuration interrupt) and 4 per
/// queue (the kick and interrupt eventfds and the copies the vhost-user link hands on).
/// Counted: 13 with one vCPU and no device, 84 with two vCPUs and a disk of 16 queues, 79
/// with two vCPUs and a NIC of 7 queue pairs.
pub fn open_files_needed(cpus: usize, device_queues: &[usize]) -> u64 {
    let queues: usize = device_queues.iter().sum();
    (16 + 2 * cpus + 8 * device_queues.len() + 4 * queues) as u64
}

/// Checks that vmm-core may hold the files a VM of `cpus` vCPUs and devices of
/// `device_queues` queues needs; the error says how many and how to get them.
pub fn ensure_open_files(cpus: usize, device_queues: &[usize]) -> Result<(), LimitError> {
    let queues: usize = device_queues.iter().sum();
    sandbox::limits::ensure_open_files(
        "vmm-core",
        open_files_needed(cpus, device_queues),
        &format!(
            " for this VM ({cpus} vCPU{}, {} device{} with {queues} queue{})",
            plural(cpus),
            device_queues.len(),
            plural(device_queues.len()),
            plural(queues)
        ),
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The CPUID probe (`--cpuid-only`) reads KVM's supported CPUID and MSR list on the
/// /dev/kvm it is given, makes a VM with the irqchip and one vCPU that never runs, and
/// reads back the CPUID KVM holds for it: no memory, no file of its own.
const CPUID_ONLY: &[Allow] = &[Ioctls(&[
    0xc008_ae05, // KVM_GET_SUPPORTED_CPUID
    0xc004_ae02, // KVM_GET_MSR_INDEX_LIST
    0xae01,      // KVM_CREATE_VM
    0xae04,      // KVM_GET_VCPU_MMAP_SIZE
    0xae60,      // KVM_CREATE_IRQCHIP
    0xae41,      // KVM_CREATE_VCPU
    0x4008_ae90, // KVM_SET_CPUID2
    0xc008_ae91, // KVM_GET_CPUID2
    0x8090_ae81, // KVM_GET_REGS
    0x8138_ae83, // KVM_GET_SREGS
    0x8400_ae8e, // KVM_GET_LAPIC
    TCGETS,      // the logger's terminal check
])];

pub fn enter_cpuid_only(mode: sandbox::Mode) -> Result<(), sandbox::SandboxError> {
    sandbox::enter(
        mode,
        "vmm-core",
        Limits {
            open_files: 64,
            // stdio, the control channel, the violation pipe, the trace fds, /dev/kvm,
            // the VM and its vCPU.
            open_files_needed: 10,
            processes: 16,
        },
        &[CPUID_ONLY],
    )
}

pub fn enter(mode: sandbox::Mode) -> Result<(), sandbox::SandboxError> {
    sandbox::enter(
        mode,
        "vmm-core",
        Limits {
            open_files: 4096,
            // The smallest VM; `ensure_open_files` checks each VM at launch.
            open_files_needed: open_files_needed(1, &[]),
            processes: 256,
        },
        &[ALLOWED],
    )
}
