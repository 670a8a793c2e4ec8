//! A memory backend object (memory-backend-ram, -memfd, -file): memory the gateway
//! opens now and a DIMM maps into the guest later. ram and memfd are memfds (guest RAM
//! must be shared with the vhost-user daemons, so even a "ram" backend is a memfd);
//! file opens or creates the file at mem-path, or a file in the directory it names.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use ipc::errno_text;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    Ram,
    Memfd,
    File { mem_path: String },
}

impl BackendKind {
    /// Its QOM type name.
    pub fn qom_type(&self) -> &'static str {
        match self {
            BackendKind::Ram => "memory-backend-ram",
            BackendKind::Memfd => "memory-backend-memfd",
            BackendKind::File { .. } => "memory-backend-file",
        }
    }
}

/// What object-add asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBackendSpec {
    pub id: String,
    pub kind: BackendKind,
    pub size: u64,
    /// None: the type's default (memfd shares, ram and file do not).
    pub share: Option<bool>,
    pub prealloc: bool,
    pub merge: bool,
    pub dump: bool,
    pub reserve: bool,
}

impl MemoryBackendSpec {
    /// With QEMU 7.2's defaults.
    pub fn new(id: &str, kind: BackendKind, size: u64) -> MemoryBackendSpec {
        MemoryBackendSpec {
            id: id.to_string(),
            kind,
            size,
            share: None,
            prealloc: false,
            merge: true,
            dump: true,
            reserve: true,
        }
    }
}

/// A created backend: its properties and the memory's fd.
#[derive(Debug)]
pub struct MemoryBackend {
    pub spec: MemoryBackendSpec,
    fd: OwnedFd,
}

impl MemoryBackend {
    /// Opens (or creates) the memory, with QEMU 7.2's messages when that fails.
    pub fn create(spec: MemoryBackendSpec) -> Result<MemoryBackend, String> {
        let fd = match &spec.kind {
            BackendKind::Ram | BackendKind::Memfd => {
                let name = CString::new(format!("flotilla-mem-{}", spec.id))
                    .map_err(|_| "a memory backend's id has no NUL".to_string())?;
                ipc::shm::memfd(&name, spec.size, true)
                    .map_err(|e| format!("failed to create memfd: {}", errno_text(&e)))?
            }
            BackendKind::File { mem_path } => {
                open_store(Path::new(mem_path), spec.size).map_err(|e| {
                    format!(
                        "can't open backing store {mem_path} for guest RAM: {}",
                        errno_text(&e)
                    )
                })?
            }
        };
        if spec.prealloc {
            preallocate(fd.as_fd(), spec.size)
                .map_err(|e| format!("failed to preallocate pages: {}", errno_text(&e)))?;
        }
        Ok(MemoryBackend { spec, fd })
    }

    pub fn share(&self) -> bool {
        self.spec
            .share
            .unwrap_or(matches!(self.spec.kind, BackendKind::Memfd))
    }

    /// The memory, for the process that maps it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// mem-path: a directory gets a new unlinked file of its own (QEMU's mkstemp); a file
/// is opened or created, and grown to `size` if it is shorter.
fn open_store(path: &Path, size: u64) -> std::io::Result<OwnedFd> {
    let file = if path.is_dir() {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags_tmpfile()
            .open(path)?
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?
    };
    if file.metadata()?.len() < size {
        file.set_len(size)?;
    }
    Ok(file.into())
}

/// O_TMPFILE: the file has no name, so nothing is left behind in the directory.
trait TmpFile {
    fn custom_flags_tmpfile(&mut self) -> &mut Self;
}

impl TmpFile for OpenOptions {
    fn custom_flags_tmpfile(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_TMPFILE)
    }
}

/// prealloc=on: the memory is allocated now, so the guest never meets a host without it.
fn preallocate(fd: BorrowedFd<'_>, size: u64) -> std::io::Result<()> {
    let len = i64::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fallocate on an fd we hold, within a length checked above.
    if unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The file's length (tests).
#[cfg(test)]
fn len(fd: BorrowedFd<'_>) -> u64 {
    std::fs::File::from(fd.try_clone_to_owned().unwrap())
        .metadata()
        .unwrap()
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ram_backend_is_a_memfd_of_its_size() {
        let m =
            MemoryBackend::create(MemoryBackendSpec::new("m0", BackendKind::Ram, 1 << 20)).unwrap();
        assert_eq!(len(m.fd()), 1 << 20);
        assert!(!m.share());
        let link = std::fs::read_link(format!("/proc/self/fd/{}", m.fd().as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy().contains("memfd:flotilla-mem-m0"),
            "{link:?}"
        );
    }

    #[test]
    fn a_file_backend_grows_its_file_or_takes_a_directory() {
        let dir = std::env::temp_dir().join(format!("flotilla-mb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        let spec = |p: &Path| {
            MemoryBackendSpec::new(
                "f",
                BackendKind::File {
                    mem_path: p.to_string_lossy().into_owned(),
                },
                2 << 20,
            )
        };
        let m = MemoryBackend::create(spec(&path)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
        drop(m);
        let m = MemoryBackend::create(spec(&dir)).unwrap();
        assert_eq!(len(m.fd()), 2 << 20);
        // The directory holds only the file made above: the temporary one has no name.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let missing = dir.join("no/such/dir/mem");
        let e = MemoryBackend::create(spec(&missing)).unwrap_err();
        assert_eq!(
            e,
            format!(
                "can't open backing store {} for guest RAM: No such file or directory",
                missing.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prealloc_allocates_the_blocks() {
        let mut spec = MemoryBackendSpec::new("p", BackendKind::Memfd, 1 << 20);
        spec.prealloc = true;
        let m = MemoryBackend::create(spec).unwrap();
        let f = std::fs::File::from(m.fd().try_clone_to_owned().unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(f.metadata().unwrap().blocks() * 512 >= 1 << 20);
    }
}
