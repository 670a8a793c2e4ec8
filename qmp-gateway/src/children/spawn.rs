//! Starting a child: a raw clone(2), sandboxed into new mount, PID, IPC, UTS and network
//! namespaces (std's Command cannot ask for a PID namespace), with its control socket as
//! fd 3, the write end of a violation pipe as fd 4, its own process group and a
//! parent-death signal (so none outlives the gateway), then exec with `--sandbox MODE`.
//! The child does the rest to itself (the `sandbox` crate): empty root, rlimits, no
//! capabilities, Landlock, seccomp. When it breaks its seccomp allowlist, its SIGSYS
//! handler writes the system call's number into the pipe before it dies, and the gateway
//! reads it from there. Also: the child's `Process` (wait, kill, its violation) and the
//! host ids of its threads.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use ipc::Connection;

use ::sandbox::Mode;

/// Why a child could not be started. The texts are what the command line and QMP
/// clients read.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(
        "the sandbox's namespaces could not be made (are user namespaces disabled?); run \
         with --sandbox off"
    )]
    Namespaces(std::io::Error),
    #[error("mapping the sandbox's user namespace: {0}")]
    UserNamespace(std::io::Error),
    /// A step of the child between clone and exec failed (`step` says which).
    #[error("{step}: {error}")]
    Child {
        step: &'static str,
        error: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Starts `binary` (sandboxed as `mode` says) with the far end of a fresh socket pair as
/// its control channel (`--control-fd 3`, then `args`).
pub fn spawn_child(
    binary: &Path,
    args: &[&str],
    mode: Mode,
) -> Result<(Process, Connection), SpawnError> {
    let (ours, theirs) = UnixStream::pair()?;
    let child = spawn(binary, args, &OwnedFd::from(theirs), mode)?;
    Ok((child, Connection::new(ours)))
}

/// The control socket's number in the child.
pub const CONTROL_FD: RawFd = 3;
/// Where the child reports a seccomp violation.
pub const VIOLATION_FD: RawFd = 4;

/// A child process started by `spawn`, ours to wait for and kill (by pid).
pub struct Process {
    pid: libc::pid_t,
    status: Option<ExitStatus>,
    violations: OwnedFd,
}

fn cvt(rc: libc::c_long) -> std::io::Result<libc::c_long> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// An argument or environment entry for execve (a NUL inside fails as std's Command does).
fn c_string(bytes: impl Into<Vec<u8>>) -> std::io::Result<CString> {
    Ok(CString::new(bytes)?)
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: both are fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `binary` with `--control-fd 3 [--sandbox MODE] args...`; `control` becomes its
/// fd 3. With `mode` other than off the child starts in namespaces of its own.
pub fn spawn(
    binary: &Path,
    args: &[&str],
    control: &OwnedFd,
    mode: Mode,
) -> Result<Process, SpawnError> {
    let sandboxed = mode != Mode::Off;
    let mut argv: Vec<CString> = vec![
        c_string(binary.as_os_str().as_bytes())?,
        c_string("--control-fd")?,
        c_string(CONTROL_FD.to_string())?,
    ];
    if sandboxed {
        argv.push(c_string("--sandbox")?);
        argv.push(c_string(mode.as_str())?);
    }
    for a in args {
        argv.push(c_string(*a)?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let (violations_r, violations_w) = pipe()?;
    // exec's errno comes back through this pipe; end of file means exec succeeded.
    let (err_r, err_w) = pipe()?;
    // The child waits on this until the gateway has written its user namespace's maps.
    let (go_r, go_w) = pipe()?;
    let go_fd = go_r.as_raw_fd();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let privileged = uid == 0;
    let control_fd = control.as_raw_fd();
    let report_fd = violations_w.as_raw_fd();
    let err_fd = err_w.as_raw_fd();
    let flags = if !sandboxed {
        0
    } else {
        libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET
    };
    // SAFETY: a fork-like clone (no new stack); the child only makes async-signal-safe
    // system calls on data prepared above, then execs or exits.
    let pid = cvt(unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    })
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            SpawnError::Namespaces(e)
        } else {
            SpawnError::Io(e)
        }
    })?;
    if pid == 0 {
        // SAFETY: see above; every path ends in execve or _exit.
        unsafe {
            let fail = |what: i32| -> ! {
                let e = *libc::__errno_location();
                let msg = [what, e];
                libc::write(err_fd, msg.as_ptr().cast(), 8);
                libc::_exit(127)
            };
            if sandboxed {
                let mut go = 0u8;
                if libc::read(go_fd, (&mut go as *mut u8).cast(), 1) != 1 {
                    libc::_exit(127);
                }
                // Become the namespace's root, which is an unprivileged user outside
                // (nobody, when the gateway is root): without supplementary groups.
                // Raw system calls: glibc's wrappers would try to reach the parent's
                // other threads, which this fork-like child does not have, and hang.
                if privileged
                    && libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
                        < 0
                {
                    fail(6);
                }
                if libc::syscall(libc::SYS_setresgid, 0, 0, 0) < 0
                    || libc::syscall(libc::SYS_setresuid, 0, 0, 0) < 0
                {
                    fail(7);
                }
            }
            // Move the two descriptors into place without one clobbering the other.
            let control_tmp = libc::fcntl(control_fd, libc::F_DUPFD_CLOEXEC, 10);
            let report_tmp = libc::fcntl(report_fd, libc::F_DUPFD_CLOEXEC, 10);
            if control_tmp < 0 || report_tmp < 0 {
                fail(1);
            }
            if libc::dup2(control_tmp, CONTROL_FD) < 0 || libc::dup2(report_tmp, VIOLATION_FD) < 0 {
                fail(2);
            }
            // Terminal signals (Ctrl-C) go to the gateway, which stops its children in order.
            if libc::setpgid(0, 0) < 0 {
                fail(3);
            }
            // If the gateway dies without cleaning up, its children go with it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                fail(4);
            }
            libc::execve(argv_ptrs[0], argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            fail(5)
        }
    }
    drop(err_w);
    drop(go_r);
    if sandboxed {
        if let Err(e) = map_ids(pid as libc::pid_t, uid, gid, privileged) {
            // The child is still waiting for its go: it ends when the pipe closes.
            drop(go_w);
            let mut status = 0;
            // SAFETY: reaping the child we just made.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            return Err(SpawnError::UserNamespace(e));
        }
        // SAFETY: one byte from a local to a pipe we own.
        unsafe { libc::write(go_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
    drop(go_w);
    drop(violations_w);
    let mut report = [0i32; 2];
    // SAFETY: reading at most 8 bytes into our array.
    let n = unsafe { libc::read(err_r.as_raw_fd(), report.as_mut_ptr().cast(), 8) };
    if n == 8 {
        let mut status = 0;
        // SAFETY: reaping the child we just made.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        let step = match report[0] {
            1 | 2 => "placing its descriptors",
            3 => "setpgid",
            4 => "PR_SET_PDEATHSIG",
            6 => "dropping supplementary groups",
            7 => "becoming the user namespace's root",
            _ => "execve",
        };
        let error = std::io::Error::from_raw_os_error(report[1]);
        return Err(SpawnError::Child { step, error });
    }
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(violations_r.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(
            violations_r.as_raw_fd(),
            libc::F_SETFL,
            fl | libc::O_NONBLOCK,
        );
    }
    Ok(Process {
        pid: pid as libc::pid_t,
        status: None,
        violations: violations_r,
    })
}

/// Who the sandboxed process is outside its user namespace: nobody when the gateway is
/// root (so even a process that escaped every other layer holds no privilege), the
/// gateway's own user otherwise (the only mapping an unprivileged user may write).
const NOBODY: libc::uid_t = 65534;

fn map_ids(
    pid: libc::pid_t,
    uid: libc::uid_t,
    gid: libc::gid_t,
    privileged: bool,
) -> std::io::Result<()> {
    let (outside_uid, outside_gid) = if privileged {
        (NOBODY, NOBODY)
    } else {
        (uid, gid)
    };
    if !privileged {
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny")?;
    }
    std::fs::write(
        format!("/proc/{pid}/uid_map"),
        format!("0 {outside_uid} 1\n"),
    )?;
    std::fs::write(
        format!("/proc/{pid}/gid_map"),
        format!("0 {outside_gid} 1\n"),
    )?;
    Ok(())
}

impl Process {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    fn reap(&mut self, flags: libc::c_int) -> std::io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(self.pid, &mut status, flags) };
        match rc {
            0 => Ok(None),
            r if r < 0 => Err(std::io::Error::last_os_error()),
            _ => {
                let s = ExitStatus::from_raw(status);
                self.status = Some(s);
                Ok(Some(s))
            }
        }
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.reap(0)? {
                return Ok(s);
            }
        }
    }

    /// SIGKILL, unless it has been reaped already (its pid may be someone else's now).
    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: a signal to our own unreaped child.
        cvt(unsafe { libc::kill(self.pid, libc::SIGKILL) } as libc::c_long).map(|_| ())
    }

    /// The system call it was stopped for, if its seccomp filter stopped it.
    pub fn violation(&self) -> Option<i64> {
        let mut nr = [0u8; 8];
        // SAFETY: reading at most 8 bytes into our array from a nonblocking pipe.
        let n = unsafe { libc::read(self.violations.as_raw_fd(), nr.as_mut_ptr().cast(), 8) };
        (n == 8).then(|| i64::from_le_bytes(nr))
    }
}

/// The host's id of thread `tid` of process `pid` as that process sees it in its own PID
/// namespace (what vmm-core reports for its vCPUs); `tid` itself when not found (no
/// namespace, or the thread is gone). QMP clients get host ids, as from QEMU.
pub fn host_tid(pid: u32, tid: i32) -> i32 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return tid;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let Some(ids) = status.lines().find_map(|l| l.strip_prefix("NSpid:")) else {
            continue;
        };
        let ids: Vec<i32> = ids
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if ids.len() > 1 && ids.last() == Some(&tid) {
            return ids[0];
        }
    }
    tid
}
