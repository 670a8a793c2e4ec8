//! Waiting on one descriptor with poll(2), until a deadline or for ever: what a QMP
//! connection waits for its client with, and a stopping chardev for its backend.

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// Waits until `fd` has one of `events` (or an error or a hang-up, which the caller's
/// next read or write reports), or `deadline` passed (None: waits for ever); whether it
/// has. Interrupted polls are retried.
pub fn wait(fd: RawFd, events: i16, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if n > 0 {
            return Ok(true);
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}
