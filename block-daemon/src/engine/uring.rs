//! The io_uring engine: reads, writes and flushes go to the kernel as submissions (many in
//! flight per queue); completions are signalled on an eventfd registered with the ring,
//! which the queue's thread watches next to the guest's kicks.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use virtio::blk::S_IOERR;

use super::buffers::{data_buffers, iovecs, DataBuffers};
use super::inline::{execute_inline, Outcome};
use super::interface::{errno_of, Done, Engine, Op};
use super::mapped::{outcome, route, through_format, zero_guest, Route};
use super::sync::SyncEngine;
use super::transfer::{skip, transfer};
use crate::disk::Disk;
use crate::formats::MapGuard;
use crate::log_limit::LogLimit;
use crate::request::{Kind, Request};
use crate::warn_limited;

static FAILED: LogLimit = LogLimit::new();

struct InFlight {
    head: u16,
    status: *mut u8,
    op: Op,
    bytes: u64,
    /// The file it goes to and where in it it starts (to finish a short transfer).
    fd: RawFd,
    offset: u64,
    started: Instant,
    buffers: Option<DataBuffers>,
    /// The format's mapping stays valid (its clusters are not handed out again) until
    /// the kernel is done with them.
    _guard: Option<MapGuard>,
    /// Keeps the guest memory mapped until the kernel is done with it.
    _mem: Arc<GuestMemoryMmap>,
}

// SAFETY: the pointers address the shared guest RAM mapping or owned buffers.
unsafe impl Send for InFlight {}

pub struct UringEngine {
    disk: Arc<Disk>,
    ring: IoUring,
    eventfd: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Requests that finished without the kernel (inline ones, submission failures).
    ready: Vec<Done>,
    /// When every slot is busy, requests run synchronously instead of waiting.
    overflow: SyncEngine,
    pending_submit: bool,
    /// The completion eventfd may be set: a request went to the ring since it was last
    /// read with nothing left to reap. Cached reads and buffered writes never touch the
    /// ring, and then reaping costs no system call.
    eventfd_dirty: bool,
}

impl UringEngine {
    pub fn new(disk: Arc<Disk>, depth: u32) -> std::io::Result<UringEngine> {
        let ring = IoUring::new(depth)?;
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(UringEngine {
            overflow: SyncEngine::new(disk.clone()),
            disk,
            ring,
            eventfd,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth as usize).rev().collect(),
            ready: Vec::new(),
            pending_submit: false,
            eventfd_dirty: false,
        })
    }

    /// Reads `req` from the page cache (of `fd` at `offset`) without blocking; false if
    /// any of it is not there (nothing is reported: the caller then reads it through
    /// the ring).
    fn read_cached(&self, req: &Request, fd: RawFd, offset: u64) -> bool {
        let iov = iovecs(&req.data);
        // SAFETY: the iovecs describe guest memory that request::parse checked and that
        // the caller keeps mapped; preadv2 writes at most their lengths.
        let n = unsafe {
            libc::preadv2(
                fd,
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        n >= 0 && n as usize == req.data_len
    }

    fn fail(&mut self, slot: usize, why: &str, errno: i32) {
        if let Some(f) = self.slots[slot].take() {
            warn_limited!(FAILED, "{why}");
            self.ready.push(Done {
                head: f.head,
                status: f.status,
                code: S_IOERR,
                used_len: 1,
                op: f.op,
                bytes: f.bytes,
                started: f.started,
                error: Some(errno),
            });
        }
        self.free.push(slot);
    }

    /// What a completion says: the kernel's result for `f`, a short transfer finished
    /// here (the rest of it tells the real error, if any).
    fn outcome(&self, f: &mut InFlight, result: i32) -> Outcome {
        let expected = if f.op == Op::Flush { 0 } else { f.bytes };
        let error = if result < 0 {
            Err(std::io::Error::from_raw_os_error(-result))
        } else if result as u64 == expected {
            Ok(())
        } else {
            let done = result as usize;
            let write = f.op == Op::Write;
            match f.buffers.as_mut() {
                Some(b) => transfer(
                    f.fd,
                    skip(&mut b.iovecs, done),
                    f.offset + done as u64,
                    write,
                ),
                None => Err(std::io::Error::other(format!(
                    "{result} of {expected} bytes"
                ))),
            }
        };
        match error {
            Err(e) => {
                warn_limited!(FAILED, "{:?} of {} bytes: {e}", f.op, f.bytes);
                Outcome::failed(errno_of(&e))
            }
            Ok(()) if f.op == Op::Read => {
                if let Some(b) = f.buffers.as_mut() {
                    b.finish_read(f.bytes as usize);
                }
                Outcome::ok(f.bytes as u32 + 1)
            }
            Ok(()) => Outcome::ok(1),
        }
    }
}

impl UringEngine {
    /// A request finished here, now.
    fn finished(&mut self, head: u16, req: &Request, started: Instant, outcome: Outcome) {
        self.ready.push(Done {
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
}

impl Engine for UringEngine {
    fn submit(&mut self, head: u16, req: Request, mem: Arc<GuestMemoryMmap>) {
        let started = Instant::now();
        let op = Op::of(&req.kind);
        let direct = self.disk.cache().direct();
        // Where a read or write goes (a flush: the fd whose sync is all it takes).
        let (fd, offset, guard) = match req.kind {
            // Buffered writes only copy into the page cache; io_uring hands them to its
            // worker threads, which measured slower (bench/blk) than writing them here.
            Kind::Write if !direct => return self.overflow.submit(head, req, mem),
            Kind::Read | Kind::Write => match route(&self.disk, &req) {
                Ok(Route::File { fd, offset, guard }) => (fd, offset, Some(guard)),
                Ok(Route::Zero) => {
                    zero_guest(&req.data);
                    return self.finished(head, &req, started, outcome(&req, Ok(())));
                }
                Ok(Route::Format) => {
                    let result = through_format(&self.disk, &req);
                    return self.finished(head, &req, started, outcome(&req, result));
                }
                Err(e) => return self.finished(head, &req, started, outcome(&req, Err(e))),
            },
            Kind::Flush => match self.disk.flush_fd() {
                Some(fd) if !self.disk.cache().no_flush() => (fd, 0, None),
                _ => {
                    let outcome = execute_inline(&self.disk, &req);
                    return self.finished(head, &req, started, outcome);
                }
            },
            _ => {
                let outcome = execute_inline(&self.disk, &req);
                return self.finished(head, &req, started, outcome);
            }
        };
        // A buffered read of data in the page cache is a copy: done here at once, it
        // skips the ring, the completion eventfd and a trip through epoll (bench/blk
        // measured that trip as most of a cached read's cost). Data not cached makes
        // RWF_NOWAIT fail at once, and the read goes to the ring.
        if req.kind == Kind::Read && !direct && self.read_cached(&req, fd, offset) {
            return self.finished(head, &req, started, Outcome::ok(req.data_len as u32 + 1));
        }
        let Some(slot) = self.free.pop() else {
            // Every slot is busy: done here, synchronously (mapped again there).
            drop(guard);
            return self.overflow.submit(head, req, mem);
        };
        let mut flight = InFlight {
            head,
            status: req.status,
            op,
            bytes: req.image_bytes(),
            fd,
            offset,
            started,
            buffers: None,
            _guard: guard,
            _mem: mem,
        };
        if req.kind != Kind::Flush {
            match data_buffers(&self.disk, &req) {
                Some(b) => flight.buffers = Some(b),
                None => {
                    self.slots[slot] = Some(flight);
                    return self.fail(slot, "no memory for a bounce buffer", libc::ENOMEM);
                }
            }
        }
        let fd = types::Fd(fd);
        let entry = match (&req.kind, &flight.buffers) {
            (Kind::Read, Some(b)) => {
                opcode::Readv::new(fd, b.iovecs.as_ptr(), b.iovecs.len() as u32)
                    .offset(offset)
                    .build()
            }
            (Kind::Write, Some(b)) => {
                opcode::Writev::new(fd, b.iovecs.as_ptr(), b.iovecs.len() as u32)
                    .offset(offset)
                    .build()
            }
            _ => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(slot as u64);
        // The iovecs' memory stays where it is when `flight` moves into its slot.
        self.slots[slot] = Some(flight);
        // SAFETY: the iovecs and the memory they describe live in `slots[slot]` until the
        // completion for `slot` is reaped.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // The submission queue is as deep as the slot table, so this means the
            // kernel has not taken earlier entries yet: hand them over and retry once.
            let _ = self.ring.submit();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                return self.fail(slot, "io_uring submission queue full", libc::EAGAIN);
            }
        }
        self.pending_submit = true;
        self.eventfd_dirty = true;
    }

    fn flush(&mut self) {
        if std::mem::take(&mut self.pending_submit) {
            if let Err(e) = self.ring.submit() {
                log::error!("io_uring submit: {e}");
            }
        }
    }

    fn reap(&mut self, done: &mut Vec<Done>) {
        if self.eventfd_dirty {
            let _ = self.eventfd.read();
        }
        done.append(&mut self.ready);
        self.overflow.reap(done);
        let completions: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        // A completion posted after the read above set the eventfd again: read it next
        // time too. Nothing in flight and nothing reaped: it is clear.
        self.eventfd_dirty = self.in_flight() > 0 || !completions.is_empty();
        for (user_data, result) in completions {
            let slot = user_data as usize;
            let Some(mut f) = self.slots.get_mut(slot).and_then(Option::take) else {
                log::error!("io_uring completion for unknown slot {slot}");
                continue;
            };
            self.free.push(slot);
            let outcome = self.outcome(&mut f, result);
            done.push(Done {
                head: f.head,
                status: f.status,
                code: outcome.code,
                used_len: outcome.used_len,
                op: f.op,
                bytes: f.bytes,
                started: f.started,
                error: outcome.error,
            });
        }
    }

    fn drain(&mut self, done: &mut Vec<Done>) {
        self.pending_submit = false;
        while self.in_flight() > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("io_uring wait: {e}");
                    break;
                }
            }
            self.reap(done);
        }
        self.reap(done);
    }

    fn notifier(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
