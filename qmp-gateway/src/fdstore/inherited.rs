//! Descriptors the gateway's parent left open for it, named by number on the command line
//! (QEMU's fd=N: `--add-fd`, `--chardev socket,fd=`, `--netdev tap,fd=`). Each number is
//! taken once in the whole process, whichever option names it, so no two owners close
//! the same descriptor; a taken one is closed on exec (a child gets a duplicate, if any).
//! They are all taken while the command line is read, before the gateway opens anything
//! of its own, so a number cannot stand for a file of the gateway's. A number named later
//! (a migration's `fd:N`, QEMU's monitor_fd_param with a number: libvirt restores a saved
//! domain with `-incoming defer`, then `migrate-incoming fd:N` naming a file it passed)
//! must be one the process had open when it started (`record_left_open`, first thing in
//! main), so it still cannot stand for a file of the gateway's.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use parking_lot::Mutex;

/// The numbers taken so far.
static TAKEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InheritedError {
    #[error("fd {0} is not open")]
    NotOpen(RawFd),
    #[error("fd {0} is already taken by another option")]
    Taken(RawFd),
}

/// The descriptors above stdio open when the process started, once recorded.
static LEFT_OPEN: Mutex<Option<Vec<RawFd>>> = Mutex::new(None);

/// Records the descriptors above stdio the process has open now: call it before the
/// process opens anything of its own.
pub fn record_left_open() {
    let names: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => (dir.flatten())
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&n| n > 2)
            .collect(),
        Err(_) => Vec::new(),
    };
    // The directory's own descriptor was listed too: closed by now, it fails F_GETFD.
    // SAFETY: F_GETFD only queries the number.
    let open = (names.into_iter())
        .filter(|&n| unsafe { libc::fcntl(n, libc::F_GETFD) } >= 0)
        .collect();
    *LEFT_OPEN.lock() = Some(open);
}

/// Takes descriptor `n` named after the start (a migration's fd:N): one the process had
/// open when it started (`record_left_open`) and that no option took.
pub fn take_left_open(n: RawFd) -> Result<OwnedFd, InheritedError> {
    let left_open = (LEFT_OPEN.lock().as_ref()).is_some_and(|fds| fds.contains(&n));
    if !left_open {
        return Err(InheritedError::NotOpen(n));
    }
    take(n)
}

/// Takes inherited descriptor `n`: open, and not taken before.
pub fn take(n: RawFd) -> Result<OwnedFd, InheritedError> {
    let mut taken = TAKEN.lock();
    if taken.contains(&n) {
        return Err(InheritedError::Taken(n));
    }
    // SAFETY: F_GETFD only queries the number; it fails harmlessly when it is not open.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
        return Err(InheritedError::NotOpen(n));
    }
    // SAFETY: n is open, was left to this process to own (the command line names it) and
    // is taken once (above): nothing else in the gateway owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(n) };
    // SAFETY: fcntl on an fd we own, no pointers.
    unsafe { libc::fcntl(n, libc::F_SETFD, libc::FD_CLOEXEC) };
    taken.push(n);
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_number_is_taken_once_and_only_if_open() {
        // A number no other test of this process takes (the registry is the process's,
        // and a low number is used again once another test closes it).
        let file = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: F_DUPFD makes a new descriptor (>= 900) that this test then owns.
        let n = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 900) };
        assert!(n >= 900);
        let fd = take(n).unwrap();
        assert_eq!(take(n).map(drop), Err(InheritedError::Taken(n)));
        // SAFETY: F_GETFD only queries.
        assert!(unsafe { libc::fcntl(n, libc::F_GETFD) } & libc::FD_CLOEXEC != 0);
        drop(fd);
        assert_eq!(take(-1).map(drop), Err(InheritedError::NotOpen(-1)));
    }

    #[test]
    fn only_a_number_open_at_the_start_is_taken_later() {
        let file = std::fs::File::open("/dev/null").unwrap();
        // SAFETY: F_DUPFD makes new descriptors (>= 950) that this test then owns.
        let before = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 950) };
        record_left_open();
        // SAFETY: as above.
        let after = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 950) };
        assert!(before >= 950 && after > before);
        assert_eq!(
            take_left_open(after).map(drop),
            Err(InheritedError::NotOpen(after))
        );
        let fd = take_left_open(before).unwrap();
        assert_eq!(
            take_left_open(before).map(drop),
            Err(InheritedError::Taken(before))
        );
        drop(fd);
        // SAFETY: `after` is this test's, closed once.
        unsafe { libc::close(after) };
    }
}
