//! A socket chardev's connection (or a QMP listener's client): a Unix or TCP stream,
//! made from an fd add_client brings, and the filename QEMU shows for it.

use std::io::{self, ErrorKind};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// A socket chardev's connection (or a QMP listener's client).
pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub(super) fn file(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }

    /// A connected socket handed over as an fd (add_client), by its family; an fd that
    /// is no socket is refused.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Stream> {
        // SAFETY: sockaddr_storage is plain data that getsockname fills.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: addr and len are valid for the call.
        let r = unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        match i32::from(addr.ss_family) {
            libc::AF_UNIX => Ok(Stream::Unix(UnixStream::from(fd))),
            libc::AF_INET | libc::AF_INET6 => Ok(Stream::Tcp(TcpStream::from(fd))),
            _ => Err(io::Error::from(ErrorKind::Unsupported)),
        }
    }

    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    /// The filename QEMU 7.2 shows for a socket chardev with this connection (char-socket.c's
    /// qemu_chr_compute_filename, from the connection's own addresses). `bound`: the path
    /// the server's socket is known by (the gateway binds under a temporary name and
    /// renames it), shown for a connection accepted there; a socketpair's has none.
    pub fn filename(&self, server: bool, bound: Option<&Path>) -> Option<String> {
        let tail = if server { ",server=on" } else { "" };
        Some(match self {
            Stream::Unix(s) => {
                let local = s.local_addr().ok()?;
                let path = match (local.as_pathname(), bound) {
                    (Some(_), Some(b)) => b.display().to_string(),
                    (Some(p), None) => p.display().to_string(),
                    (None, _) => String::new(),
                };
                format!("unix:{path}{tail}")
            }
            Stream::Tcp(s) => format!(
                "tcp:{}{tail} <-> {}",
                inet(s.local_addr().ok()?),
                inet(s.peer_addr().ok()?)
            ),
        })
    }
}

fn inet(a: std::net::SocketAddr) -> String {
    match a {
        std::net::SocketAddr::V4(v) => format!("{}:{}", v.ip(), v.port()),
        std::net::SocketAddr::V6(v) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

/// Socket option `opt` (an int) of fd `n`; None if `n` is no socket.
fn int_option(n: i32, opt: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into value; a bad fd only fails.
    let r = unsafe {
        libc::getsockopt(
            n,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(value)
}

/// Whether fd `n` is an open stream socket (of this process).
pub(super) fn is_stream_socket(n: i32) -> bool {
    int_option(n, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
}

/// Whether socket fd `n` listens.
pub(super) fn is_listening(n: i32) -> bool {
    int_option(n, libc::SO_ACCEPTCONN).is_some_and(|on| on != 0)
}
