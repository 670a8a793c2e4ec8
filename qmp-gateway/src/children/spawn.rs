//! Starting a child: a raw clone(2), sandboxed into new user, mount, PID, IPC, UTS and
//! network namespaces (std's Command cannot ask for a PID namespace), always from the
//! spawner thread (spawner.rs: the parent-death signal follows the thread that started
//! the child). The child gets its control socket as fd 3, the write end of a violation
//! pipe as fd 4, the trace state page as fd 5 and the trace log (if `--trace file=` gave
//! one) as fd 6 (`ipc::trace`), and nothing else the gateway holds: every other
//! descriptor above stdio is closed at exec (close_range), whatever the gateway
//! inherited. Then its
//! own process group, the parent-death signal (so none outlives the gateway) and exec
//! with `--sandbox MODE`. Sandboxed, it is root in its user namespace and, outside, an id
//! leased for it alone (ids.rs) when the gateway is root, or the gateway's own user when
//! it is not. The child does the rest to itself (the `sandbox` crate): empty root,
//! rlimits, no capabilities, Landlock, seccomp. When it breaks its seccomp allowlist, its
//! SIGSYS handler writes the system call's number into the pipe before it dies, and the
//! gateway reads it from there. Also: the child's `Process` (wait, kill, its violation)
//! and the host ids of its threads.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use ipc::Connection;

use super::ids::{self, IdError, IdLease};
use super::spawner::on_spawner_thread;
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
    #[error(transparent)]
    Ids(#[from] IdError),
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
/// its control channel (`--control-fd 3`, then `args`), from the spawner thread.
pub fn spawn_child(
    binary: &Path,
    args: &[&str],
    mode: Mode,
) -> Result<(Process, Connection), SpawnError> {
    let (ours, theirs) = UnixStream::pair()?;
    let binary = binary.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let control = OwnedFd::from(theirs);
    let child = on_spawner_thread(move || spawn(&binary, &args, &control, mode))??;
    Ok((child, Connection::new(ours)))
}

/// The control socket's number in the child.
pub const CONTROL_FD: RawFd = 3;
/// Where the child reports a seccomp violation.
pub const VIOLATION_FD: RawFd = 4;
/// The trace state page (`--trace-state-fd`), when the gateway traces.
pub const TRACE_STATE_FD: RawFd = 5;
/// The trace log (`--trace-log-fd`), when `--trace file=` named one.
pub const TRACE_LOG_FD: RawFd = 6;

/// A child process started by `spawn`, ours to wait for and kill (by pid).
pub struct Process {
    pid: libc::pid_t,
    status: Option<ExitStatus>,
    violations: OwnedFd,
    /// Its id on the host, leased until it has been reaped (then `Process` is dropped).
    lease: Option<IdLease>,
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

/// What each step the child reports failing is called (the first number it writes).
fn step_name(step: i32) -> &'static str {
    match step {
        1 | 2 => "placing its descriptors",
        3 => "setpgid",
        4 => "PR_SET_PDEATHSIG",
        6 => "dropping supplementary groups",
        7 => "becoming the user namespace's root",
        8 => "closing the descriptors it must not have",
        _ => "execve",
    }
}

/// Starts `binary` with `--control-fd 3 [--sandbox MODE] args...`; `control` becomes its
/// fd 3. With `mode` other than off the child starts in namespaces of its own. Run it on
/// the spawner thread (`spawn_child` does).
fn spawn(
    binary: &Path,
    args: &[String],
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
    let (trace_state_fd, trace_log_fd) = match ipc::trace::for_children() {
        Some((page, log)) => {
            argv.push(c_string("--trace-state-fd")?);
            argv.push(c_string(TRACE_STATE_FD.to_string())?);
            if log.is_some() {
                argv.push(c_string("--trace-log-fd")?);
                argv.push(c_string(TRACE_LOG_FD.to_string())?);
            }
            (page.as_raw_fd(), log.map_or(-1, |l| l.as_raw_fd()))
        }
        None => (-1, -1),
    };
    // The first descriptor the child must not keep.
    let first_closed = if trace_log_fd >= 0 {
        TRACE_LOG_FD + 1
    } else if trace_state_fd >= 0 {
        TRACE_STATE_FD + 1
    } else {
        VIOLATION_FD + 1
    };
    for a in args {
        argv.push(c_string(a.as_str())?);
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
    // The child waits on this until the gateway has written its user namespace's maps;
    // the gateway keeps its end open until the child has exec'd, so that the child can
    // tell, once its parent-death signal is set, whether the gateway is still there.
    let (go_r, go_w) = pipe()?;
    let (go_fd, go_w_fd) = (go_r.as_raw_fd(), go_w.as_raw_fd());
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let privileged = uid == 0;
    // Root leases an id of the child's own; anyone else can map only their own ids.
    let lease = if sandboxed && privileged {
        Some(ids::lease()?)
    } else {
        None
    };
    let (outside_uid, outside_gid) = match &lease {
        Some(l) => (l.id(), l.id()),
        None => (uid, gid),
    };
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
            // Our copy of the write end goes, so that the gateway's end is the only one:
            // if the gateway dies, the read below ends.
            libc::close(go_w_fd);
            let mut go = 0u8;
            if libc::read(go_fd, (&mut go as *mut u8).cast(), 1) != 1 {
                libc::_exit(127);
            }
            if sandboxed {
                // Become the namespace's root, which outside is the id mapped for it
                // (without supplementary groups). Raw system calls: glibc's wrappers
                // would try to reach the parent's other threads, which this fork-like
                // child does not have, and hang.
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
            // Move the descriptors into place without one clobbering another.
            let control_tmp = libc::fcntl(control_fd, libc::F_DUPFD_CLOEXEC, 10);
            let report_tmp = libc::fcntl(report_fd, libc::F_DUPFD_CLOEXEC, 10);
            if control_tmp < 0 || report_tmp < 0 {
                fail(1);
            }
            let mut trace_tmp = [-1; 2];
            for (tmp, fd) in trace_tmp.iter_mut().zip([trace_state_fd, trace_log_fd]) {
                if fd >= 0 {
                    *tmp = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                    if *tmp < 0 {
                        fail(1);
                    }
                }
            }
            if libc::dup2(control_tmp, CONTROL_FD) < 0 || libc::dup2(report_tmp, VIOLATION_FD) < 0 {
                fail(2);
            }
            for (tmp, fd) in trace_tmp.iter().zip([TRACE_STATE_FD, TRACE_LOG_FD]) {
                if *tmp >= 0 && libc::dup2(*tmp, fd) < 0 {
                    fail(2);
                }
            }
            // Nothing else crosses exec: not what the gateway opened without CLOEXEC, nor
            // what it inherited itself (`exec 77</etc/shadow`). Marked rather than closed:
            // the error and go pipes are still needed until exec.
            if libc::syscall(
                libc::SYS_close_range,
                first_closed,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                // Kernels before 5.11: one by one, up to the limit on descriptors.
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) < 0 {
                    fail(8);
                }
                let top = lim.rlim_cur.min(libc::c_int::MAX as u64) as libc::c_int;
                for fd in first_closed..top {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            // Terminal signals (Ctrl-C) go to the gateway, which stops its children in order.
            if libc::setpgid(0, 0) < 0 {
                fail(3);
            }
            // If the gateway dies without cleaning up, its children go with it. (After
            // setresuid above: a change of credentials clears the signal.)
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                fail(4);
            }
            // The gateway may have died before that: then the go pipe has no writer left.
            let mut hung_up = libc::pollfd {
                fd: go_fd,
                events: 0,
                revents: 0,
            };
            if libc::poll(&mut hung_up, 1, 0) != 0 && hung_up.revents & libc::POLLHUP != 0 {
                libc::_exit(127);
            }
            libc::execve(argv_ptrs[0], argv_ptrs.as_ptr(), env_ptrs.as_ptr());
            fail(5)
        }
    }
    drop(err_w);
    drop(go_r);
    let reap = || {
        let mut status = 0;
        // SAFETY: reaping the child we just made.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    };
    if sandboxed {
        if let Err(e) = map_ids(pid as libc::pid_t, outside_uid, outside_gid, privileged) {
            // The child is still waiting for its go: it ends when the pipe closes.
            drop(go_w);
            reap();
            return Err(SpawnError::UserNamespace(e));
        }
    }
    // SAFETY: one byte from a local to a pipe we own.
    unsafe { libc::write(go_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    drop(violations_w);
    let mut report = [0i32; 2];
    // SAFETY: reading at most 8 bytes into our array.
    let n = unsafe { libc::read(err_r.as_raw_fd(), report.as_mut_ptr().cast(), 8) };
    // Only now: the child has looked for us after setting its parent-death signal.
    drop(go_w);
    if n == 8 {
        reap();
        let error = std::io::Error::from_raw_os_error(report[1]);
        return Err(SpawnError::Child {
            step: step_name(report[0]),
            error,
        });
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
        lease,
    })
}

/// Writes the user namespace's maps: root inside is `outside_uid`/`outside_gid` outside.
/// Without privilege only one's own ids can be mapped, and only with setgroups denied.
fn map_ids(
    pid: libc::pid_t,
    outside_uid: libc::uid_t,
    outside_gid: libc::gid_t,
    privileged: bool,
) -> std::io::Result<()> {
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

    /// The uid (and gid) it runs as on the host, when one was leased for it.
    pub fn host_id(&self) -> Option<u32> {
        self.lease.as_ref().map(IdLease::id)
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

    /// Waits for it to end until `deadline` (None if it still runs then). It is woken by
    /// the end itself (a pidfd, which polls readable then), not by a timer: a daemon that
    /// quits is gone a few hundred microseconds after its answer, and each millisecond
    /// counts in a device_del. Without pidfds (Linux before 5.3) it looks every
    /// millisecond.
    pub fn wait_until(&mut self, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
        if let Some(s) = self.try_wait()? {
            return Ok(Some(s));
        }
        // SAFETY: pidfd_open on our own unreaped child; a descriptor we then own, or -1.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        // SAFETY: a fresh descriptor, ours alone.
        let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match &pidfd {
                Some(fd) => {
                    let mut ended = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = left.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
                    // SAFETY: polls one descriptor we own; EINTR only means look again.
                    unsafe { libc::poll(&mut ended, 1, ms.max(1)) };
                }
                None => std::thread::sleep(left.min(Duration::from_millis(1))),
            }
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
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

impl Drop for Process {
    /// Its id goes back with it: a child still running is killed (it is ours, unreaped)
    /// and reaped first, so that no two live processes ever share an id.
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill();
            let _ = self.wait();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn waiting_for_a_child_ends_with_it_or_at_the_deadline() {
        let dir = std::env::temp_dir().join(format!("flotilla-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = |seconds: &str| {
            let path = dir.join(format!("sleep-{seconds}"));
            std::fs::write(&path, format!("#!/bin/sh\nexec sleep {seconds}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            spawn_child(&path, &[], Mode::Off).unwrap().0
        };
        let mut short = child("0.05");
        let start = Instant::now();
        let status = short.wait_until(start + Duration::from_secs(10)).unwrap();
        assert!(status.is_some_and(|s| s.success()));
        assert!(start.elapsed() < Duration::from_secs(5));
        let mut long = child("60");
        let start = Instant::now();
        assert!(long
            .wait_until(start + Duration::from_millis(50))
            .unwrap()
            .is_none());
        assert!(start.elapsed() >= Duration::from_millis(50));
        long.kill().unwrap();
        let status = long
            .wait_until(Instant::now() + Duration::from_secs(10))
            .unwrap();
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
