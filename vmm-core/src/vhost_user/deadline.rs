//! A bound on how long a backend may take over a device's first connection (its
//! handshake and configuration space, at launch or device_add): past it the connection
//! is shut down, so the vhost-user call waiting on it fails instead of holding up
//! vmm-core's control loop for good. A watchdog thread does it, as the vhost crate's
//! frontend has no timeouts of its own.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a device's backend has for its first connection: our daemons answer within
/// milliseconds; this is for one that hangs.
pub const FIRST_CONNECTION: Duration = Duration::from_secs(10);

pub struct Deadline {
    done: Option<Sender<()>>,
    watchdog: Option<JoinHandle<bool>>,
}

impl Deadline {
    /// Shuts `stream` down `within` from now unless `finish` comes first.
    pub fn start(stream: &UnixStream, within: Duration) -> std::io::Result<Deadline> {
        let stream = stream.try_clone()?;
        let (done, finished) = mpsc::channel::<()>();
        let watchdog = std::thread::Builder::new()
            .name("vhost-user deadline".into())
            .spawn(move || match finished.recv_timeout(within) {
                Err(RecvTimeoutError::Timeout) => {
                    let _ = stream.shutdown(Shutdown::Both);
                    true
                }
                Ok(()) | Err(RecvTimeoutError::Disconnected) => false,
            })?;
        Ok(Deadline {
            done: Some(done),
            watchdog: Some(watchdog),
        })
    }

    /// Stops the watchdog; true if the deadline passed (the connection is shut down,
    /// whatever the calls on it answered).
    pub fn finish(mut self) -> bool {
        self.stop()
    }

    fn stop(&mut self) -> bool {
        drop(self.done.take());
        self.watchdog
            .take()
            .is_some_and(|w| w.join().unwrap_or(true))
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Instant;

    #[test]
    fn a_connection_past_its_deadline_is_shut_down() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let deadline = Deadline::start(&ours, Duration::from_millis(100)).unwrap();
        let mut byte = [0u8];
        // The call waiting on the connection (a reply never sent) ends.
        assert_eq!((&ours).read(&mut byte).unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(deadline.finish());
        assert_eq!(
            theirs.read(&mut byte).unwrap(),
            0,
            "the backend sees a hang-up"
        );
    }

    #[test]
    fn a_connection_finished_in_time_is_left_alone() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let deadline = Deadline::start(&ours, Duration::from_secs(30)).unwrap();
        assert!(!deadline.finish());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "finish does not wait"
        );
        std::io::Write::write_all(&mut &ours, b"x").unwrap();
        let mut byte = [0u8];
        theirs.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }
}
