//! The Unix sockets the gateway binds for itself and its children, private to its user:
//! `bind_private` (QMP, console and vhost-user sockets) and `RuntimeDir`, the private
//! directory that holds the children's vhost-user sockets.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

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
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|error| SocketError::RemoveStale {
            path: path.to_path_buf(),
            error,
        })?;
    }
    let failed = |error| SocketError::Bind {
        path: path.to_path_buf(),
        error,
    };
    // SAFETY: umask only changes this process's creation mask; we restore it at once.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(failed)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    Ok(listener)
}

/// A directory only the gateway's user may enter, removed with everything in it when
/// dropped.
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    pub fn create() -> std::io::Result<RuntimeDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let mut n = 0u32;
        loop {
            let path = base.join(format!("flotilla-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(RuntimeDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(e),
            }
        }
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
}
