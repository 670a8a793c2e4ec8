//! A start that is refused, told to the tool that passed its monitor's listening socket
//! (libvirt: `-chardev socket,id=charmonitor,fd=N,server=on`). libvirt connects to that
//! socket once it has the emulator's pid and, when the connection ends, shows the
//! emulator's last log lines ("qemu unexpectedly closed the monitor: ..."). A process that
//! is already gone by then closed the listener with it: libvirt only says "failed to
//! connect to monitor socket: Connection refused", and reads the log only if it also sees
//! the pid gone, which an init that reaps orphans late hides. QEMU is slow enough to start
//! that libvirt is always connected first; Flotilla refuses within milliseconds. So a
//! refused start keeps such listeners until a client is pending on one, for at most
//! [`LINGER`], then exits: the pending connection ends unaccepted, as QEMU's does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::spec::{Address, Backend};
use super::stream::is_listening;

/// How long a refused start waits for the monitor's client. libvirt connects within
/// milliseconds of the start; someone else who passed a listener may never connect.
pub const LINGER: Duration = Duration::from_secs(5);

/// The fd numbers at and above which the copies are made: out of the way of the numbers
/// a command line names (those it inherited are open, but a check of one that is not
/// must not find a copy there).
const COPIES_FROM: i32 = 1000;

/// Copies (close-on-exec) of the inherited listening sockets among `backends`
/// (`socket,fd=N,server=on`): the chardev that takes fd N closes it when a start fails,
/// the copy keeps the socket until the client came.
pub fn inherited_listeners<'a>(backends: impl IntoIterator<Item = &'a Backend>) -> Vec<OwnedFd> {
    (backends.into_iter())
        .filter_map(|b| match b {
            Backend::Socket {
                addr: Address::Fd(n),
                server: true,
                ..
            } if is_listening(*n) => copy(*n),
            _ => None,
        })
        .collect()
}

fn copy(n: i32) -> Option<OwnedFd> {
    // SAFETY: fcntl on an fd number; the result, if any, is a new fd this owns.
    let high = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, COPIES_FROM) };
    let fd = match high {
        // Above the fd limit: anywhere.
        // SAFETY: as above.
        -1 => unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 0) },
        fd => fd,
    };
    // SAFETY: as above: a new fd, owned from here.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until a client is pending on one of `fds` (listening sockets this process
/// inherited) or `timeout` passed. Nothing is accepted.
pub fn until_client_pending(fds: &[OwnedFd], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !fds.is_empty() {
        let mut polled: Vec<libc::pollfd> = (fds.iter())
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: `polled` is a live array of its length; poll only writes revents.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
        match n {
            0 => continue,
            n if n > 0 => return,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => {
                log::warn!(
                    "waiting for the monitor's client: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

    /// A listener on an abstract address (nothing on the filesystem) and that address.
    fn listener(tag: &str) -> (UnixListener, SocketAddr) {
        let name = format!("flotilla-linger-{tag}-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        (UnixListener::bind_addr(&addr).unwrap(), addr)
    }

    #[test]
    fn only_inherited_listening_sockets_are_waited_for() {
        let (l, addr) = listener("which");
        let connected = UnixStream::connect_addr(&addr).unwrap();
        let socket = |n, server| Backend::Socket {
            addr: Address::Fd(n),
            server,
            wait: false,
            reconnect: 0,
            nodelay: false,
        };
        let backends = [
            socket(l.as_raw_fd(), true),
            socket(l.as_raw_fd(), false),
            socket(connected.as_raw_fd(), true),
            Backend::Null,
        ];
        let copies = inherited_listeners(&backends);
        assert_eq!(copies.len(), 1);
        let same = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(same(copies[0].as_raw_fd()), same(l.as_raw_fd()));
        assert!(copies[0].as_raw_fd() >= COPIES_FROM);
    }

    #[test]
    fn a_pending_client_ends_the_wait_and_none_waits_out_the_timeout() {
        let (l, addr) = listener("wait");
        let copy = copy(l.as_raw_fd()).unwrap();
        // The copy waits on when the original is closed (a failed start's chardev).
        drop(l);
        let start = Instant::now();
        until_client_pending(std::slice::from_ref(&copy), Duration::from_millis(200));
        assert!(start.elapsed() >= Duration::from_millis(200));
        let _client = UnixStream::connect_addr(&addr).unwrap();
        let start = Instant::now();
        until_client_pending(std::slice::from_ref(&copy), Duration::from_secs(10));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
