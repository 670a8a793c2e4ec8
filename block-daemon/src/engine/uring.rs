//! The io_uring engine: reads, writes and flushes go to the kernel as submissions (many in
//! flight per queue). The queue's thread watches the ring's own fd next to the guest's
//! kicks: it polls readable while completions wait in the ring, so reaping them takes no
//! system call (an eventfd registered with the ring would need a read to clear it).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};
use vm_memory::GuestMemoryMmap;

use virtio::blk::S_IOERR;

use super::buffers::{data_buffers, iovecs, DataBuffers};
use super::inline::{execute_inline, Outcome};
use super::interface::{errno_of, Done, Engine, Op};
use super::mapped::{
    outcome, route, slice_iovecs, through_format, zero_guest, zero_iovecs, Piece, Route, Windows,
};
use super::sync::SyncEngine;
use super::transfer::{skip, transfer};
use crate::disk::Disk;
use crate::formats::MapGuard;
use crate::log_limit::LogLimit;
use crate::request::{Kind, Request};
use crate::warn_limited;

static FAILED: LogLimit = LogLimit::new();

/// One submission of a request: a read or write of `len` bytes at `offset` of `fd`
/// from or into `iovecs` (a flush: no iovecs, no length).
struct Flying {
    fd: RawFd,
    offset: u64,
    len: u64,
    iovecs: Vec<libc::iovec>,
}

struct InFlight {
    head: u16,
    status: *mut u8,
    op: Op,
    bytes: u64,
    started: Instant,
    /// What went to the kernel (one per extent of a split request); their iovecs do
    /// not move until the request completes.
    pieces: Vec<Flying>,
    /// Pieces the kernel has not completed.
    pending: usize,
    /// The first failure of a piece.
    error: Option<std::io::Error>,
    /// The bounce buffer of an O_DIRECT request whose guest buffers are unaligned.
    buffers: Option<DataBuffers>,
    /// The format's mapping stays valid (its clusters are not handed out again) until
    /// the kernel is done with them (and a write's commit runs when it completes).
    guard: Option<MapGuard>,
    /// A write's shared windows (4 KiB-sector devices: see `mapped`), held until it
    /// completes.
    windows: Windows,
    /// Keeps the guest memory mapped until the kernel is done with it.
    _mem: Arc<GuestMemoryMmap>,
}

/// The pieces of a request: one (no allocation, the fast path) or several.
enum Pieces {
    One(Piece),
    Many(Vec<Piece>),
}

impl Pieces {
    fn as_slice(&self) -> &[Piece] {
        match self {
            Pieces::One(p) => std::slice::from_ref(p),
            Pieces::Many(v) => v,
        }
    }
}

/// Submissions go to the kernel in groups of this many while a batch of requests is
/// parsed (the rest at the end of the batch), not all at once at its end: the disk then
/// gets a stream rather than bursts of 32, which it served with a longer latency per
/// request (bench/blk, O_DIRECT 4k QD32: +10-28% IOPS, docs/benchmarks.md "Submission
/// in groups"), for 8 enters per 32 requests rather than 1.
const SUBMIT_EVERY: usize = 4;

/// A completion's user data: the slot in the low half, the piece in the high half.
fn user_data(slot: usize, piece: usize) -> u64 {
    slot as u64 | (piece as u64) << 32
}

// SAFETY: the pointers address the shared guest RAM mapping or owned buffers.
unsafe impl Send for InFlight {}

pub struct UringEngine {
    disk: Arc<Disk>,
    ring: IoUring,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// Requests that finished without the kernel (inline ones, submission failures).
    ready: Vec<Done>,
    /// When every slot is busy, requests run synchronously instead of waiting.
    overflow: SyncEngine,
    pending_submit: bool,
    /// Submissions pushed since the last enter.
    queued: usize,
    /// Completions taken off the ring (kept to save an allocation per reap).
    reaped: Vec<(u64, i32)>,
    /// The kernel took COOP_TASKRUN (new_ring).
    coop_taskrun: bool,
}

/// io_uring_enter's flag to reap completions (linux/io_uring.h; the crate keeps its own
/// copy private).
const IORING_ENTER_GETEVENTS: u32 = 1;

/// The engine's ring. COOP_TASKRUN: the kernel does not interrupt the worker (an IPI) to
/// finish a request as task work while the worker runs; it sets the ring's TASKRUN flag
/// instead, which a watching worker sees (`has_completions`), and a sleeping worker is
/// woken as before. Kernels before 5.19 refuse the flags: then a plain ring.
fn new_ring(depth: u32) -> std::io::Result<(IoUring, bool)> {
    match IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(depth)
    {
        Ok(ring) => Ok((ring, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((IoUring::new(depth)?, false)),
        Err(e) => Err(e),
    }
}

impl UringEngine {
    pub fn new(disk: Arc<Disk>, depth: u32) -> std::io::Result<UringEngine> {
        let (ring, coop_taskrun) = new_ring(depth)?;
        Ok(UringEngine {
            coop_taskrun,
            overflow: SyncEngine::new(disk.clone()),
            disk,
            ring,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth as usize).rev().collect(),
            ready: Vec::new(),
            pending_submit: false,
            queued: 0,
            reaped: Vec::with_capacity(depth as usize),
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

    /// What the kernel's `result` says about piece `p` of `f`: a short transfer is
    /// finished here (the rest of it tells the real error, if any).
    fn piece_result(f: &mut InFlight, p: usize, result: i32) -> std::io::Result<()> {
        let write = f.op == Op::Write;
        let Some(piece) = f.pieces.get_mut(p) else {
            return Err(std::io::Error::other(format!("no piece {p}")));
        };
        if result < 0 {
            return Err(std::io::Error::from_raw_os_error(-result));
        }
        let done = result as u64;
        if done == piece.len {
            return Ok(());
        }
        if piece.iovecs.is_empty() || done > piece.len {
            return Err(std::io::Error::other(format!(
                "{result} of {} bytes",
                piece.len
            )));
        }
        transfer(
            piece.fd,
            skip(&mut piece.iovecs, done as usize),
            piece.offset + done,
            write,
        )
    }

    /// What the guest hears of `f`, all of whose pieces completed.
    fn outcome(f: &mut InFlight) -> Outcome {
        match f.error.take() {
            Some(e) => {
                warn_limited!(FAILED, "{:?} of {} bytes: {e}", f.op, f.bytes);
                Outcome::failed(errno_of(&e))
            }
            None if f.op == Op::Read => {
                if let Some(b) = f.buffers.as_mut() {
                    b.finish_read(f.bytes as usize);
                }
                Outcome::ok(f.bytes as u32 + 1)
            }
            None => Outcome::ok(1),
        }
    }
}

impl UringEngine {
    /// Submissions pushed that the kernel has not been handed yet.
    #[cfg(test)]
    pub fn unsubmitted(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Whether the kernel finishes requests without interrupting this thread.
    #[cfg(test)]
    pub fn coop_taskrun(&self) -> bool {
        self.coop_taskrun
    }

    /// Waits for this ring's writes that hold windows (4 KiB-sector devices only) before
    /// the format works in this thread: a read-modify-write there would wait for their
    /// windows, which only this thread releases (when it reaps them). Their completions
    /// wait in `ready`.
    fn settle_windows(&mut self) {
        while self
            .slots
            .iter()
            .any(|s| s.as_ref().is_some_and(|f| !f.windows.is_empty()))
        {
            self.queued = 0;
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::error!("io_uring wait: {e}");
                    return;
                }
            }
            let mut done = std::mem::take(&mut self.ready);
            self.reap(&mut done);
            self.ready = done;
        }
    }

    /// The guest's completion of `f`, whose pieces (and commit) are done.
    fn done(f: &mut InFlight) -> Done {
        let outcome = Self::outcome(f);
        Done {
            head: f.head,
            status: f.status,
            code: outcome.code,
            used_len: outcome.used_len,
            op: f.op,
            bytes: f.bytes,
            started: f.started,
            error: outcome.error,
        }
    }

    /// A request finished here, now.
    fn finished(&mut self, head: u16, req: &Request, started: Instant, outcome: Outcome) {
        self.ready.push(outcome.done(head, req, started));
    }
}

impl Engine for UringEngine {
    fn submit(&mut self, head: u16, req: Request, mem: Arc<GuestMemoryMmap>) {
        let started = req.arrived;
        let op = Op::of(&req.kind);
        let direct = self.disk.cache().direct();
        // Where a read or write goes (a flush: the fd whose sync is all it takes).
        let (pieces, guard, windows) = match req.kind {
            // Buffered writes only copy into the page cache; io_uring hands them to its
            // worker threads, which measured slower (bench/blk) than writing them here.
            Kind::Write if !direct => return self.overflow.submit(head, req, mem),
            Kind::Read | Kind::Write => match route(&self.disk, &req) {
                Ok(Route::File {
                    fd,
                    offset,
                    guard,
                    windows,
                }) => {
                    let whole = Piece::File {
                        fd,
                        offset,
                        at: 0,
                        len: req.data_len,
                    };
                    (Pieces::One(whole), Some(guard), windows)
                }
                Ok(Route::Split {
                    pieces,
                    guard,
                    windows,
                }) => (Pieces::Many(pieces), Some(guard), windows),
                Ok(Route::Zero) => {
                    zero_guest(&req.data);
                    return self.finished(head, &req, started, outcome(&req, Ok(())));
                }
                Ok(Route::Format) => {
                    self.settle_windows();
                    let result = through_format(&self.disk, &req);
                    return self.finished(head, &req, started, outcome(&req, result));
                }
                Err(e) => return self.finished(head, &req, started, outcome(&req, Err(e))),
            },
            Kind::Flush => match self.disk.flush_fd() {
                Some(fd) if !self.disk.cache().no_flush() => (
                    Pieces::One(Piece::File {
                        fd,
                        offset: 0,
                        at: 0,
                        len: 0,
                    }),
                    None,
                    Windows::new(),
                ),
                _ => {
                    self.settle_windows();
                    let outcome = execute_inline(&self.disk, &req);
                    return self.finished(head, &req, started, outcome);
                }
            },
            _ => {
                self.settle_windows();
                let outcome = execute_inline(&self.disk, &req);
                return self.finished(head, &req, started, outcome);
            }
        };
        // A buffered read of data in the page cache is a copy: done here at once, it
        // skips the ring and a trip through epoll (bench/blk
        // measured that trip as most of a cached read's cost). Data not cached makes
        // RWF_NOWAIT fail at once, and the read goes to the ring.
        if let Pieces::One(Piece::File { fd, offset, .. }) = pieces {
            if req.kind == Kind::Read && !direct && self.read_cached(&req, fd, offset) {
                let ok = Outcome::ok(req.data_len as u32 + 1);
                return self.finished(head, &req, started, ok);
            }
        }
        let Some(slot) = self.free.pop() else {
            // Every slot is busy: done here, synchronously (mapped again there).
            drop((guard, windows));
            return self.overflow.submit(head, req, mem);
        };
        let mut flight = InFlight {
            head,
            status: req.status,
            op,
            bytes: req.image_bytes(),
            started,
            pieces: Vec::with_capacity(pieces.as_slice().len()),
            pending: 0,
            error: None,
            buffers: None,
            guard,
            windows,
            _mem: mem,
        };
        let mut iovecs = Vec::new();
        if req.kind != Kind::Flush {
            match data_buffers(&self.disk, &req) {
                Some(mut b) => {
                    iovecs = std::mem::take(&mut b.iovecs);
                    flight.buffers = Some(b);
                }
                None => {
                    self.slots[slot] = Some(flight);
                    return self.fail(slot, "no memory for a bounce buffer", libc::ENOMEM);
                }
            }
        }
        // One piece (the fast path) takes the iovecs as they are; pieces of a split
        // request take their part of them, and zeroes are read at once.
        let single = matches!(pieces, Pieces::One(_));
        for &piece in pieces.as_slice() {
            match piece {
                Piece::File {
                    fd,
                    offset,
                    at,
                    len,
                } => flight.pieces.push(Flying {
                    fd,
                    offset,
                    len: len as u64,
                    iovecs: if single {
                        std::mem::take(&mut iovecs)
                    } else {
                        slice_iovecs(&iovecs, at, len)
                    },
                }),
                Piece::Zero { at, len } => zero_iovecs(&slice_iovecs(&iovecs, at, len)),
            }
        }
        let count = flight.pieces.len();
        // The iovecs' memory stays where it is when `flight` moves into its slot.
        self.slots[slot] = Some(flight);
        let mut pushed = 0;
        for i in 0..count {
            let Some(p) = self.slots[slot].as_ref().and_then(|f| f.pieces.get(i)) else {
                break;
            };
            let fd = types::Fd(p.fd);
            let (ptr, n) = (p.iovecs.as_ptr(), p.iovecs.len() as u32);
            let entry = match req.kind {
                Kind::Read => opcode::Readv::new(fd, ptr, n).offset(p.offset).build(),
                Kind::Write => opcode::Writev::new(fd, ptr, n).offset(p.offset).build(),
                _ => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            }
            .user_data(user_data(slot, i));
            // SAFETY: the iovecs and the memory they describe live in `slots[slot]`
            // until every completion for `slot` is reaped.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                // The kernel has not taken earlier entries yet: hand them over and
                // retry once.
                let _ = self.ring.submit();
                // SAFETY: as above.
                if unsafe { self.ring.submission().push(&entry) }.is_err() {
                    break;
                }
            }
            pushed += 1;
        }
        if pushed == 0 {
            return self.fail(slot, "io_uring submission queue full", libc::EAGAIN);
        }
        if let Some(f) = self.slots[slot].as_mut() {
            f.pending = pushed;
            if pushed < count {
                // What went keeps the request in flight; it fails when that is back.
                warn_limited!(FAILED, "io_uring submission queue full");
                f.error = Some(std::io::Error::from_raw_os_error(libc::EAGAIN));
            }
        }
        self.pending_submit = true;
        self.queued += pushed;
        if self.queued >= SUBMIT_EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.queued = 0;
        if std::mem::take(&mut self.pending_submit) {
            if let Err(e) = self.ring.submit() {
                log::error!("io_uring submit: {e}");
            }
        }
    }

    fn reap(&mut self, done: &mut Vec<Done>) {
        done.append(&mut self.ready);
        self.overflow.reap(done);
        let mut completions = std::mem::take(&mut self.reaped);
        loop {
            completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            // Completions beyond the ring's room (a split request has a piece per extent)
            // wait in the kernel, and keep the ring's fd readable, until an enter moves
            // them in.
            if !self.ring.submission().cq_overflow() {
                break;
            }
            if let Err(e) = self.ring.submit() {
                log::error!("io_uring overflow flush: {e}");
                break;
            }
        }
        let mut committing = Vec::new();
        for &(data, result) in &completions {
            let (slot, piece) = ((data & 0xffff_ffff) as usize, (data >> 32) as usize);
            let Some(f) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                log::error!("io_uring completion for unknown slot {slot}");
                continue;
            };
            if let Err(e) = Self::piece_result(f, piece, result) {
                f.error.get_or_insert(e);
            }
            f.pending = f.pending.saturating_sub(1);
            if f.pending > 0 {
                continue;
            }
            let Some(mut f) = self.slots[slot].take() else {
                continue;
            };
            self.free.push(slot);
            if let Some(g) = f.guard.take() {
                if g.has_commit() {
                    // Committed below, together with the others of this batch.
                    let written = f.error.is_none();
                    committing.push((f, g, written));
                    continue;
                }
            }
            done.push(Self::done(&mut f));
        }
        if !committing.is_empty() {
            // The format links what the batch's writes allocated with as few metadata
            // writes as it can (qcow2: one per L2 table), before the guest hears.
            let (flights, ends): (Vec<_>, Vec<_>) =
                committing.into_iter().map(|(f, g, w)| (f, (g, w))).unzip();
            let results = self.disk.format().finish_writes(ends);
            for (mut f, r) in flights.into_iter().zip(results) {
                if let Err(e) = r {
                    f.error.get_or_insert(e.into_io());
                }
                done.push(Self::done(&mut f));
            }
        }
        completions.clear();
        self.reaped = completions;
    }

    fn drain(&mut self, done: &mut Vec<Done>) {
        self.pending_submit = false;
        self.queued = 0;
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

    fn has_completions(&mut self) -> bool {
        if !self.ready.is_empty() {
            return true;
        }
        if self.coop_taskrun
            && self.ring.completion().is_empty()
            && self.ring.submission().taskrun()
        {
            // Finished requests wait as task work (COOP_TASKRUN, see new_ring): entering
            // the kernel runs it and puts their completions on the ring.
            // SAFETY: io_uring_enter with nothing to submit, no minimum and no argument.
            let _ = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(0, 0, IORING_ENTER_GETEVENTS, None)
            };
        }
        !self.ring.completion().is_empty()
    }

    fn notifier(&self) -> Option<RawFd> {
        Some(self.ring.as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
