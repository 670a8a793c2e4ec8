//! Where a migration goes or comes from, as QMP's `uri` names it: `tcp:HOST:PORT`,
//! `unix:PATH`, `fd:NAME` (a descriptor a client passed with getfd; `fd:N`, a number: a
//! descriptor the gateway inherited, as libvirt's restore passes its file) and `exec:COMMAND`
//! (a shell command whose stdin, or stdout on the destination, carries the stream). The
//! gateway makes the connection or the listener, in its own network namespace and with
//! its right to open paths; the agent gets the descriptor and does every byte.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ipc::{errno_text, Channel};

/// How long connecting to a destination may take before the migration fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationUri {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
    Fd(String),
    Exec(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UriError {
    /// QEMU's words for a scheme it does not know.
    #[error("Parameter 'uri' expects a valid migration protocol")]
    Protocol,
    #[error("error parsing address '{0}'")]
    Address(String),
    #[error("invalid Unix socket address")]
    UnixAddress,
}

impl MigrationUri {
    pub fn parse(uri: &str) -> Result<MigrationUri, UriError> {
        let (scheme, rest) = uri.split_once(':').ok_or(UriError::Protocol)?;
        match scheme {
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| UriError::Address(rest.to_string()))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                // A port is a number here (QEMU would look a service name up). An empty
                // host is QEMU's "any address" for a listener.
                let port = port
                    .parse()
                    .map_err(|_| UriError::Address(rest.to_string()))?;
                Ok(MigrationUri::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            "unix" if rest.is_empty() => Err(UriError::UnixAddress),
            "unix" => Ok(MigrationUri::Unix(PathBuf::from(rest))),
            // An empty name or command fails where QEMU's do: no such fd, a command
            // that takes nothing.
            "fd" => Ok(MigrationUri::Fd(rest.to_string())),
            "exec" => Ok(MigrationUri::Exec(rest.to_string())),
            _ => Err(UriError::Protocol),
        }
    }

    /// How QEMU names the address in "Failed to connect to '...'".
    fn address(&self) -> String {
        match self {
            MigrationUri::Tcp { host, port } => format!("{host}:{port}"),
            MigrationUri::Unix(p) => p.display().to_string(),
            MigrationUri::Fd(name) => name.clone(),
            MigrationUri::Exec(cmd) => cmd.clone(),
        }
    }
}

/// A connection (or listener) ready for the agent, and the process behind an exec: URI.
pub struct Opened {
    pub fd: OwnedFd,
    pub channel: Channel,
    pub child: Option<Child>,
    /// A unix: listener's socket file, removed with it.
    pub socket: Option<PathBuf>,
}

/// How long an exec: command has to finish (write out what it read) once its input ended.
const EXEC_FINISH: Duration = Duration::from_secs(30);

impl Opened {
    /// The stream is complete and the agent gone: the connection closes, and an exec:
    /// command, which sees the end of its input now, is waited for (killed only if it
    /// does not end within EXEC_FINISH): cut short, it would lose the stream's end.
    pub fn finish(mut self) {
        let child = self.child.take();
        // Closes the connection (and removes a listener's socket file).
        drop(self);
        if let Some(mut c) = child {
            let deadline = std::time::Instant::now() + EXEC_FINISH;
            while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if matches!(c.try_wait(), Ok(None)) {
                log::warn!("the migration's exec: command did not end; killing it");
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// Reaps the exec: command, if there is one (killed if it still runs).
    pub fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            if !matches!(c.try_wait(), Ok(Some(_))) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.reap();
        if let Some(path) = self.socket.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket (two-way) or a pipe or file (one way)?
fn channel_of(fd: &OwnedFd) -> Channel {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat on a descriptor we hold, into a buffer of the right type.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    // SAFETY: fstat succeeded, so it filled the buffer.
    if rc == 0 && unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFSOCK {
        Channel::Socket
    } else {
        Channel::OneWay
    }
}

fn exec(cmd: &str, outgoing: bool) -> Result<Opened, String> {
    let mut command = Command::new("/bin/sh");
    command.arg("-c").arg(cmd);
    if outgoing {
        command.stdin(Stdio::piped()).stdout(Stdio::null());
    } else {
        command.stdout(Stdio::piped()).stdin(Stdio::null());
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("Unable to start '{cmd}': {e}"))?;
    let fd: OwnedFd = match outgoing {
        true => child.stdin.take().map(OwnedFd::from),
        false => child.stdout.take().map(OwnedFd::from),
    }
    .ok_or_else(|| format!("Unable to start '{cmd}': no pipe"))?;
    Ok(Opened {
        fd,
        channel: Channel::OneWay,
        child: Some(child),
        socket: None,
    })
}

/// The descriptor an fd: URI names, as QEMU 7.2's monitor_fd_param reads it: a name that
/// does not start with a digit is a client's getfd name (`named`), anything else a
/// descriptor number (qemu_parse_fd), here one the process inherited open and no option
/// took (fdstore/inherited.rs).
pub fn fd_param(
    text: &str,
    named: impl FnOnce(&str) -> Result<OwnedFd, String>,
) -> Result<OwnedFd, String> {
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return named(text);
    }
    let n: i32 = (text.parse().ok())
        .filter(|&n: &i32| n >= 0)
        .ok_or_else(|| format!("Invalid file descriptor number '{text}'"))?;
    crate::fdstore::inherited::take_left_open(n).map_err(|e| format!("fd:{text}: {e}"))
}

/// The source's connection to the destination. `named` gives the fd a client passed
/// under a name (fd:).
pub fn connect(
    uri: &MigrationUri,
    named: impl FnOnce(&str) -> Result<OwnedFd, String>,
) -> Result<Opened, String> {
    let failed = |e: std::io::Error| {
        format!(
            "Failed to connect to '{}': {}",
            uri.address(),
            errno_text(&e)
        )
    };
    let fd: OwnedFd = match uri {
        MigrationUri::Tcp { host, port } => {
            let addrs = resolve(host, *port)?;
            let mut last = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
            let mut stream = None;
            for a in addrs {
                match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let stream = stream.ok_or_else(|| failed(last))?;
            let _ = stream.set_nodelay(true);
            stream.into()
        }
        MigrationUri::Unix(p) => UnixStream::connect(p).map_err(failed)?.into(),
        // The source's migrate resolved it already (fd_param), as it took it.
        MigrationUri::Fd(name) => named(name)?,
        MigrationUri::Exec(cmd) => return exec(cmd, true),
    };
    Ok(Opened {
        channel: channel_of(&fd),
        fd,
        child: None,
        socket: None,
    })
}

/// `host`'s addresses, or QEMU's words for why there are none.
fn resolve(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, String> {
    (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| {
            let text = errno_text(&e);
            let text = text
                .strip_prefix("failed to lookup address information: ")
                .unwrap_or(&text);
            format!("address resolution failed for {host}:{port}: {text}")
        })
}

/// The destination's side: a listener (tcp:, unix:), or the stream itself (fd:, exec:).
pub fn listen(
    uri: &MigrationUri,
    named: impl FnOnce(&str) -> Result<OwnedFd, String>,
) -> Result<Opened, String> {
    // QEMU's words, for a port and for a path.
    let no_port =
        |e: std::io::Error| format!("Failed to find an available port: {}", errno_text(&e));
    let (fd, socket): (OwnedFd, _) = match uri {
        MigrationUri::Tcp { host, port } => {
            // No host: every address, IPv6 and IPv4 where the host has both.
            let hosts = match host.as_str() {
                "" => vec!["::", "0.0.0.0"],
                h => vec![h],
            };
            let mut last = Err(String::new());
            for h in hosts {
                last = TcpListener::bind(resolve(h, *port)?.as_slice()).map_err(no_port);
                if last.is_ok() {
                    break;
                }
            }
            (last?.into(), None)
        }
        MigrationUri::Unix(p) => {
            let listener = UnixListener::bind(p).map_err(|e| {
                format!(
                    "Failed to bind socket to {}: {}",
                    p.display(),
                    errno_text(&e)
                )
            })?;
            (listener.into(), Some(p.clone()))
        }
        MigrationUri::Fd(name) => {
            let fd = fd_param(name, named)?;
            return Ok(Opened {
                channel: channel_of(&fd),
                fd,
                child: None,
                socket: None,
            });
        }
        MigrationUri::Exec(cmd) => return exec(cmd, false),
    };
    Ok(Opened {
        fd,
        channel: Channel::Listener,
        child: None,
        socket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_schemes_qemu_has() {
        assert_eq!(
            MigrationUri::parse("tcp:127.0.0.1:4444"),
            Ok(MigrationUri::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            })
        );
        assert_eq!(
            MigrationUri::parse("tcp:[::1]:5"),
            Ok(MigrationUri::Tcp {
                host: "::1".into(),
                port: 5
            })
        );
        assert_eq!(
            MigrationUri::parse("unix:/tmp/m"),
            Ok(MigrationUri::Unix("/tmp/m".into()))
        );
        assert_eq!(
            MigrationUri::parse("fd:mig"),
            Ok(MigrationUri::Fd("mig".into()))
        );
        assert_eq!(
            MigrationUri::parse("exec:cat > /dev/null"),
            Ok(MigrationUri::Exec("cat > /dev/null".into()))
        );
        assert_eq!(MigrationUri::parse("bogus:1"), Err(UriError::Protocol));
        assert_eq!(MigrationUri::parse("nothing"), Err(UriError::Protocol));
        assert_eq!(MigrationUri::parse("unix:"), Err(UriError::UnixAddress));
        assert_eq!(
            MigrationUri::parse("tcp::5"),
            Ok(MigrationUri::Tcp {
                host: String::new(),
                port: 5
            })
        );
        assert!(matches!(
            MigrationUri::parse("tcp:host"),
            Err(UriError::Address(_))
        ));
        assert!(matches!(
            MigrationUri::parse("tcp:h:99999"),
            Err(UriError::Address(_))
        ));
    }

    #[test]
    fn an_fd_uri_names_a_getfd_name_or_a_number() {
        let named = |name: &str| Err(format!("named {name}"));
        assert_eq!(fd_param("mig", named).err().unwrap(), "named mig");
        assert_eq!(
            fd_param("6x", named).err().unwrap(),
            "Invalid file descriptor number '6x'"
        );
        // A number is never a getfd name; one the process did not start with is refused.
        assert_eq!(
            fd_param("987", named).err().unwrap(),
            "fd:987: fd 987 is not open"
        );
    }

    #[test]
    fn a_refused_connection_says_where_and_why() {
        let uri = MigrationUri::parse("tcp:127.0.0.1:1").unwrap();
        let err = connect(&uri, |_| unreachable!()).err().unwrap();
        assert_eq!(
            err,
            "Failed to connect to '127.0.0.1:1': Connection refused"
        );
    }
}
