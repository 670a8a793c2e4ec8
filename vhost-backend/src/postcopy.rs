//! Postcopy migration at the destination (vhost-user POSTCOPY_ADVISE, _LISTEN, _END and
//! the acknowledged memory table in between). The backend makes a userfaultfd of its own
//! at ADVISE and gives the frontend a copy; while the frontend listens, every mapping of
//! guest memory this process makes is registered with it (MISSING mode on the shared
//! memfd), so that a touch of a page that has not arrived waits for it instead of
//! reading zeroes. The migration agent reads the faults on the frontend's copy, places
//! the pages and wakes the waiting threads through it.
//!
//! A sandboxed daemon cannot make a userfaultfd with the system call: the gateway hands
//! it /dev/userfaultfd's fd (`ipc::userfault::DEVICE`), which the daemon puts in a
//! `UserfaultDevice` shared with the connections it serves. Without one, ADVISE fails
//! and the frontend fails the migration; the connection goes on.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use ipc::userfault::{self, UserfaultError, DEVICE};
use parking_lot::Mutex;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

#[derive(Debug, thiserror::Error)]
pub enum PostcopyError {
    #[error("no {DEVICE} fd was handed to this daemon (the gateway gives it before a postcopy migration)")]
    NoDevice,
    #[error("the call came without {DEVICE}")]
    NoFd,
    #[error(transparent)]
    Userfault(#[from] UserfaultError),
    #[error("a copy of the userfaultfd for the frontend: {0}")]
    Copy(std::io::Error),
    #[error("postcopy was advised already on this connection")]
    Advised,
    #[error("postcopy is not advised on this connection")]
    NotAdvised,
    #[error("the frontend is not listening for faults: a memory table cannot be registered")]
    NotListening,
    #[error("more than {MAX_TABLES} memory tables while listening")]
    TooManyTables,
}

/// Where a daemon keeps the /dev/userfaultfd fd it was handed, reachable from its
/// control thread and from every connection it serves (clones share it). Kept until a
/// connection's POSTCOPY_END: the next migration brings its own.
#[derive(Clone, Default)]
pub struct UserfaultDevice {
    fd: Arc<Mutex<Option<OwnedFd>>>,
}

impl UserfaultDevice {
    pub fn new() -> UserfaultDevice {
        UserfaultDevice::default()
    }

    /// Keeps `fd` for the next POSTCOPY_ADVISE (replacing one kept before), once it has
    /// made a userfaultfd here: an fd that cannot is refused now, where the one who sent
    /// it hears why, rather than at ADVISE, which the frontend hears of without a reason.
    pub fn set(&self, fd: OwnedFd) -> Result<(), PostcopyError> {
        drop(userfault::create(fd.as_fd())?);
        *self.fd.lock() = Some(fd);
        Ok(())
    }

    /// The gateway's Userfault call: its one fd, kept as `set` keeps it.
    pub fn take_from(&self, fds: Vec<OwnedFd>) -> Result<(), PostcopyError> {
        self.set(fds.into_iter().next().ok_or(PostcopyError::NoFd)?)
    }

    /// A device fd is kept.
    pub fn is_set(&self) -> bool {
        self.fd.lock().is_some()
    }

    /// A new userfaultfd for this process.
    fn create(&self) -> Result<OwnedFd, PostcopyError> {
        let device = self.fd.lock();
        let fd = device.as_ref().ok_or(PostcopyError::NoDevice)?;
        Ok(userfault::create(fd.as_fd())?)
    }

    fn clear(&self) {
        *self.fd.lock() = None;
    }
}

/// Memory tables a connection may register while listening: QEMU sends one per device
/// start; each stays mapped until END (see `Postcopy::register`).
const MAX_TABLES: usize = 8;

/// One memory table registered with the userfaultfd, mapped while held here.
struct Registered {
    /// Held for the ranges to stay mapped.
    _mem: Arc<GuestMemoryMmap>,
    /// (address in this process, length), page aligned.
    ranges: Vec<(u64, u64)>,
}

/// A connection's postcopy, from ADVISE to END.
pub(crate) struct Postcopy {
    device: UserfaultDevice,
    uffd: OwnedFd,
    listening: bool,
    /// Every table registered while listening, the latest last. An earlier one stays
    /// mapped and registered until END: a thread still at work in it waits for its pages
    /// there too (rather than reading zeroes), and END's unregistration wakes it.
    tables: Vec<Registered>,
    /// Memory the rings may not use yet: the table registered last, until the frontend
    /// acknowledges it (it can resolve faults there from then on), or the memory of
    /// before LISTEN, which nobody registered, until the table after it.
    held: Option<Arc<GuestMemoryMmap>>,
}

fn page_size() -> u64 {
    // SAFETY: sysconf with a constant argument.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

impl Postcopy {
    /// POSTCOPY_ADVISE: a userfaultfd for this process, and the copy the frontend gets.
    pub fn advise(device: &UserfaultDevice) -> Result<(Postcopy, File), PostcopyError> {
        let uffd = device.create()?;
        let copy = uffd.try_clone().map_err(PostcopyError::Copy)?;
        let postcopy = Postcopy {
            device: device.clone(),
            uffd,
            listening: false,
            tables: Vec::new(),
            held: None,
        };
        Ok((postcopy, File::from(copy)))
    }

    /// POSTCOPY_LISTEN: tables from now on are registered. `current`, the memory mapped
    /// before, is registered nowhere: it is held from the rings until the next table.
    pub fn listen(&mut self, current: Option<Arc<GuestMemoryMmap>>) {
        self.listening = true;
        self.held = current;
    }

    pub fn listening(&self) -> bool {
        self.listening
    }

    /// SET_MEM_TABLE while listening: registers every region of `mem` as this process
    /// maps it, and holds `mem` from the rings until the frontend's ack.
    pub fn register(&mut self, mem: Arc<GuestMemoryMmap>) -> Result<(), PostcopyError> {
        if !self.listening {
            return Err(PostcopyError::NotListening);
        }
        if self.tables.len() >= MAX_TABLES {
            return Err(PostcopyError::TooManyTables);
        }
        let page = page_size();
        let ranges: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| (r.as_ptr() as u64, r.len().div_ceil(page) * page))
            .collect();
        for &(addr, len) in &ranges {
            // On failure `mem` is dropped, unmapped, and what was registered with it
            // goes with the mapping.
            userfault::register(self.uffd.as_fd(), addr, len)?;
        }
        self.held = Some(mem.clone());
        self.tables.push(Registered { _mem: mem, ranges });
        Ok(())
    }

    /// The frontend acknowledged the last table: the memory the rings may use now, if
    /// one was waiting for it.
    pub fn acknowledged(&mut self) -> Option<Arc<GuestMemoryMmap>> {
        if self.tables.is_empty() {
            // What LISTEN held stays held: nothing registered has been acknowledged.
            return None;
        }
        self.held.take()
    }

    /// POSTCOPY_END: every page has arrived. Unregisters every table, closes the
    /// userfaultfd and lets go of the device fd. Returns the memory the rings may use
    /// again, if some was still held, and how unregistering went (a range left
    /// registered is released with the userfaultfd once the frontend closes its copy).
    pub fn end(self) -> (Option<Arc<GuestMemoryMmap>>, Result<(), PostcopyError>) {
        let mut result = Ok(());
        for table in &self.tables {
            for &(addr, len) in &table.ranges {
                if let Err(e) = userfault::unregister(self.uffd.as_fd(), addr, len) {
                    result = result.and(Err(e.into()));
                }
            }
        }
        self.device.clear();
        (self.held, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};

    /// The fd the gateway hands over (a daemon's Userfault call) is kept once it has made
    /// a userfaultfd; a call without one, or with another file, is refused and keeps
    /// nothing. Needs /dev/userfaultfd (root here).
    #[test]
    fn a_userfault_call_keeps_dev_userfaultfd_and_refuses_anything_else() {
        let userfault = UserfaultDevice::new();
        let none = userfault.take_from(Vec::new());
        assert!(matches!(none, Err(PostcopyError::NoFd)), "{none:?}");
        let null = OwnedFd::from(File::open("/dev/null").unwrap());
        assert!(userfault.take_from(vec![null]).is_err());
        assert!(!userfault.is_set());
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE)
            .unwrap_or_else(|e| panic!("{DEVICE} is needed: {e}"));
        userfault.take_from(vec![OwnedFd::from(device)]).unwrap();
        assert!(userfault.is_set());
    }
}
