//! Seccomp allowlists. A process installs its allowlist once, on its main thread, before
//! it starts the threads that serve (they inherit it); a thread kind that needs less may
//! narrow it further for itself. A call outside the list, in enforce mode, traps: the
//! SIGSYS handler writes the call's number into the violation pipe the gateway gave the
//! process (fd 4), says which call on stderr, and ends the process by SIGSYS. In log mode
//! the kernel allows the call and logs it (the audit log, dmesg).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::mode::Mode;

/// Where the gateway reads violations (see qmp-gateway's sandbox.rs).
pub const VIOLATION_FD: i32 = 4;

static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
/// The process's name for the stderr line (set once, before the filter).
static mut PROCESS: [u8; 32] = [0; 32];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the filter: {0}")]
    Build(String),
    #[error("installing the filter: {0}")]
    Install(String),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// One allowed system call: any arguments, or only these argument patterns.
pub enum Allow {
    Any(i64),
    /// Allowed when argument `arg` equals one of `values`.
    ArgIn {
        nr: i64,
        arg: u8,
        values: &'static [u64],
    },
    /// ioctl(2) with one of these requests (compared as the kernel reads them: 32 bits).
    Ioctls(&'static [u32]),
    /// ioctl(2) with any request of this type (the `_IOC` type byte, e.g. KVMIO).
    IoctlType(u8),
}

/// TCGETS: the logger asks whether stderr is a terminal.
pub const TCGETS: u32 = 0x5401;

/// The system calls every Rust process here makes once it runs: memory, threads,
/// futexes, signals (the handler below included), time, and I/O on descriptors it holds.
pub const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_prctl,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_statx,
    libc::SYS_newfstatat,
];

/// clone(2) flags of a new thread (what std::thread asks for); any other clone, and
/// clone3, are refused so the process cannot fork.
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// Threads only: std uses clone3 when it can and falls back to clone on ENOSYS.
pub const THREADS: &[Allow] = &[Allow::ArgIn {
    nr: libc::SYS_clone,
    arg: 0,
    values: &[THREAD_CLONE_FLAGS],
}];

fn rule(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(arg, len, op, value)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    SeccompRule::new(vec![cond]).map_err(|e| SeccompError::Build(e.to_string()))
}

fn build(mode: Mode, allowed: &[&[Allow]]) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in BASE {
        rules.insert(nr, Vec::new());
    }
    for list in allowed {
        for allow in *list {
            match allow {
                Allow::Any(nr) => {
                    rules.insert(*nr, Vec::new());
                }
                Allow::Ioctls(requests) => {
                    let entry = rules.entry(libc::SYS_ioctl).or_default();
                    for r in *requests {
                        entry.push(rule(
                            1,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            u64::from(*r),
                        )?);
                    }
                }
                Allow::IoctlType(t) => {
                    rules.entry(libc::SYS_ioctl).or_default().push(rule(
                        1,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::MaskedEq(0xff00),
                        u64::from(*t) << 8,
                    )?);
                }
                Allow::ArgIn { nr, arg, values } => {
                    let entry = rules.entry(*nr).or_default();
                    for v in *values {
                        entry.push(rule(*arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, *v)?);
                    }
                }
            }
        }
    }
    // clone3 gets ENOSYS rather than a violation: std then falls back to clone, which
    // the rule above checks.
    let mismatch = match mode {
        Mode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| SeccompError::Build(e.to_string()))?;
    let mut program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(e.to_string()))?;
    prepend_clone3_enosys(&mut program);
    Ok(program)
}

/// Puts `if nr == clone3 return ERRNO(ENOSYS)` in front of the program (after its
/// architecture check, which seccompiler emits first: three instructions).
fn prepend_clone3_enosys(program: &mut BpfProgram) {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let insns = [
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_clone3 as u32,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
    ];
    let at = 3.min(program.len());
    for (i, insn) in insns.into_iter().enumerate() {
        program.insert(at + i, insn);
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // siginfo_t for SIGSYS: si_call_addr at byte 16, si_syscall (int) at byte 24.
    // SAFETY: the kernel hands a valid siginfo_t; only async-signal-safe calls follow.
    unsafe {
        let nr = i64::from(*(info as *const u8).add(24).cast::<i32>());
        let fd = REPORT_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            let bytes = nr.to_le_bytes();
            libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        }
        let mut line = [0u8; 160];
        let mut at = 0;
        let mut put = |s: &[u8]| {
            for &b in s {
                if b != 0 && at < line.len() {
                    line[at] = b;
                    at += 1;
                }
            }
        };
        #[allow(static_mut_refs)]
        put(&PROCESS);
        put(b": sandbox violation: system call ");
        put(crate::syscalls::name(nr).unwrap_or("?").as_bytes());
        put(b" (");
        let mut digits = [0u8; 20];
        let mut n = nr.unsigned_abs();
        let mut d = digits.len();
        loop {
            d -= 1;
            digits[d] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        put(&digits[d..]);
        put(b") is not allowed\n");
        libc::write(2, line.as_ptr().cast(), at);
        // Die of SIGSYS, as the kernel's own kill would.
        libc::signal(libc::SIGSYS, libc::SIG_DFL);
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGSYS,
        );
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// Installs `allowed` (plus BASE) on the calling thread; threads it starts later inherit
/// it. `process` names the process in the violation line.
pub fn install(mode: Mode, process: &str, allowed: &[&[Allow]]) -> Result<(), SeccompError> {
    if mode == Mode::Off {
        return Ok(());
    }
    let program = build(mode, allowed)?;
    // SAFETY: writing the name once, before the handler can run (it is installed below).
    unsafe {
        #[allow(static_mut_refs)]
        let dst = &mut PROCESS;
        let n = process.len().min(dst.len() - 1);
        dst[..n].copy_from_slice(&process.as_bytes()[..n]);
    }
    // SAFETY: F_GETFD only queries the number.
    if unsafe { libc::fcntl(VIOLATION_FD, libc::F_GETFD) } >= 0 {
        REPORT_FD.store(VIOLATION_FD, Ordering::Relaxed);
    }
    // SAFETY: a sigaction struct we fill in; the handler is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) < 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel did with one system call under a filter.
    #[derive(Debug, PartialEq, Eq)]
    enum Verdict {
        /// The call ran (its own result: 0 or the errno it failed with).
        Ran(i32),
        /// The filter trapped it (SIGSYS; no handler is installed in the child).
        Trapped,
    }

    /// Runs `nr(args)` in a forked child under `program`, as the kernel filters it.
    fn verdict(program: &BpfProgram, nr: i64, args: [u64; 4]) -> Verdict {
        let prog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the child makes only raw system calls (no allocation, no locks) and
        // leaves with _exit; the parent only waits for it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
                    || libc::syscall(libc::SYS_seccomp, 1, 0, &prog) < 0
                {
                    libc::_exit(200);
                }
                let rc = libc::syscall(nr, args[0], args[1], args[2], args[3]);
                let code = if rc < 0 { *libc::__errno_location() } else { 0 };
                libc::_exit(code.min(199));
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            if libc::WIFSIGNALED(status) {
                assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "killed otherwise");
                Verdict::Trapped
            } else {
                let code = libc::WEXITSTATUS(status);
                assert_ne!(code, 200, "the filter did not install");
                Verdict::Ran(code)
            }
        }
    }

    const TIOCSTI: u64 = 0x5412;
    /// KVM_GET_API_VERSION: type 0xae, number 0.
    const KVM_GET_API_VERSION: u64 = 0xae00;

    fn program(mode: Mode) -> BpfProgram {
        build(
            mode,
            &[
                THREADS,
                &[
                    Allow::Ioctls(&[TCGETS]),
                    Allow::IoctlType(0xae),
                    Allow::ArgIn {
                        nr: libc::SYS_kill,
                        arg: 1,
                        values: &[0],
                    },
                ],
            ],
        )
        .unwrap()
    }

    #[test]
    fn enforced_the_filter_runs_what_is_listed_and_traps_the_rest() {
        let p = program(Mode::Enforce);
        let bad_fd = u64::MAX; // -1: every call on it fails with EBADF once it runs.
        let me = std::process::id() as u64;
        // BASE: runs (and fails on the bad descriptor as it should).
        assert_eq!(
            verdict(&p, libc::SYS_read, [bad_fd, 0, 0, 0]),
            Verdict::Ran(libc::EBADF)
        );
        assert_eq!(verdict(&p, libc::SYS_getpid, [0; 4]), Verdict::Ran(0));
        // Not listed: trapped.
        for nr in [
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_mount,
            libc::SYS_ptrace,
        ] {
            assert_eq!(verdict(&p, nr, [0; 4]), Verdict::Trapped, "syscall {nr}");
        }
        // ioctl: only the requests listed, compared on their 32 bits as the kernel
        // reads them; a type allows every request of that type.
        assert_eq!(
            verdict(&p, libc::SYS_ioctl, [bad_fd, u64::from(TCGETS), 0, 0]),
            Verdict::Ran(libc::EBADF)
        );
        assert_eq!(
            verdict(
                &p,
                libc::SYS_ioctl,
                [bad_fd, 0xffff_ffff_0000_0000 | u64::from(TCGETS), 0, 0]
            ),
            Verdict::Ran(libc::EBADF)
        );
        assert_eq!(
            verdict(&p, libc::SYS_ioctl, [bad_fd, KVM_GET_API_VERSION, 0, 0]),
            Verdict::Ran(libc::EBADF)
        );
        assert_eq!(
            verdict(&p, libc::SYS_ioctl, [bad_fd, TIOCSTI, 0, 0]),
            Verdict::Trapped
        );
        // An argument rule: kill(pid, 0) runs, a real signal is trapped.
        assert_eq!(verdict(&p, libc::SYS_kill, [me, 0, 0, 0]), Verdict::Ran(0));
        assert_eq!(
            verdict(&p, libc::SYS_kill, [me, libc::SIGWINCH as u64, 0, 0]),
            Verdict::Trapped
        );
        // Threads only: a fork-like clone is trapped, clone3 answers ENOSYS (so std
        // falls back to clone, which the rule checks).
        assert_eq!(
            verdict(&p, libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0]),
            Verdict::Trapped
        );
        assert_eq!(
            verdict(&p, libc::SYS_clone3, [0; 4]),
            Verdict::Ran(libc::ENOSYS)
        );
    }

    #[test]
    fn logging_the_filter_lets_everything_run() {
        let p = program(Mode::Log);
        let bad_fd = u64::MAX;
        assert_eq!(
            verdict(&p, libc::SYS_ioctl, [bad_fd, TIOCSTI, 0, 0]),
            Verdict::Ran(libc::EBADF)
        );
        // openat of a NULL path: runs, and the kernel answers EFAULT.
        assert_eq!(
            verdict(&p, libc::SYS_openat, [libc::AT_FDCWD as u64, 0, 0, 0]),
            Verdict::Ran(libc::EFAULT)
        );
        // clone3 is still ENOSYS, whatever the mode.
        assert_eq!(
            verdict(&p, libc::SYS_clone3, [0; 4]),
            Verdict::Ran(libc::ENOSYS)
        );
    }
}
