//! `--pidfile`: the gateway's pid in a file it holds a lock on for as long as it runs (as
//! QEMU 7.2's qemu_write_pidfile: a POSIX lock, so a second gateway given the same file
//! is refused in QEMU's words), removed when the gateway ends.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipc::errno_text;

/// Why the pid file could not be had (QEMU's words, after its "cannot create PID file: ").
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("Could not create '{}': {}", .0.display(), errno_text(.1))]
    Create(PathBuf, std::io::Error),
    #[error("Cannot lock pid file: {}", errno_text(.0))]
    Lock(std::io::Error),
    #[error("Failed to write pid file: {}", errno_text(.0))]
    Write(std::io::Error),
}

/// The locked pid file; removed (while still locked) when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    /// Holds the lock: closing any fd of the file would drop it.
    file: File,
}

impl PidFile {
    /// Creates (or takes over an unlocked) `path`, locks it and writes this process's pid.
    pub fn create(path: &Path) -> Result<PidFile, PidFileError> {
        loop {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| PidFileError::Create(path.to_path_buf(), e))?;
            // SAFETY: lockf on an fd this function owns.
            if unsafe { libc::lockf(file.as_raw_fd(), libc::F_TLOCK, 0) } != 0 {
                return Err(PidFileError::Lock(std::io::Error::last_os_error()));
            }
            // The file may have been removed (by the gateway that held it, ending) after
            // we opened it: then lock the one there now, as QEMU does.
            let ours = file.metadata().map_err(PidFileError::Write)?;
            match std::fs::metadata(path) {
                Ok(there) if there.ino() == ours.ino() && there.dev() == ours.dev() => {}
                _ => continue,
            }
            let mut pidfile = PidFile {
                path: path.to_path_buf(),
                file,
            };
            pidfile.write_pid().map_err(PidFileError::Write)?;
            return Ok(pidfile);
        }
    }

    fn write_pid(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        writeln!(self.file, "{}", std::process::id())?;
        self.file.flush()
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_pid_and_is_removed() {
        let dir = std::env::temp_dir().join(format!("pidfile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pid");
        let pidfile = PidFile::create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(pidfile);
        assert!(!path.exists());
        let missing = PidFile::create(&dir.join("no/such/pid")).unwrap_err();
        assert!(
            missing.to_string().starts_with("Could not create '"),
            "{missing}"
        );
        assert!(
            missing
                .to_string()
                .ends_with("': No such file or directory"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
