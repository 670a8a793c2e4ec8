//! sandbox: what a device process (vmm-core, block-daemon, net-daemon) does to itself when
//! the gateway starts it sandboxed. The gateway has already put it in its own mount, PID,
//! IPC, UTS and network namespaces (see qmp-gateway's sandbox.rs); here the process gives
//! up the rest: an empty read-only root instead of the host's files, rlimits within what
//! it inherited (`limits.rs`: a hard limit below its needs is an error that says so), every
//! capability, new privileges, and (Landlock) any file or TCP access and signals or
//! abstract sockets beyond its own domain; then each of its threads installs the seccomp
//! allowlist of its kind, and a violation is reported before the process dies.

pub mod jail;
pub mod limits;
pub mod mode;
#[cfg(feature = "probe")]
pub mod probe;
pub mod seccomp;
pub mod syscalls;

pub use mode::Mode;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Limits(#[from] limits::LimitError),
}

/// Everything, in order, for a process the gateway started with `--sandbox MODE`: the
/// jail, then the process-wide seccomp allowlist (BASE, threads, and `allowed`). Call it
/// on the main thread before any other thread starts. Without a sandbox only the check
/// that the process may hold the files it needs is made.
pub fn enter(
    mode: Mode,
    process: &str,
    limits: limits::Limits,
    allowed: &[&[seccomp::Allow]],
) -> Result<(), SandboxError> {
    #[cfg(feature = "probe")]
    probe::prepare(process);
    if mode == Mode::Off {
        limits::ensure_open_files(process, limits.open_files_needed, "")?;
        // The probe's control run: without a sandbox each action must succeed.
        #[cfg(feature = "probe")]
        probe::from_env(process);
        return Ok(());
    }
    keep_thread_heaps();
    limit_heap_arenas();
    let applied = jail::lockdown(process, limits)?;
    if !applied.landlock_full {
        log::warn!("{process}: this kernel enforces Landlock only partly");
    }
    let mut lists: Vec<&[seccomp::Allow]> = vec![seccomp::THREADS];
    lists.extend_from_slice(allowed);
    seccomp::install(mode, process, &lists)?;
    #[cfg(feature = "probe")]
    probe::from_env(process);
    Ok(())
}

/// glibc reads /proc/sys/vm/overcommit_memory the first time it gives part of a thread's
/// heap back (shrink_heap), and no process here may open a file once sandboxed: a
/// backup's compression freeing its buffers on the job's thread killed the block
/// daemon. Heaps are no longer trimmed (a heap at most 64 MiB is kept, or unmapped
/// whole); the threshold fixed, large buffers are mapped and unmapped on their own.
fn keep_thread_heaps() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt changes allocator settings only; called before any other
        // thread runs.
        let set = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20) };
        if set != 1 {
            log::warn!("setting the heap trim threshold failed");
        }
    }
}

/// glibc gives each thread that allocates a heap arena of its own until there are 8;
/// for the next it counts the CPUs, reading /sys/devices/system/cpu/online, which no
/// sandboxed process may open (the ninth compress worker to allocate killed the
/// migration agent; a block daemon with many queues and a job could get there too).
/// With the limit set beforehand (glibc's own default: 8 per CPU) it never counts them.
fn limit_heap_arenas() {
    #[cfg(target_env = "gnu")]
    {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt changes allocator settings only; called before any other
        // thread runs.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
            log::warn!("setting the heap arena limit failed");
        }
    }
}
