//! I/O engines: how parsed requests reach the image. `uring` keeps many requests in flight
//! per queue through io_uring; `sync` performs each request in the queue's thread (one at
//! a time), for kernels or sandboxes without io_uring. Both complete requests in the
//! queue's own thread, which owns that queue's used ring.

pub mod sync;
pub mod uring;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use crate::disk::Disk;
use crate::request::{Kind, Request, Segment, ID_LEN, SECTOR_SHIFT, S_IOERR, S_OK};

/// Which engine serves a node's queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Uring,
    Sync,
}

/// One engine per queue. io_uring may be missing (old kernel, seccomp): the caller
/// decides whether to fall back to `Sync`.
pub fn per_queue(
    kind: EngineKind,
    disk: &Arc<Disk>,
    queues: usize,
    depth: u32,
) -> std::io::Result<Vec<Box<dyn Engine>>> {
    (0..queues)
        .map(|_| -> std::io::Result<Box<dyn Engine>> {
            Ok(match kind {
                EngineKind::Uring => Box::new(uring::UringEngine::new(disk.clone(), depth)?),
                EngineKind::Sync => Box::new(sync::SyncEngine::new(disk.clone())),
            })
        })
        .collect()
}

/// What kind of operation a completion was (for statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    Other,
}

/// A finished request, ready for the used ring.
#[derive(Debug)]
pub struct Done {
    pub head: u16,
    pub status: *mut u8,
    pub code: u8,
    /// Bytes the device wrote into the chain (data for reads, plus the status byte).
    pub used_len: u32,
    pub op: Op,
    pub bytes: u64,
    pub started: Instant,
}

// SAFETY: `status` points into the shared guest RAM mapping (see request::Request).
unsafe impl Send for Done {}

pub trait Engine: Send {
    /// Starts the request (it may also finish at once); the memory map it points into is
    /// kept alive until it completes.
    fn submit(&mut self, head: u16, req: Request, mem: Arc<GuestMemoryMmap>);
    /// Hands queued submissions to the kernel (once per batch of kicks).
    fn flush(&mut self) {}
    /// Moves finished requests into `done`.
    fn reap(&mut self, done: &mut Vec<Done>);
    /// Waits for everything in flight and moves it into `done`.
    fn drain(&mut self, done: &mut Vec<Done>) {
        self.reap(done);
    }
    /// Becomes readable when `reap` has work; None if everything completes in `submit`.
    fn notifier(&self) -> Option<RawFd>;
    fn in_flight(&self) -> usize;
}

pub fn op_of(kind: &Kind) -> Op {
    match kind {
        Kind::Read => Op::Read,
        Kind::Write => Op::Write,
        Kind::Flush => Op::Flush,
        Kind::Discard(_) => Op::Discard,
        Kind::WriteZeroes(_) => Op::WriteZeroes,
        Kind::GetId => Op::Other,
    }
}

pub fn offset_of(req: &Request) -> u64 {
    req.sector << SECTOR_SHIFT
}

/// Requests neither engine puts in flight: GET_ID, DISCARD, WRITE_ZEROES (and FLUSH for
/// the sync engine). Returns the status code and bytes written into the chain.
pub fn execute_inline(disk: &Disk, req: &Request) -> (u8, u32) {
    let result = match &req.kind {
        Kind::GetId => {
            let n = req.data_len.min(ID_LEN);
            copy_to_guest(&req.data, &disk.id()[..n]);
            return (S_OK, n as u32 + 1);
        }
        Kind::Flush => disk.flush(),
        Kind::Discard(ranges) => ranges.iter().try_for_each(|r| disk.discard(r)),
        Kind::WriteZeroes(ranges) => ranges.iter().try_for_each(|r| disk.write_zeroes(r)),
        Kind::Read | Kind::Write => Err(std::io::Error::other("not an inline request")),
    };
    match result {
        Ok(()) => (S_OK, 1),
        Err(e) => {
            log::warn!("{:?} failed: {e}", req.kind);
            (S_IOERR, 1)
        }
    }
}

/// Copies `bytes` into the guest segments, in order.
pub fn copy_to_guest(segs: &[Segment], bytes: &[u8]) {
    let mut done = 0;
    for s in segs {
        if done == bytes.len() {
            break;
        }
        let n = s.len.min(bytes.len() - done);
        // SAFETY: the segment lies in the guest RAM mapping (request::parse) and n <= len.
        unsafe { std::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), s.ptr, n) };
        done += n;
    }
}

/// Copies the guest segments into `bytes`.
pub fn copy_from_guest(segs: &[Segment], bytes: &mut [u8]) {
    let mut done = 0;
    for s in segs {
        if done == bytes.len() {
            break;
        }
        let n = s.len.min(bytes.len() - done);
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(s.ptr, bytes[done..].as_mut_ptr(), n) };
        done += n;
    }
}

/// A heap buffer with the alignment O_DIRECT needs.
pub struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: exclusively owned heap memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize, align: usize) -> Option<AlignedBuf> {
        let layout = std::alloc::Layout::from_size_align(len.max(align), align).ok()?;
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(AlignedBuf { ptr, layout })
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: we own `layout.size()` bytes at `ptr`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// True when O_DIRECT cannot use the guest's buffers as they are.
pub fn needs_bounce(disk: &Disk, segs: &[Segment]) -> bool {
    disk.direct_alignment().is_some_and(|a| {
        segs.iter()
            .any(|s| !(s.ptr as usize).is_multiple_of(a) || s.len % a != 0)
    })
}

/// A read or write's buffers: the guest's segments, or an aligned bounce buffer.
pub struct DataBuffers {
    pub iovecs: Vec<libc::iovec>,
    /// For a bounced read: the guest segments to copy the data into on completion.
    pub bounce: Option<(AlignedBuf, Vec<Segment>)>,
}

// SAFETY: the iovecs point into the guest RAM mapping or the owned bounce buffer.
unsafe impl Send for DataBuffers {}

pub fn data_buffers(disk: &Disk, req: &Request) -> Option<DataBuffers> {
    if !needs_bounce(disk, &req.data) {
        let iovecs = req
            .data
            .iter()
            .map(|s| libc::iovec {
                iov_base: s.ptr.cast(),
                iov_len: s.len,
            })
            .collect();
        return Some(DataBuffers {
            iovecs,
            bounce: None,
        });
    }
    let mut buf = AlignedBuf::new(req.data_len, disk.direct_alignment().unwrap_or(512))?;
    if req.kind == Kind::Write {
        copy_from_guest(&req.data, &mut buf.as_mut_slice()[..req.data_len]);
    }
    let iovecs = vec![libc::iovec {
        iov_base: buf.ptr.cast(),
        iov_len: req.data_len,
    }];
    Some(DataBuffers {
        iovecs,
        bounce: Some((buf, req.data.clone())),
    })
}

impl DataBuffers {
    /// After a bounced read: the data goes to the guest.
    pub fn finish_read(&mut self, len: usize) {
        if let Some((buf, segs)) = &mut self.bounce {
            copy_to_guest(segs, &buf.as_mut_slice()[..len]);
        }
    }
}
