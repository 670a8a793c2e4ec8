//! Shared memory between processes: memfds and their shared mappings (a disk's counters
//! page, its dirty bitmaps, a throttle group's state), made in one place.

use std::ffi::CStr;
use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// A new memfd of `len` zero bytes, closed on exec; `seal_shrink`: it can never be made
/// shorter, so a peer cannot make another process's mapping of it fault.
pub fn memfd(name: &CStr, len: u64, seal_shrink: bool) -> std::io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC
        | if seal_shrink {
            libc::MFD_ALLOW_SEALING
        } else {
            0
        };
    // SAFETY: memfd_create with a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is ours alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    File::from(fd.try_clone()?).set_len(len)?;
    if seal_shrink {
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// The length of the file behind `fd`.
pub fn file_len(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    Ok(File::from(fd.try_clone_to_owned()?).metadata()?.len())
}

/// The byte ranges of the first `len` bytes of `fd` that hold memory: a memfd's pages
/// that were never written are holes, and reading them through a mapping would allocate
/// them.
pub fn data_ranges(fd: BorrowedFd<'_>, len: u64) -> std::io::Result<Vec<Range<u64>>> {
    let end = i64::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut out = Vec::new();
    let mut at = 0i64;
    while at < end {
        // SAFETY: lseek on an fd the caller holds.
        let data = unsafe { libc::lseek(fd.as_raw_fd(), at, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data from `at` on.
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(out),
                _ => Err(e),
            };
        }
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd.as_raw_fd(), data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        out.push(data as u64..hole as u64);
        at = hole;
    }
    Ok(out)
}

/// A read-write shared mapping of the first `len` bytes of a file; unmapped on drop.
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl SharedMapping {
    /// Maps `len` bytes of `fd`, which the caller has checked to be at least that long.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> std::io::Result<SharedMapping> {
        // SAFETY: a fresh shared mapping at an address the kernel picks, where nothing
        // else is; the caller checked the file's length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mmap gave address 0"))?;
        Ok(SharedMapping { ptr, len })
    }

    /// Its start: page-aligned, so aligned for any atomic.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; no reference into it outlives its owner.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
