//! A QMP client connection: a Unix socket (which can carry fds) or a TCP socket.

use std::io::Read;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use ipc::fds::recv_with_fds;

pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    /// Reads bytes, and fds when the socket can carry them (at most `max_fds` kept; the
    /// kernel closes any beyond).
    pub fn read(&self, buf: &mut [u8], max_fds: usize) -> std::io::Result<(usize, Vec<OwnedFd>)> {
        match self {
            Conn::Unix(s) => {
                let r = recv_with_fds(s.as_raw_fd(), buf, max_fds)?;
                if r.truncated {
                    log::warn!(
                        "QMP client sent more than {max_fds} fds at once; the rest were closed"
                    );
                }
                Ok((r.bytes, r.fds))
            }
            Conn::Tcp(s) => {
                let mut s = s;
                loop {
                    match s.read(buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        other => return other.map(|n| (n, Vec::new())),
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

    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    pub fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }
}
