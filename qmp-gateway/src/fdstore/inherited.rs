//! Descriptors the gateway's parent left open for it, named by number on the command line
//! (QEMU's fd=N: `--add-fd`, `--chardev socket,fd=`, `--netdev tap,fd=`). Each number is
//! taken once in the whole process, whichever option names it, so no two owners close
//! the same descriptor; a taken one is closed on exec (a child gets a duplicate, if any).
//! They are all taken while the command line is read, before the gateway opens anything
//! of its own, so a number cannot stand for a file of the gateway's.

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
}
