//! Image formats: how the guest's bytes are laid out in a node's image files. One
//! interface, `Format`, serves the request path, the statistics and (later) the block
//! jobs: `map` tells where a guest range lies so the engines can move it with the
//! kernel's help (io_uring, O_DIRECT) without copying; everything `map` cannot express
//! (allocation, copy-on-write, compressed clusters, zero clusters written) the format
//! does itself through `read` and `write`.
//!
//! Images are untrusted input: every structure read from a file is checked before it is
//! used, and a damaged image gives a `FormatError`, never a panic, an access outside
//! the file or an allocation the size of a lie.

pub mod chain;
pub mod direct;
pub mod host_file;
pub mod no_medium;
pub mod probe;
pub mod qcow2;
pub mod raw;
pub mod window_lock;

pub use probe::probe;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Where one piece of a guest range lies, as `Format::map` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// `len` bytes at `offset` of the file `fd` (the node's own image or one of its
    /// backing files), readable (and, for a write mapping, writable) as they are.
    File { fd: RawFd, offset: u64, len: u64 },
    /// `len` bytes that read as zeroes (nothing to read).
    Zero { len: u64 },
    /// `len` bytes only the format can move (see `Format::read` and `Format::write`).
    Format { len: u64 },
}

impl Extent {
    pub fn len(&self) -> u64 {
        match *self {
            Extent::File { len, .. } | Extent::Zero { len } | Extent::Format { len } => len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts the requests that went to files through a mapping and have not completed.
/// A format that frees or moves clusters (discard, snapshots) must not hand a cluster
/// out again while a request that mapped it may still be reading or writing it: it
/// waits for `in_flight() == 0` (or keeps such clusters aside until then).
#[derive(Debug, Default)]
pub struct MappedRequests(AtomicUsize);

impl MappedRequests {
    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Work a format has left to do once the data of a write mapping reached the file
/// (qcow2: linking the L2 entries of the clusters it allocated for the write, which
/// must come after the data, as the crash rules require; or, for a fresh cluster whose
/// entry it put in flight next to the data, waiting for that write: see
/// `qcow2::early_link`).
pub trait Commit: Send + std::any::Any {
    /// `written`: every byte of the mapping reached the file. Undoes what it can when
    /// not (a cluster reserved for the write goes back to the allocator). An error
    /// fails the request.
    fn commit(self: Box<Self>, written: bool) -> Result<(), FormatError>;
}

/// Held by a request for as long as it uses a mapping; dropping it ends the request's
/// claim on the clusters the mapping named. A write mapping may carry a `Commit`: the
/// engine ends such a request with `finish` once its data is in the file, and only
/// then tells the guest (dropping it unfinished counts as "not written").
pub struct MapGuard {
    counter: Option<Arc<MappedRequests>>,
    commit: Option<Box<dyn Commit>>,
}

impl std::fmt::Debug for MapGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapGuard")
            .field("counted", &self.counter.is_some())
            .field("commit", &self.commit.is_some())
            .finish()
    }
}

impl MapGuard {
    /// For formats whose mappings never go stale (raw).
    pub fn none() -> MapGuard {
        MapGuard {
            counter: None,
            commit: None,
        }
    }

    pub fn new(counter: &Arc<MappedRequests>) -> MapGuard {
        counter.0.fetch_add(1, Ordering::AcqRel);
        MapGuard {
            counter: Some(counter.clone()),
            commit: None,
        }
    }

    /// The same guard, with `commit` to run when the request ends.
    pub fn with_commit(mut self, commit: Box<dyn Commit>) -> MapGuard {
        self.commit = Some(commit);
        self
    }

    /// Whether the request must be ended with `finish` before the guest hears of it.
    pub fn has_commit(&self) -> bool {
        self.commit.is_some()
    }

    /// Takes the commit out (the caller runs it: see `Format::finish_writes`).
    pub fn take_commit(&mut self) -> Option<Box<dyn Commit>> {
        self.commit.take()
    }

    /// Ends the request whose data did (`written`) or did not reach the file: runs the
    /// commit, then drops the claim. Its error is the request's.
    pub fn finish(mut self, written: bool) -> Result<(), FormatError> {
        match self.commit.take() {
            Some(c) => c.commit(written),
            None => Ok(()),
        }
    }
}

impl Drop for MapGuard {
    fn drop(&mut self) {
        if let Some(c) = self.commit.take() {
            if let Err(e) = c.commit(false) {
                log::error!("undoing an unfinished write mapping: {e}");
            }
        }
        if let Some(c) = self.counter.take() {
            c.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The answer of `Format::map`: the extents covering the range in order (their lengths
/// add up to the range's), valid while `guard` is held.
#[derive(Debug)]
pub struct Mapping {
    pub extents: Vec<Extent>,
    pub guard: MapGuard,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The image is not what it claims to be (QEMU's wording where QEMU has one).
    #[error("{0}")]
    Invalid(String),
    /// A feature this implementation does not have (QEMU's wording where QEMU has one).
    #[error("{0}")]
    Unsupported(String),
    /// The image's corrupt bit is set, or a check found corruption: writes are refused.
    #[error("{0}")]
    Corrupt(String),
    #[error("Image is read-only")]
    ReadOnly,
}

impl FormatError {
    /// The errno the guest's request fails with.
    pub fn errno(&self) -> i32 {
        match self {
            FormatError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            FormatError::ReadOnly => libc::EROFS,
            FormatError::Unsupported(_) => libc::ENOTSUP,
            FormatError::Invalid(_) | FormatError::Corrupt(_) => libc::EIO,
        }
    }

    /// As an io::Error, for the request path.
    pub fn into_io(self) -> std::io::Error {
        match self {
            FormatError::Io(e) => e,
            other => std::io::Error::from_raw_os_error(other.errno()),
        }
    }
}

/// A node's image as the guest sees it: a flat array of `virtual_size` bytes. Shared by
/// the queues' threads; every method may be called from any of them at once.
pub trait Format: Send + Sync {
    /// QEMU's driver name: "raw", "qcow2".
    fn name(&self) -> &'static str;

    /// The size the guest sees, in bytes.
    fn virtual_size(&self) -> u64;

    /// Where guest bytes `offset..offset + len` lie. For a write mapping (`write`), a
    /// `File` extent may be written in place (allocated, not shared with a snapshot,
    /// not compressed, in the node's own image; or a cluster the format reserved for
    /// this write, which the mapping's `Commit` links once the data is there: see
    /// `MapGuard::finish`); anything else is `Format`. Must not block on I/O it can
    /// avoid (metadata caches make it a lookup).
    fn map(&self, offset: u64, len: u64, write: bool) -> Result<Mapping, FormatError>;

    /// Reads guest bytes at `offset` into `buf`, whatever their state.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError>;

    /// Writes `buf` at guest `offset`, allocating and copying as needed. When it
    /// returns, the data and the metadata that names it are in the image file (a
    /// restarted daemon finds them), though not necessarily on stable storage.
    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FormatError>;

    /// Ends several requests at once, as `MapGuard::finish` each (`written`: its data
    /// reached the file); their results, in order. A format whose commits write
    /// metadata writes what they share once (qcow2: the changed part of an L2 table as
    /// one write for every allocation linked in it). By default, one by one.
    fn finish_writes(&self, ends: Vec<(MapGuard, bool)>) -> Vec<Result<(), FormatError>> {
        ends.into_iter().map(|(g, w)| g.finish(w)).collect()
    }

    /// Whether guest bytes from `offset` are this image's own (written, zeroed or
    /// discarded here) rather than read through its backing file, and for how many
    /// bytes from `offset` (at least one, at most `len`) the answer holds. An image
    /// without a backing file owns every byte.
    fn allocated(&self, offset: u64, len: u64) -> Result<(bool, u64), FormatError> {
        let _ = offset;
        Ok((true, len))
    }

    /// The image this one reads through where it holds nothing.
    fn backing(&self) -> Option<Arc<dyn Format>> {
        None
    }

    /// Makes every completed write durable (the guest's FLUSH).
    fn flush(&self) -> Result<(), FormatError>;

    /// Starts writing what was written so far to storage, without waiting for it: a
    /// job's target calls it as it goes, so that its closing `flush` has little left to
    /// wait on. Only a hint: by default nothing.
    fn start_writeback(&self) -> Result<(), FormatError> {
        Ok(())
    }

    /// The guest no longer needs these bytes: they may read back as anything the
    /// format chooses (qcow2: zeroes or the backing file's, as QEMU's discard=unmap).
    fn discard(&self, offset: u64, len: u64) -> Result<(), FormatError>;

    /// These bytes read as zeroes from now on; `unmap`: their space may be freed.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<(), FormatError>;

    /// Writes whole clusters compressed (a backup's compress), into clusters that hold
    /// nothing yet. Formats without compression refuse it.
    fn write_compressed(&self, _offset: u64, _buf: &[u8]) -> Result<(), FormatError> {
        Err(FormatError::Unsupported(format!(
            "{} images cannot hold compressed data",
            self.name()
        )))
    }

    /// Changes the size the guest sees (block_resize).
    fn resize(&self, size: u64) -> Result<(), FormatError>;

    /// The node is going away (its daemon quits): leave the image clean, as a close
    /// would (qcow2: clusters set aside for allocation freed, the dirty bit cleared).
    /// Requests after it need not be served. By default, a flush.
    fn close(&self) -> Result<(), FormatError> {
        self.flush()
    }

    /// The image as its concrete type, for what only one format does (internal
    /// snapshots, a header's backing file name). None by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}
