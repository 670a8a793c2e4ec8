//! A read's or write's way to the image, as the format's mapping of the guest range
//! decides it. One file extent covering the request: the kernel moves the data between
//! the guest's buffers and that file (the fast path; the mapping's guard stays with the
//! request until it completes). A read of nothing but zeroes: the guest's buffers are
//! zeroed. Several extents of files (and, for a read, of zeroes): the request is split
//! into pieces, one per extent, each moved by the kernel on its own; the request is done
//! when all are. Anything else (data only the format can move, an allocating write):
//! the format moves it through a bounce buffer in the queue's thread (the slow path).
//!
//! With O_DIRECT, a file extent goes to the kernel only if it covers whole blocks of
//! its device: on a device with 4 KiB logical sectors a guest's 512-byte write goes the
//! slow path, whose bounce buffer reads, changes and writes back the block under a
//! lock on that window (`formats::window_lock`). A write that goes to the kernel there
//! holds a shared window of its blocks until it completes (`Route::*::windows`), so a
//! read-modify-write of one of its blocks waits for it and cannot carry the block's
//! stale bytes over it (which would leave neither write's order on the disk); it waits
//! itself only while a read-modify-write holds one of its blocks.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::{Arc, Weak};

use super::buffers::{copy_from_guest, copy_to_guest, data_buffers};
use super::inline::Outcome;
use super::transfer::transfer;
use crate::disk::Disk;
use crate::formats::direct::device_block;
use crate::formats::window_lock::{self, FileKey, WindowGuard};
use crate::formats::{Extent, Format, FormatError, MapGuard};
use crate::log_limit::LogLimit;
use crate::request::{Kind, Request, Segment, SECTOR_SIZE};
use crate::warn_limited;

static FAILED: LogLimit = LogLimit::new();

/// The shared windows an O_DIRECT write to a device with blocks larger than a sector
/// holds until it completes (see the module's doc); none elsewhere.
pub type Windows = Vec<WindowGuard>;

/// Where a read or write goes.
pub enum Route {
    /// To `fd` at `offset`, while `guard` and `windows` are held.
    File {
        fd: RawFd,
        offset: u64,
        guard: MapGuard,
        windows: Windows,
    },
    /// Several pieces (in order, covering the request), while `guard` and `windows`
    /// are held.
    Split {
        pieces: Vec<Piece>,
        guard: MapGuard,
        windows: Windows,
    },
    /// A read of zeroes.
    Zero,
    /// Through the format (`Format::read` / `Format::write`).
    Format,
}

/// A piece of a split request: `len` bytes at byte `at` of the request's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// To or from `fd` at `offset`.
    File {
        fd: RawFd,
        offset: u64,
        at: usize,
        len: usize,
    },
    /// Zeroes read.
    Zero { at: usize, len: usize },
}

/// `extents` as pieces, when the kernel can move each of them (file extents whose
/// offset and length it takes: `fits`, zeroes for a read, whole sectors each) and they
/// cover the request exactly; None when the format must move the request.
fn pieces(
    extents: &[Extent],
    len: u64,
    write: bool,
    fits: &mut dyn FnMut(RawFd, u64, u64) -> bool,
) -> Option<Vec<Piece>> {
    let mut at = 0u64;
    let mut pieces = Vec::with_capacity(extents.len());
    for e in extents {
        let l = e.len();
        if l == 0 || !l.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let (a, n) = (at as usize, l as usize);
        pieces.push(match *e {
            Extent::File { fd, offset, .. } if fits(fd, offset, l) => Piece::File {
                fd,
                offset,
                at: a,
                len: n,
            },
            Extent::Zero { .. } if !write => Piece::Zero { at: a, len: n },
            _ => return None,
        });
        at = at.checked_add(l)?;
    }
    (at == len).then_some(pieces)
}

/// The part of `iovecs` that holds bytes `at..at + len` of what they describe.
pub fn slice_iovecs(iovecs: &[libc::iovec], at: usize, len: usize) -> Vec<libc::iovec> {
    let mut out = Vec::new();
    let (mut skip, mut left) = (at, len);
    for v in iovecs {
        if left == 0 {
            break;
        }
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - skip).min(left);
        out.push(libc::iovec {
            // SAFETY: `skip` < the iovec's length: the address stays inside its buffer.
            iov_base: unsafe { v.iov_base.cast::<u8>().add(skip).cast() },
            iov_len: n,
        });
        skip = 0;
        left -= n;
    }
    out
}

/// Fills the memory `iovecs` describe with zeroes.
pub fn zero_iovecs(iovecs: &[libc::iovec]) {
    for v in iovecs {
        // SAFETY: the iovecs describe guest memory (checked by request::parse) or a
        // bounce buffer, which the caller keeps.
        unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
    }
}

fn no_memory() -> FormatError {
    FormatError::Io(std::io::Error::from_raw_os_error(libc::ENOMEM))
}

/// An O_DIRECT file's block and window key, as `device_block` tells them.
type FileBlock = (u64, Option<FileKey>);

/// The O_DIRECT files `route` has met in this thread, under the chain it met them in
/// (the Weak keeps that chain's allocation, so a new chain never passes for it).
struct KnownFiles {
    chain: Weak<dyn Format>,
    files: Vec<(RawFd, FileBlock)>,
}

thread_local! {
    static KNOWN: RefCell<Option<KnownFiles>> = const { RefCell::new(None) };
}

/// The block of `fd`, an O_DIRECT file of `chain` (asked of the kernel once per file
/// and thread: not per request).
fn file_block(chain: &Arc<dyn Format>, fd: RawFd) -> FileBlock {
    KNOWN.with_borrow_mut(|known| {
        if !known
            .as_ref()
            .is_some_and(|k| std::ptr::addr_eq(k.chain.as_ptr(), Arc::as_ptr(chain)))
        {
            *known = None;
        }
        let files = &mut known
            .get_or_insert_with(|| KnownFiles {
                chain: Arc::downgrade(chain),
                files: Vec::new(),
            })
            .files;
        if let Some((_, b)) = files.iter().find(|(f, _)| *f == fd) {
            return *b;
        }
        let b = match device_block(fd) {
            Ok((block, key)) => (block, Some(key)),
            Err(_) => (SECTOR_SIZE, None),
        };
        files.push((fd, b));
        b
    })
}

/// Asks the format where `req` (a read or a write) lies.
pub fn route(disk: &Disk, req: &Request) -> Result<Route, FormatError> {
    let write = req.kind == Kind::Write;
    let len = req.data_len as u64;
    let chain = disk.format();
    let mapping = chain.map(req.offset(), len, write)?;
    let direct = disk.direct_alignment().is_some();
    // With O_DIRECT the kernel takes whole blocks of the file's device only.
    let mut fits = |fd, offset: u64, l: u64| {
        !direct || {
            let block = file_block(&chain, fd).0;
            offset.is_multiple_of(block) && l.is_multiple_of(block)
        }
    };
    let route = match mapping.extents.as_slice() {
        &[Extent::File { fd, offset, len: l }] if l == len && fits(fd, offset, l) => Route::File {
            fd,
            offset,
            guard: mapping.guard,
            windows: Windows::new(),
        },
        extents
            if !write
                && extents.iter().all(|e| matches!(e, Extent::Zero { .. }))
                && extents.iter().map(Extent::len).sum::<u64>() == len =>
        {
            Route::Zero
        }
        extents => match pieces(extents, len, write, &mut fits) {
            Some(pieces) => Route::Split {
                pieces,
                guard: mapping.guard,
                windows: Windows::new(),
            },
            None => Route::Format,
        },
    };
    Ok(if write && direct {
        with_windows(route, len, &chain)
    } else {
        route
    })
}

/// `route` (of a write of `len` bytes) holding the shared windows of its file pieces
/// that lie on devices with blocks larger than a sector (where a read-modify-write may
/// want the same blocks).
fn with_windows(mut route: Route, len: u64, chain: &Arc<dyn Format>) -> Route {
    let take = |windows: &mut Windows, fd, offset: u64, len: u64| {
        if let (block, Some(key)) = file_block(chain, fd) {
            if block > SECTOR_SIZE {
                windows.push(window_lock::lock_shared(key, offset, offset + len));
            }
        }
    };
    match &mut route {
        Route::File {
            fd,
            offset,
            windows,
            ..
        } => take(windows, *fd, *offset, len),
        Route::Split {
            pieces, windows, ..
        } => {
            for p in pieces.iter() {
                if let Piece::File {
                    fd, offset, len, ..
                } = *p
                {
                    take(windows, fd, offset, len as u64);
                }
            }
        }
        Route::Zero | Route::Format => {}
    }
    route
}

/// Fills the guest's segments with zeroes.
pub fn zero_guest(segs: &[Segment]) {
    for s in segs {
        // SAFETY: the segment lies in the guest RAM mapping (request::parse) and the
        // caller keeps that mapped.
        unsafe { std::ptr::write_bytes(s.ptr, 0, s.len) };
    }
}

/// The slow path: the format moves the data through a bounce buffer.
pub fn through_format(disk: &Disk, req: &Request) -> Result<(), FormatError> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(req.data_len)
        .map_err(|_| no_memory())?;
    buf.resize(req.data_len, 0u8);
    if req.kind == Kind::Write {
        copy_from_guest(&req.data, &mut buf);
        disk.format().write(req.offset(), &buf)
    } else {
        disk.format().read(req.offset(), &mut buf)?;
        copy_to_guest(&req.data, &buf);
        Ok(())
    }
}

/// The fast path done in the calling thread: the guest's buffers (or an aligned bounce
/// buffer for O_DIRECT) to or from `fd` at `offset`.
pub fn transfer_now(disk: &Disk, req: &Request, fd: RawFd, offset: u64) -> Result<(), FormatError> {
    let write = req.kind == Kind::Write;
    let mut bufs = data_buffers(disk, req).ok_or_else(no_memory)?;
    transfer(fd, &mut bufs.iovecs, offset, write)?;
    bufs.finish_read(req.data_len);
    Ok(())
}

/// A split request done in the calling thread, piece by piece.
fn transfer_pieces(disk: &Disk, req: &Request, pieces: &[Piece]) -> Result<(), FormatError> {
    let write = req.kind == Kind::Write;
    let mut bufs = data_buffers(disk, req).ok_or_else(no_memory)?;
    for piece in pieces {
        match *piece {
            Piece::File {
                fd,
                offset,
                at,
                len,
            } => transfer(fd, &mut slice_iovecs(&bufs.iovecs, at, len), offset, write)?,
            Piece::Zero { at, len } => zero_iovecs(&slice_iovecs(&bufs.iovecs, at, len)),
        }
    }
    bufs.finish_read(req.data_len);
    Ok(())
}

/// Ends a mapped request whose transfer gave `result`: the format's commit (linking
/// what it allocated for a write) runs after the data is in the file and before the
/// guest hears; its failure is the request's.
pub fn finish(guard: MapGuard, result: Result<(), FormatError>) -> Result<(), FormatError> {
    let committed = guard.finish(result.is_ok());
    result.and(committed)
}

/// Performs a read or write in the calling thread, whichever way it goes.
pub fn perform(disk: &Disk, req: &Request) -> Result<(), FormatError> {
    match perform_uncommitted(disk, req)? {
        Some(guard) => guard.finish(true),
        None => Ok(()),
    }
}

/// `perform`, except that a write mapping's commit is left to the caller: Some(guard)
/// when the data reached the file and the guard's commit waits (the caller runs it,
/// with others: see `Format::finish_writes`, before the guest hears of the request).
pub fn perform_uncommitted(disk: &Disk, req: &Request) -> Result<Option<MapGuard>, FormatError> {
    let (guard, result) = match route(disk, req)? {
        // The windows are held until the data is in the file.
        Route::File {
            fd,
            offset,
            guard,
            windows: _windows,
        } => (guard, transfer_now(disk, req, fd, offset)),
        Route::Split {
            pieces,
            guard,
            windows: _windows,
        } => (guard, transfer_pieces(disk, req, &pieces)),
        Route::Zero => {
            zero_guest(&req.data);
            return Ok(None);
        }
        Route::Format => return through_format(disk, req).map(|()| None),
    };
    if result.is_ok() && guard.has_commit() {
        return Ok(Some(guard));
    }
    finish(guard, result).map(|()| None)
}

/// What a read or write that finished in the calling thread tells the guest.
pub fn outcome(req: &Request, result: Result<(), FormatError>) -> Outcome {
    match result {
        Ok(()) => Outcome::ok(if req.kind == Kind::Write {
            1
        } else {
            req.data_len as u32 + 1
        }),
        Err(e) => {
            warn_limited!(
                FAILED,
                "{:?} of {} bytes at sector {}: {e}",
                req.kind,
                req.data_len,
                req.sector
            );
            Outcome::failed(e.errno())
        }
    }
}
