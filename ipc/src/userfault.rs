//! userfaultfd for postcopy migration: each process that maps guest RAM at the
//! destination registers its mapping with a userfaultfd of its own (MISSING mode on the
//! shared memfd), so that a touch of a page that has not arrived yet waits rather than
//! reading zeroes; the migration agent reads those faults and places the pages.
//!
//! A userfaultfd belongs to the memory of the process that creates it. Sandboxed
//! processes may not create one with the system call (vm.unprivileged_userfaultfd is 0
//! on most hosts), so the gateway, which opens every path, opens /dev/userfaultfd and
//! hands it over: `USERFAULTFD_IOC_NEW` on it makes a userfaultfd for the caller.
//!
//! The ioctl numbers and structures are the kernel's (include/uapi/linux/userfaultfd.h);
//! libc does not have them.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

/// What /dev/userfaultfd is, for the messages that carry it and the errors naming it.
pub const DEVICE: &str = "/dev/userfaultfd";

const UFFD_API: u64 = 0xaa;
/// Faults on shared memory (memfd, shmem) in MISSING mode.
const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

const USERFAULTFD_IOC_NEW: u64 = 0xaa00;
const UFFDIO_API: u64 = 0xc018_aa3f;
const UFFDIO_REGISTER: u64 = 0xc020_aa00;
const UFFDIO_UNREGISTER: u64 = 0x8010_aa01;
const UFFDIO_WAKE: u64 = 0x8010_aa02;
const UFFDIO_COPY: u64 = 0xc028_aa03;
const UFFDIO_ZEROPAGE: u64 = 0xc020_aa04;

/// The ioctls a process needs to register its memory (vmm-core, the daemons), and the
/// ones the agent needs to resolve faults, for seccomp filters.
pub const REGISTER_IOCTLS: &[u32] = &[
    UFFDIO_API as u32,
    UFFDIO_REGISTER as u32,
    UFFDIO_UNREGISTER as u32,
    USERFAULTFD_IOC_NEW as u32,
];
pub const RESOLVE_IOCTLS: &[u32] = &[
    UFFDIO_WAKE as u32,
    UFFDIO_COPY as u32,
    UFFDIO_ZEROPAGE as u32,
];

#[derive(Debug, thiserror::Error)]
pub enum UserfaultError {
    #[error("creating a userfaultfd through {DEVICE}: {0}")]
    Create(std::io::Error),
    #[error("userfaultfd without faults on shared memory (UFFD_FEATURE_MISSING_SHMEM): {0}")]
    Api(std::io::Error),
    #[error("registering guest RAM at {addr:#x}+{len:#x} with userfaultfd: {error}")]
    Register {
        addr: u64,
        len: u64,
        error: std::io::Error,
    },
    #[error("userfaultfd {what} at {addr:#x}: {error}")]
    Resolve {
        what: &'static str,
        addr: u64,
        error: std::io::Error,
    },
    #[error("reading a userfaultfd: {0}")]
    Read(std::io::Error),
}

/// A range of guest RAM as one process maps it: where the process has it, how long it
/// is, and its guest physical address. A fault's address becomes a guest page by these.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedRange {
    pub host_addr: u64,
    pub size: u64,
    pub guest_addr: u64,
}

impl MappedRange {
    /// The guest physical address of `host` if this range maps it.
    pub fn guest(&self, host: u64) -> Option<u64> {
        let off = host.checked_sub(self.host_addr)?;
        (off < self.size).then(|| self.guest_addr + off)
    }

    /// Where this range maps guest physical address `gpa`, if it does.
    pub fn host(&self, gpa: u64) -> Option<u64> {
        let off = gpa.checked_sub(self.guest_addr)?;
        (off < self.size).then(|| self.host_addr + off)
    }
}

fn ioctl<T>(fd: BorrowedFd<'_>, request: u64, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: the request's argument is a structure of the kernel's layout (or the flags
    // word for USERFAULTFD_IOC_NEW), owned by the caller for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// A new userfaultfd for this process's memory, made through /dev/userfaultfd's fd,
/// with the API handshake done (faults on shared memory, MISSING mode). Non-blocking,
/// closed on exec.
pub fn create(device: BorrowedFd<'_>) -> Result<OwnedFd, UserfaultError> {
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_long;
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags as the argument itself.
    let fd = unsafe { libc::ioctl(device.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
    if fd < 0 {
        return Err(UserfaultError::Create(std::io::Error::last_os_error()));
    }
    // SAFETY: the ioctl returned a new descriptor nobody else owns.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_MISSING_SHMEM,
        ioctls: 0,
    };
    ioctl(std::os::fd::AsFd::as_fd(&uffd), UFFDIO_API, &mut api).map_err(UserfaultError::Api)?;
    Ok(uffd)
}

/// Faults on `[addr, addr + len)` of this process's memory (page aligned) go to `uffd`
/// from now on (MISSING mode: pages absent from the shared file).
pub fn register(uffd: BorrowedFd<'_>, addr: u64, len: u64) -> Result<(), UserfaultError> {
    let mut reg = UffdioRegister {
        range: UffdioRange { start: addr, len },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    ioctl(uffd, UFFDIO_REGISTER, &mut reg).map_err(|error| UserfaultError::Register {
        addr,
        len,
        error,
    })
}

/// The range is ordinary memory again (faults no longer wait).
pub fn unregister(uffd: BorrowedFd<'_>, addr: u64, len: u64) -> Result<(), UserfaultError> {
    let mut range = UffdioRange { start: addr, len };
    ioctl(uffd, UFFDIO_UNREGISTER, &mut range).map_err(|error| UserfaultError::Register {
        addr,
        len,
        error,
    })
}

/// How a placement went: the page is there now, or it already was (another placement
/// or a fault of another process's filled it first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    Now,
    Already,
}

/// Copies `content` (whole pages) atomically into the registered memory of `uffd`'s
/// process at `dst` (an address in that process), waking whoever waits there in it.
pub fn copy(uffd: BorrowedFd<'_>, dst: u64, content: &[u8]) -> Result<Placed, UserfaultError> {
    let mut c = UffdioCopy {
        dst,
        src: content.as_ptr() as u64,
        len: content.len() as u64,
        mode: 0,
        copy: 0,
    };
    loop {
        match ioctl(uffd, UFFDIO_COPY, &mut c) {
            Ok(()) => return Ok(Placed::Now),
            Err(e) => match e.raw_os_error() {
                Some(libc::EEXIST) => return Ok(Placed::Already),
                // Interrupted part-way (a pending signal): the rest goes again.
                Some(libc::EAGAIN) if c.copy > 0 => {
                    let done = c.copy as u64;
                    c.dst += done;
                    c.src += done;
                    c.len -= done;
                    c.copy = 0;
                }
                Some(libc::EAGAIN) | Some(libc::EINTR) => c.copy = 0,
                _ => {
                    return Err(UserfaultError::Resolve {
                        what: "copy",
                        addr: dst,
                        error: e,
                    })
                }
            },
        }
    }
}

/// Places zero-filled pages at `dst` (`len` bytes) as `copy` places data.
pub fn zero(uffd: BorrowedFd<'_>, dst: u64, len: u64) -> Result<Placed, UserfaultError> {
    let mut z = UffdioZeropage {
        range: UffdioRange { start: dst, len },
        mode: 0,
        zeropage: 0,
    };
    loop {
        match ioctl(uffd, UFFDIO_ZEROPAGE, &mut z) {
            Ok(()) => return Ok(Placed::Now),
            Err(e) => match e.raw_os_error() {
                Some(libc::EEXIST) => return Ok(Placed::Already),
                Some(libc::EAGAIN) if z.zeropage > 0 => {
                    let done = z.zeropage as u64;
                    z.range.start += done;
                    z.range.len -= done;
                    z.zeropage = 0;
                }
                Some(libc::EAGAIN) | Some(libc::EINTR) => z.zeropage = 0,
                _ => {
                    return Err(UserfaultError::Resolve {
                        what: "zero page",
                        addr: dst,
                        error: e,
                    })
                }
            },
        }
    }
}

/// Wakes the threads of `uffd`'s process that wait on `[addr, addr + len)` (the pages
/// are in the shared file now, placed through another process's userfaultfd).
pub fn wake(uffd: BorrowedFd<'_>, addr: u64, len: u64) -> Result<(), UserfaultError> {
    let mut range = UffdioRange { start: addr, len };
    ioctl(uffd, UFFDIO_WAKE, &mut range).map_err(|error| UserfaultError::Resolve {
        what: "wake",
        addr,
        error,
    })
}

/// The next fault's address, if one is queued (the fd is non-blocking: None when none
/// is). Events other than page faults (none are asked for) are skipped.
pub fn next_fault(uffd: BorrowedFd<'_>) -> Result<Option<u64>, UserfaultError> {
    // struct uffd_msg: u8 event, 7 reserved bytes, then (for a page fault) u64 flags and
    // u64 address; 32 bytes in all.
    let mut msg = [0u8; 32];
    loop {
        // SAFETY: read into a buffer we own, of its length.
        let n = unsafe { libc::read(uffd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                Some(libc::EINTR) => continue,
                _ => Err(UserfaultError::Read(e)),
            };
        }
        if n as usize != msg.len() {
            return Err(UserfaultError::Read(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("a message of {n} bytes"),
            )));
        }
        if msg[0] != UFFD_EVENT_PAGEFAULT {
            continue;
        }
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&msg[16..24]);
        return Ok(Some(u64::from_ne_bytes(addr)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn ranges_translate_both_ways() {
        let r = MappedRange {
            host_addr: 0x7f00_0000_0000,
            size: 0x10000,
            guest_addr: 0x100000,
        };
        assert_eq!(r.guest(0x7f00_0000_1234), Some(0x101234));
        assert_eq!(r.guest(0x7f00_0001_0000), None);
        assert_eq!(r.guest(0x7eff_ffff_ffff), None);
        assert_eq!(r.host(0x10ffff), Some(0x7f00_0000_ffff));
        assert_eq!(r.host(0x110000), None);
        assert_eq!(r.host(0xfffff), None);
    }

    /// A fault in one thread of a memfd mapping registered here waits until another
    /// thread places the page; a page already in the file is not placed again. Needs
    /// /dev/userfaultfd (root here).
    #[test]
    fn a_fault_waits_for_its_page() {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE)
            .unwrap_or_else(|e| panic!("{DEVICE} is needed for postcopy: {e}"));
        let uffd = create(device.as_fd()).unwrap();
        let len = 4 * 4096u64;
        let memfd = crate::shm::memfd(c"uffd-test", len, false).unwrap();
        let map = crate::shm::SharedMapping::new(memfd.as_fd(), len as usize).unwrap();
        let base = map.ptr().as_ptr() as u64;
        // Page 0 is in the file before registration: it never faults.
        // SAFETY: inside the mapping.
        unsafe { (base as *mut u8).write_volatile(7) };
        register(uffd.as_fd(), base, len).unwrap();
        let reader = std::thread::spawn(move || {
            // SAFETY: inside the mapping, which outlives the thread (joined below).
            unsafe { ((base + 2 * 4096 + 8) as *const u64).read_volatile() }
        });
        let fault = loop {
            if let Some(addr) = next_fault(uffd.as_fd()).unwrap() {
                break addr;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(fault & !4095, base + 2 * 4096);
        let mut page = vec![0u8; 4096];
        page[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(
            copy(uffd.as_fd(), base + 2 * 4096, &page).unwrap(),
            Placed::Now
        );
        assert_eq!(reader.join().unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(copy(uffd.as_fd(), base, &page).unwrap(), Placed::Already);
        assert_eq!(zero(uffd.as_fd(), base + 4096, 4096).unwrap(), Placed::Now);
        // SAFETY: inside the mapping.
        assert_eq!(unsafe { ((base + 4096) as *const u8).read_volatile() }, 0);
        wake(uffd.as_fd(), base + 3 * 4096, 4096).unwrap();
        unregister(uffd.as_fd(), base, len).unwrap();
        assert_eq!(next_fault(uffd.as_fd()).unwrap(), None);
    }
}
