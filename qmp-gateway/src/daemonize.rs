//! `--daemonize`, as QEMU 7.2's -daemonize: the gateway forks before it starts anything
//! (no thread, no child yet: a fork keeps only the calling thread), the first process
//! waits until the daemon says its set-up succeeded (QMP listeners bound, the VM
//! launched) and exits 0 only then, or 1 when the daemon fails or ends first (the daemon
//! prints its error on the stderr they share). The daemon runs in a session of its own
//! (setsid, then a second fork so that it is no session leader); once ready it moves to
//! `/` and puts /dev/null on its stdin, stdout and stderr, as QEMU's. Children started
//! before then (vmm-core, the daemons) keep the stderr they were given.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Why the gateway could not become a daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonizeError {
    #[error("daemonize: {0}")]
    Os(#[from] std::io::Error),
}

/// The daemon's end of the pipe its first process waits on.
#[derive(Debug)]
pub struct Ready {
    pipe: File,
}

fn check(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Forks. Only the daemon returns (with what it calls once it is ready); the first
/// process exits with the daemon's verdict. Call it while the process has one thread.
pub fn daemonize() -> Result<Ready, DaemonizeError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new fds, owned from here on.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds are ours and open.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: one thread (the caller's promise): the child may do anything after fork.
    let pid = check(unsafe { libc::fork() })?;
    if pid > 0 {
        drop(write_end);
        let mut status = [1u8; 1];
        let got = File::from(read_end).read(&mut status).unwrap_or(0);
        // The daemon's intermediate process: reaped here, it exits at once.
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        std::process::exit(if got == 1 && status[0] == 0 { 0 } else { 1 });
    }
    drop(read_end);
    // SAFETY: setsid only moves this process into a new session.
    check(unsafe { libc::setsid() })?;
    // SAFETY: still one thread, as above.
    let pid = check(unsafe { libc::fork() })?;
    if pid > 0 {
        // SAFETY: ends this intermediate process without running anything of the parent's.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: umask only sets this process's mask; as QEMU's daemon.
    unsafe { libc::umask(0o027) };
    Ok(Ready {
        pipe: File::from(write_end),
    })
}

impl Ready {
    /// The set-up succeeded: the daemon moves to `/`, stdin, stdout and stderr go to
    /// /dev/null, and the first process exits 0.
    pub fn done(mut self) -> std::io::Result<()> {
        std::env::set_current_dir("/")?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")?;
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard fds, which this process owns.
            check(unsafe { libc::dup2(null.as_raw_fd(), fd) })?;
        }
        self.pipe.write_all(&[0])
    }
}
