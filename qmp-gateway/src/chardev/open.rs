//! Opening a chardev's backend (the gateway is the process that opens paths), with QEMU
//! 7.2's words when that fails, and the filename query-chardev shows for it.

use std::fs::{File, OpenOptions};
use std::net::{TcpListener, ToSocketAddrs, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipc::errno_text;
use parking_lot::Mutex;

use super::io::{connect, Listener, Opened};
use super::ringbuf::Ring;
use super::spec::{Address, Backend};
use super::stream::{is_listening, is_stream_socket, Stream};
use crate::sockets::bind_private;

/// N of a /dev/fdset/N path (QEMU's qemu_open reads such paths from an fd set).
fn fdset_of(path: &Path) -> Option<i64> {
    path.to_str()?.strip_prefix("/dev/fdset/")?.parse().ok()
}

fn could_not_open(path: &Path, e: std::io::Error) -> String {
    format!("Could not open '{}': {}", path.display(), errno_text(&e))
}

/// QEMU's pipe: `path.in` and `path.out` if both open, else `path` both ways. (Opened
/// read-write, so that a FIFO without its peer yet does not hold the caller.)
fn open_pipe(path: &Path) -> Result<Opened, String> {
    let rw = |p: &Path| OpenOptions::new().read(true).write(true).open(p);
    let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", path.display()));
    if let (Ok(input), Ok(out)) = (rw(&with(".in")), rw(&with(".out"))) {
        return Ok(Opened::Files {
            out,
            input: Some(input),
        });
    }
    let f = rw(path).map_err(|e| could_not_open(path, e))?;
    let input = f.try_clone().map_err(|e| could_not_open(path, e))?;
    Ok(Opened::Files {
        out: f,
        input: Some(input),
    })
}

fn resolve(host: &str, port: &str) -> Result<std::net::SocketAddr, String> {
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    format!("{host}:{port}")
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("address resolution failed for {host}:{port}"))
}

/// A pty master and its slave's path.
fn open_pty() -> std::io::Result<(File, String)> {
    // SAFETY: posix_openpt returns a new fd or -1.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is ours alone.
    let master = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: fd is a pty master; name is valid for its length.
    let ok = unsafe {
        libc::grantpt(fd) == 0
            && libc::unlockpt(fd) == 0
            && libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // Raw mode, as QEMU sets the pty: bytes pass unchanged both ways.
    // SAFETY: termios is plain data, filled by tcgetattr.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
    }
    Ok((master, path))
}

/// Takes inherited socket fd `n` (QEMU's fd=N): it must be an open socket that no
/// option took yet (fdstore/inherited.rs: spec.rs checked it when the command line was
/// read, before the gateway opened any file of its own).
fn inherited(n: i32) -> Result<Stream, String> {
    let not_socket = || format!("File descriptor '{n}' is not a socket");
    if !is_stream_socket(n) {
        return Err(not_socket());
    }
    let fd = crate::fdstore::inherited::take(n).map_err(|_| not_socket())?;
    Stream::from_fd(fd).map_err(|_| not_socket())
}

/// An inherited listening socket (fd=N with server=on).
fn inherited_listener(n: i32) -> Result<Listener, String> {
    if !is_listening(n) {
        return Err(format!("File descriptor '{n}' is not a listening socket"));
    }
    match inherited(n)? {
        Stream::Unix(s) => {
            let path = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .unwrap_or_default();
            Ok(Listener::Unix(UnixListener::from(OwnedFd::from(s)), path))
        }
        Stream::Tcp(s) => Ok(Listener::Tcp(TcpListener::from(OwnedFd::from(s)))),
    }
}

/// What was opened, the filename it starts with, and the path to remove with it (a
/// socket the gateway bound).
pub(super) struct Made {
    pub opened: Opened,
    pub filename: String,
    pub socket_path: Option<PathBuf>,
    pub ring: Option<Arc<Mutex<Ring>>>,
    /// A pty's slave (chardev-add answers it).
    pub pty: Option<String>,
}

/// Opens `backend`; `waits` lets a server wait for its first client (the command line).
pub(super) fn open(
    backend: &Backend,
    waits: bool,
    fdsets: Option<&crate::fdstore::FdSets>,
) -> Result<Made, String> {
    let made = |opened, filename: &str| Made {
        opened,
        filename: filename.into(),
        socket_path: None,
        ring: None,
        pty: None,
    };
    Ok(match backend {
        Backend::Null => made(Opened::Null, "null"),
        Backend::Stdio => made(Opened::Stdio, "stdio"),
        Backend::File { out, input, append } => {
            let f = match fdset_of(out).zip(fdsets) {
                // QEMU's qemu_open: a duplicate of the set's O_WRONLY fd (a file chardev's mode).
                Some((n, sets)) => File::from(
                    sets.dup_with_access(n, libc::O_WRONLY)
                        .map_err(|e| could_not_open(out, e))?,
                ),
                None => OpenOptions::new()
                    .write(true)
                    .create(true)
                    .append(*append)
                    .truncate(!*append)
                    .open(out)
                    .map_err(|e| could_not_open(out, e))?,
            };
            let input = match input {
                Some(p) => Some(File::open(p).map_err(|e| could_not_open(p, e))?),
                None => None,
            };
            made(Opened::Files { out: f, input }, "file")
        }
        Backend::Pipe(path) => made(open_pipe(path)?, "pipe"),
        Backend::Ringbuf { size, memory } => {
            let ring = Arc::new(Mutex::new(Ring::new(*size)));
            let name = if *memory { "memory" } else { "ringbuf" };
            Made {
                ring: Some(ring.clone()),
                ..made(Opened::Ring(ring), name)
            }
        }
        Backend::Pty => {
            let (master, path) = open_pty().map_err(|e| format!("openpty: {}", errno_text(&e)))?;
            Made {
                pty: Some(path.clone()),
                ..made(
                    Opened::Pty {
                        master,
                        connected: false,
                    },
                    &format!("pty:{path}"),
                )
            }
        }
        Backend::Udp { remote, local } => {
            let peer = resolve(&remote.0, &remote.1)?;
            let own = match local {
                Some((h, p)) => resolve(h, p)?,
                None if peer.is_ipv6() => "[::]:0".parse().map_err(|_| "[::]:0".to_string())?,
                None => "0.0.0.0:0".parse().map_err(|_| "0.0.0.0:0".to_string())?,
            };
            let s = UdpSocket::bind(own)
                .map_err(|e| format!("Failed to bind socket: {}", errno_text(&e)))?;
            s.connect(peer).map_err(|e| {
                format!(
                    "Failed to connect to '{}:{}': {}",
                    remote.0,
                    remote.1,
                    errno_text(&e)
                )
            })?;
            made(Opened::Udp(s), "udp")
        }
        Backend::Socket {
            addr,
            server: true,
            wait,
            nodelay,
            ..
        } => {
            let (listener, path) = match addr {
                Address::Unix(p) => {
                    let l = bind_private(p)
                        .map_err(|e| format!("Failed to bind socket to {}: {e}", p.display()))?;
                    (Listener::Unix(l, p.clone()), Some(p.clone()))
                }
                Address::Fd(n) => (inherited_listener(*n)?, None),
                Address::Inet { host, port } => {
                    let a = resolve(host, port)?;
                    let l = TcpListener::bind(a).map_err(|e| {
                        format!("Failed to find an available port: {}", errno_text(&e))
                    })?;
                    (Listener::Tcp(l), None)
                }
            };
            let conn = if *wait && waits {
                log::info!("chardev: waiting for a connection on {addr:?}");
                Some(match &listener {
                    Listener::Unix(l, _) => l
                        .accept()
                        .map(|(s, _)| super::stream::Stream::Unix(s))
                        .map_err(|e| format!("accept: {}", errno_text(&e)))?,
                    Listener::Tcp(l) => l
                        .accept()
                        .map(|(s, _)| super::stream::Stream::Tcp(s))
                        .map_err(|e| format!("accept: {}", errno_text(&e)))?,
                })
            } else {
                None
            };
            Made {
                socket_path: path,
                ..made(
                    Opened::Server {
                        listener,
                        conn,
                        nodelay: *nodelay,
                    },
                    "socket",
                )
            }
        }
        Backend::Socket {
            addr,
            server: false,
            reconnect,
            nodelay,
            ..
        } => {
            let (conn, retry) = match addr {
                Address::Fd(n) => (Some(inherited(*n)?), None),
                _ => match connect(addr, *nodelay) {
                    Ok(c) => (Some(c), None),
                    // With reconnect, a client whose server is not there yet tries again.
                    Err(_) if *reconnect > 0 => (
                        None,
                        Some(
                            std::time::Instant::now() + std::time::Duration::from_secs(*reconnect),
                        ),
                    ),
                    Err(e) => return Err(e),
                },
            };
            made(
                Opened::Client {
                    addr: addr.clone(),
                    conn,
                    reconnect: *reconnect,
                    nodelay: *nodelay,
                    retry,
                },
                "socket",
            )
        }
    })
}
