//! What every Flotilla process does as it starts: its log, the signals that end it, and
//! the descriptors it inherited from the process that started it.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SigSet, Signal};

/// Log lines on stderr, `info` and up unless RUST_LOG says otherwise; no timestamps or
/// targets (the gateway and the test logs add their own context).
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .format_target(false)
        .init();
}

/// SIGTERM, SIGINT and SIGHUP, blocked in the calling thread (and so in every thread it
/// starts afterwards): call it before any thread exists, then take them with `wait()` in
/// one thread, or never (a child under the gateway is stopped over its control channel).
pub fn block_terminating_signals() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    Ok(set)
}

#[derive(Debug, thiserror::Error)]
#[error("{flag} {fd}: not an open file descriptor")]
pub struct NotAnFd {
    pub flag: &'static str,
    pub fd: RawFd,
}

/// Takes ownership of descriptor `fd`, which the command line (`flag`) says was inherited.
/// The number comes from outside: it is checked to be open, and it must not be one this
/// process already owns elsewhere (it is called once, at start, for fds the parent set).
pub fn take_inherited_fd(flag: &'static str, fd: RawFd) -> Result<OwnedFd, NotAnFd> {
    // SAFETY: fcntl(F_GETFD) on an arbitrary number only queries it.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(NotAnFd { flag, fd });
    }
    // SAFETY: the fd is open (checked above) and, by this function's contract, inherited
    // and owned by nothing else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The name (comm) of a device daemon's resident I/O thread, the one that serves its
/// rings (vhost-backend's `start_resident_thread`): the gateway finds it by this name
/// (an iothread's thread-id).
pub const IO_THREAD_NAME: &str = "vhost-iothread";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_or_negative_fd_is_refused() {
        assert!(take_inherited_fd("--control-fd", -1).is_err());
        let err = take_inherited_fd("--control-fd", 100_000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--control-fd 100000: not an open file descriptor"
        );
    }
}
