//! The Unix sockets the gateway binds for itself and its children, private to its user:
//! `bind_private` (QMP, console and vhost-user sockets) and `RuntimeDir`, the private
//! directory that holds the children's vhost-user sockets. A gateway that was killed
//! leaves both behind; the next one takes over a socket nobody listens on and removes the
//! runtime directories whose gateway is gone, and nothing else.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Why a private socket could not be bound. The texts name the path; they are what a
/// QMP client or the command line reads.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{}: exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    #[error("{}: in use by another process", .0.display())]
    InUse(PathBuf),
    #[error("removing stale socket {}: {error}", path.display())]
    RemoveStale {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Bind {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Binds a Unix socket at `path` readable and writable by its owner only, replacing a
/// stale socket left there (but not a live one, and nothing that is not a socket).
pub fn bind_private(path: &Path) -> Result<UnixListener, SocketError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket(path.to_path_buf()));
        }
        // A socket someone still listens on belongs to a running VM: never steal it.
        if listened_on(path) {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
    }
    let failed = |error| SocketError::Bind {
        path: path.to_path_buf(),
        error,
    };
    // Bound under a name of its own, then renamed into place once it listens: whoever
    // waits for the path to appear can connect at once (between bind and listen, a
    // socket's path exists but refuses connections), and a stale socket there is
    // replaced in one step rather than removed first (the path never goes missing).
    let staging = staging_path(path);
    if staging.is_none() {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SocketError::RemoveStale {
                    path: path.to_path_buf(),
                    error: e,
                })
            }
            _ => {}
        }
    }
    let at = staging.as_deref().unwrap_or(path);
    if staging.is_some() {
        // A leftover of a gateway with our pid, killed while binding.
        let _ = std::fs::remove_file(at);
    }
    // SAFETY: umask only changes this process's creation mask; we restore it at once.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(at);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(failed)?;
    let placed =
        std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600)).and_then(|()| {
            match &staging {
                Some(staging) => std::fs::rename(staging, path),
                None => Ok(()),
            }
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(at);
        return Err(failed(e));
    }
    Ok(listener)
}

/// Where a socket for `path` is bound before it is renamed into place: beside it, named
/// after it and this process; None when that name would not fit a socket address (the
/// socket is then bound at `path` itself).
fn staging_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    let staging = path.with_file_name(format!(".{name}.{}", std::process::id()));
    // sun_path holds 108 bytes, the last one NUL.
    (staging.as_os_str().len() < 108).then_some(staging)
}

/// Whether a process listens on the Unix socket at `path`: a connection it has not
/// refused. The attempt does not wait (a listener whose backlog is full counts as one).
fn listened_on(path: &Path) -> bool {
    // SAFETY: a zeroed sockaddr_un is valid (AF_UNSPEC, empty path).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return false;
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: connect with a sockaddr_un that lives across the call, and its size.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}

/// The file in a runtime directory that says whose it is: "PID START", START being the
/// process's start time (so that a pid used again by another process is told apart).
const OWNER_FILE: &str = "owner";
const PREFIX: &str = "flotilla-";

/// When process `pid` started (field 22 of /proc/PID/stat), if it exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `name` is a runtime directory's name: flotilla-PID-N.
fn is_runtime_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(pid, n)| {
            [pid, n]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Whether `dir` is a runtime directory of this user whose gateway is gone: its owner
/// file names a process that no longer runs. One without an owner file (being created,
/// or not a gateway's) is never taken for stale.
fn is_stale(dir: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    // SAFETY: geteuid cannot fail.
    if !meta.is_dir() || meta.uid() != unsafe { libc::geteuid() } {
        return false;
    }
    let Ok(owner) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
        return false;
    };
    let mut words = owner.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(started))) = (words.next(), words.next()) else {
        return false;
    };
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    pid != std::process::id() && start_time(pid) != Some(started)
}

/// Removes the runtime directories under `base` whose gateway is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let path = entry.path();
        if is_runtime_name(&name.to_string_lossy()) && is_stale(&path) {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => log::info!("removed {}, left by a gateway that is gone", path.display()),
                Err(e) => log::warn!(
                    "removing {}, left by a gateway that is gone: {e}",
                    path.display()
                ),
            }
        }
    }
}

/// A directory only the gateway's user may enter, removed with everything in it when
/// dropped.
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// A new directory under $XDG_RUNTIME_DIR (or the temporary directory), with an owner
    /// file; the first one a gateway creates clears those left by gateways that are gone.
    pub fn create() -> std::io::Result<RuntimeDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| remove_stale(&base));
        let mut n = 0u32;
        let path = loop {
            let path = base.join(format!("{PREFIX}{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(e),
            }
        };
        let dir = RuntimeDir { path };
        // Written whole, then renamed: a reader sees all of it or none.
        let owner = format!(
            "{} {}\n",
            std::process::id(),
            start_time(std::process::id()).unwrap_or_default()
        );
        let partial = dir.path.join(".owner");
        std::fs::write(&partial, owner)?;
        std::fs::rename(&partial, dir.path.join(OWNER_FILE))?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory now (the process may end without dropping it).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_sockets_replace_stale_ones_but_never_live_ones() {
        let dir = RuntimeDir::create().unwrap();
        let path = dir.path().join("s.sock");
        let live = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            bind_private(&path).unwrap_err().to_string(),
            format!("{}: in use by another process", path.display())
        );
        drop(live);
        bind_private(&path).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(
            bind_private(&file).unwrap_err().to_string(),
            format!("{}: exists and is not a socket", file.display())
        );
        let gone = dir.path().to_path_buf();
        drop(dir);
        assert!(!gone.exists());
    }

    #[test]
    fn only_runtime_directories_whose_gateway_is_gone_are_stale() {
        let dir = RuntimeDir::create().unwrap();
        assert!(!is_stale(dir.path()), "our own");
        let owner = std::fs::read_to_string(dir.path().join(OWNER_FILE)).unwrap();
        let started = start_time(std::process::id()).unwrap();
        assert_eq!(owner, format!("{} {started}\n", std::process::id()));
        // pid 1 runs, but did not start when we did: its pid was "used again".
        std::fs::write(dir.path().join(OWNER_FILE), format!("1 {}", started + 1)).unwrap();
        assert!(is_stale(dir.path()));
        std::fs::write(
            dir.path().join(OWNER_FILE),
            format!("1 {}", start_time(1).unwrap()),
        )
        .unwrap();
        assert!(!is_stale(dir.path()), "a live owner");
        std::fs::remove_file(dir.path().join(OWNER_FILE)).unwrap();
        assert!(!is_stale(dir.path()), "no owner file: not known to be ours");
        assert!(is_runtime_name("flotilla-12-0"));
        for not in [
            "flotilla-gateway-12-0",
            "flotilla-12-",
            "flotilla--0",
            "other-1-2",
        ] {
            assert!(!is_runtime_name(not), "{not}");
        }
    }

    #[test]
    fn a_socket_appears_only_once_it_listens() {
        let dir = RuntimeDir::create().unwrap();
        let path = dir.path().join("q.sock");
        let _live = bind_private(&path).unwrap();
        assert!(listened_on(&path));
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A path too long for a staging name is bound where it is.
        let long = dir
            .path()
            .join("x".repeat(105 - dir.path().as_os_str().len()));
        assert!(staging_path(&long).is_none());
        let _also = bind_private(&long).unwrap();
        assert!(listened_on(&long));
    }

    #[test]
    fn a_socket_nobody_listens_on_is_not_in_use() {
        let dir = RuntimeDir::create().unwrap();
        let path = dir.path().join("s.sock");
        let live = bind_private(&path).unwrap();
        assert!(listened_on(&path));
        drop(live);
        assert!(path.exists());
        assert!(!listened_on(&path));
        assert!(!listened_on(&dir.path().join("none.sock")));
    }
}
