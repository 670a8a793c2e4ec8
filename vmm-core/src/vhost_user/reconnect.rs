//! The backend's lifeline: a thread per device waits for its backend to hang up, then
//! gets the next connection and replays the driver's setup on it (`Link::connect`). The
//! next connection comes from the backend's socket path, tried again with backoff
//! (vmm-core on its own), or from the gateway, which restarts the daemon and hands over
//! a connected socket (`Handover`).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::link::Link;

/// Where a new connection comes from when the backend hangs up.
pub enum Reconnect {
    /// Connect to this socket again, with backoff (vmm-core on its own).
    Path(PathBuf),
    /// The gateway restarts the daemon and hands over a connected socket.
    Handed(Receiver<UnixStream>),
}

/// The gateway's way in to a `Reconnect::Handed` device: the VM's control loop passes
/// the connection it received through here.
pub struct Handover(Sender<UnixStream>);

impl Handover {
    pub fn hand_over(&self, stream: UnixStream) {
        // The device's thread is gone only when vmm-core is ending.
        let _ = self.0.send(stream);
    }
}

impl Reconnect {
    /// To `path` again when there is one (vmm-core on its own); otherwise from the
    /// gateway, through the returned handover.
    pub fn new(path: Option<PathBuf>) -> (Reconnect, Option<Handover>) {
        match path {
            Some(p) => (Reconnect::Path(p), None),
            None => {
                let (tx, rx) = mpsc::channel();
                (Reconnect::Handed(rx), Some(Handover(tx)))
            }
        }
    }

    /// The next connection, or an attempt at one that failed (a socket path nobody
    /// listens on yet); None when none will come again (the device was removed, or
    /// vmm-core is ending: nobody hands over a connection).
    fn next(&self) -> Option<std::io::Result<UnixStream>> {
        match self {
            Reconnect::Path(p) => Some(UnixStream::connect(p)),
            Reconnect::Handed(rx) => rx.recv().ok().map(Ok),
        }
    }
}

/// Waits between attempts on a socket path: 5 ms at first, doubling up to a second.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(5))
    }

    fn wait(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
    }
}

/// Starts the thread that keeps `link` connected.
pub fn spawn_supervisor(link: Arc<Mutex<Link>>, reconnect: Reconnect) -> std::io::Result<()> {
    let name = format!("vhost-user {}", link.lock().name());
    std::thread::Builder::new()
        .name(name)
        .spawn(move || supervise(&link, &reconnect))?;
    Ok(())
}

/// Until the device is unplugged (`Link::close`, which also wakes the wait for a
/// hang-up) or vmm-core ends.
fn supervise(link: &Mutex<Link>, reconnect: &Reconnect) {
    loop {
        let watch = link.lock().watch();
        if let Some(w) = watch {
            wait_hangup(w.as_raw_fd());
            link.lock().hung_up();
        }
        let mut backoff = Backoff::new();
        loop {
            if link.lock().is_closed() {
                return;
            }
            let stream = match reconnect.next() {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(_)) => {
                    backoff.wait();
                    continue;
                }
            };
            let mut l = link.lock();
            if l.is_closed() {
                return;
            }
            match l.connect(stream) {
                Ok(()) => {
                    log::info!("{}: the vhost-user backend is back", l.name());
                    break;
                }
                Err(e) => {
                    log::warn!("{}: setting up the new backend: {e}", l.name());
                    drop(l);
                    if matches!(reconnect, Reconnect::Path(_)) {
                        backoff.wait();
                    }
                }
            }
        }
    }
}

/// Blocks until the peer of `fd` hangs up.
fn wait_hangup(fd: RawFd) {
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own, no timeout.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n > 0
            && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
        {
            return;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}
