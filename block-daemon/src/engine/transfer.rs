//! Moving data between iovecs and a file in the calling thread: preadv/pwritev until
//! everything moved (the kernel may do less per call), for the sync engine, a short
//! io_uring transfer's rest, and requests the uring engine cannot put in flight.

use std::os::fd::RawFd;

/// The iovecs after their first `n` bytes (the first one left is trimmed in place).
pub fn skip(iovecs: &mut [libc::iovec], n: usize) -> &mut [libc::iovec] {
    let mut iov = iovecs;
    let mut n = n;
    while n > 0 && !iov.is_empty() {
        if n >= iov[0].iov_len {
            n -= iov[0].iov_len;
            iov = &mut iov[1..];
        } else {
            // SAFETY: advancing within the same buffer (n < its length).
            iov[0].iov_base = unsafe { iov[0].iov_base.cast::<u8>().add(n).cast() };
            iov[0].iov_len -= n;
            n = 0;
        }
    }
    iov
}

/// preadv/pwritev until everything moved (the kernel may do less per call).
pub fn transfer(
    fd: RawFd,
    iovecs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> std::io::Result<()> {
    let mut iov = iovecs;
    while !iov.is_empty() {
        // SAFETY: the iovecs describe mapped memory (guest RAM or our bounce buffer).
        let n = unsafe {
            if write {
                libc::pwritev(fd, iov.as_ptr(), iov.len() as i32, offset as libc::off_t)
            } else {
                libc::preadv(fd, iov.as_ptr(), iov.len() as i32, offset as libc::off_t)
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "end of image",
            ));
        }
        offset += n as u64;
        iov = skip(iov, n as usize);
    }
    Ok(())
}
