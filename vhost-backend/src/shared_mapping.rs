//! Part of a file mapped shared and writable: memory this process and the frontend both
//! write (the inflight region, the dirty log), unmapped when dropped. Its users reach it
//! only through raw pointers, with volatile or atomic operations.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

pub(crate) struct SharedMapping {
    /// The mapping starts on the page boundary at or below the offset asked for.
    base: NonNull<u8>,
    map_len: usize,
    /// Where the bytes asked for start inside the mapping, and how many there are.
    start: usize,
    len: usize,
}

// SAFETY: the mapping is shared memory that its users reach only through raw pointers,
// with volatile or atomic operations; nothing here refers to it but `base`.
unsafe impl Send for SharedMapping {}
// SAFETY: as for Send: no reference into the mapping is handed out.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// `len` bytes of `file` from `offset` (which need not be page aligned). The file
    /// must hold all of them: a shared mapping past its end faults when touched.
    pub fn new(file: &File, offset: u64, len: usize) -> io::Result<SharedMapping> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        let end = offset.checked_add(len as u64);
        if len == 0 || end.is_none_or(|end| end > file.metadata().map_or(0, |m| m.len())) {
            return Err(invalid("the bytes to map are not all in the file"));
        }
        // SAFETY: sysconf with a constant argument.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let map_offset = offset - offset % page;
        let start = (offset - map_offset) as usize;
        let map_len = start + len;
        let file_offset =
            libc::off_t::try_from(map_offset).map_err(|_| invalid("offset out of range"))?;
        // SAFETY: a fresh shared mapping of bytes the file holds (checked above); nothing
        // else in this process refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                file_offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap gave 0"))?;
        Ok(SharedMapping {
            base,
            map_len,
            start,
            len,
        })
    }

    /// The first of the bytes asked for; `len()` of them are mapped while self lives.
    pub fn ptr(&self) -> *mut u8 {
        // SAFETY: start < map_len, inside the mapping.
        unsafe { self.base.as_ptr().add(self.start) }
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; its users hold self while they
        // reach it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}
