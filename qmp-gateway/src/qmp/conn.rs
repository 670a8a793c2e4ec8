//! A QMP client connection: a Unix socket (which can carry fds) or a TCP socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use ipc::fds::recv_with_fds;

use crate::chardev::Stream;

/// What one read brought.
pub struct Received {
    pub bytes: usize,
    pub fds: Vec<OwnedFd>,
    /// Fds came that found no room (the kernel closed them).
    pub dropped: bool,
}

pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// A chardev's connection (a listener's client, or one a monitor chardev hands over).
impl From<Stream> for Conn {
    fn from(s: Stream) -> Conn {
        match s {
            Stream::Unix(s) => Conn::Unix(s),
            Stream::Tcp(s) => Conn::Tcp(s),
        }
    }
}

impl Conn {
    /// Reads bytes, and fds when the socket can carry them: at most `max_fds` are
    /// installed in the gateway (the kernel closes any beyond, and `dropped` says so).
    pub fn read(&self, buf: &mut [u8], max_fds: usize) -> std::io::Result<Received> {
        match self {
            Conn::Unix(s) => {
                let r = recv_with_fds(s.as_raw_fd(), buf, max_fds)?;
                Ok(Received {
                    bytes: r.bytes,
                    fds: r.fds,
                    dropped: r.truncated,
                })
            }
            Conn::Tcp(s) => {
                let mut s = s;
                loop {
                    match s.read(buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => {
                            return other.map(|bytes| Received {
                                bytes,
                                fds: Vec::new(),
                                dropped: false,
                            })
                        }
                    }
                }
            }
        }
    }

    pub fn clone_for_writing(&self) -> Option<Box<dyn std::io::Write + Send>> {
        match self {
            Conn::Unix(s) => s.try_clone().ok().map(|s| Box::new(s) as _),
            Conn::Tcp(s) => s.try_clone().ok().map(|s| Box::new(s) as _),
        }
    }

    /// How long a write may wait for a peer that does not read (None: for ever).
    pub fn set_write_timeout(&self, limit: Option<Duration>) {
        let _ = match self {
            Conn::Unix(s) => s.set_write_timeout(limit),
            Conn::Tcp(s) => s.set_write_timeout(limit),
        };
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    /// Waits until the client has sent something (or hung up); false if `limit` passed
    /// first (None: waits for ever).
    pub fn wait_readable(&self, limit: Option<Duration>) -> std::io::Result<bool> {
        let fd = match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        };
        crate::poll_fd::wait(fd, libc::POLLIN, limit.map(|l| Instant::now() + l))
    }

    /// Sends `line` (giving up after a moment on a client that does not read) and hangs
    /// up: for a client that is turned away.
    pub fn refuse(&self, line: &[u8]) {
        let patience = Some(Duration::from_millis(100));
        let _ = match self {
            Conn::Unix(s) => s
                .set_write_timeout(patience)
                .and_then(|()| (&*s).write_all(line)),
            Conn::Tcp(s) => s
                .set_write_timeout(patience)
                .and_then(|()| (&*s).write_all(line)),
        };
        self.shutdown();
    }

    pub fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }
}
