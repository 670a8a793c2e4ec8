//! The synchronous engine: each request is performed in the queue's thread before the
//! next is taken.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use super::buffers::data_buffers;
use super::inline::{execute_inline, Outcome};
use super::interface::{Done, Engine, Op};
use crate::disk::Disk;
use crate::log_limit::LogLimit;
use crate::request::{Kind, Request};
use crate::warn_limited;

static FAILED: LogLimit = LogLimit::new();

pub struct SyncEngine {
    disk: Arc<Disk>,
    done: Vec<Done>,
}

impl SyncEngine {
    pub fn new(disk: Arc<Disk>) -> SyncEngine {
        SyncEngine {
            disk,
            done: Vec::new(),
        }
    }
}

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

impl Engine for SyncEngine {
    fn submit(&mut self, head: u16, req: Request, _mem: Arc<GuestMemoryMmap>) {
        let started = Instant::now();
        let outcome = match req.kind {
            Kind::Read | Kind::Write => {
                let write = req.kind == Kind::Write;
                let result = match data_buffers(&self.disk, &req) {
                    Some(mut bufs) => {
                        transfer(self.disk.fd(), &mut bufs.iovecs, req.offset(), write)
                            .map(|()| bufs.finish_read(req.data_len))
                    }
                    None => Err(std::io::Error::from_raw_os_error(libc::ENOMEM)),
                };
                match result {
                    Ok(()) => Outcome::ok(if write { 1 } else { req.data_len as u32 + 1 }),
                    Err(e) => {
                        warn_limited!(
                            FAILED,
                            "{:?} of {} bytes at sector {}: {e}",
                            req.kind,
                            req.data_len,
                            req.sector
                        );
                        Outcome::failed(&e)
                    }
                }
            }
            _ => execute_inline(&self.disk, &req),
        };
        self.done.push(Done {
            head,
            status: req.status,
            code: outcome.code,
            used_len: outcome.used_len,
            op: Op::of(&req.kind),
            bytes: req.image_bytes(),
            started,
            error: outcome.error,
        });
    }

    fn reap(&mut self, done: &mut Vec<Done>) {
        done.append(&mut self.done);
    }

    fn notifier(&self) -> Option<RawFd> {
        None
    }

    fn in_flight(&self) -> usize {
        0
    }
}
