//! Early links: an allocating O_DIRECT write whose L2 entry goes to the kernel at the
//! same time as its data, not after it (issue 13: at queue depth 1 the two writes in a
//! row cost an allocating write twice a write's latency; QEMU keeps its L2 tables
//! write-back instead, which we do not: a SIGKILLed daemon restarted under a running
//! guest must lose no completed write).
//!
//! Taken only when the order cannot matter: the write lies in one guest cluster that
//! read as zeroes (no backing file under it, or a zero cluster: nothing to copy), its
//! new host cluster is fresh (past the file's old end: it reads as zeroes, and its
//! refcount is already in the file, written with its reserve batch), the image is
//! O_DIRECT with clusters of at least 4096 bytes, and no other early link is in flight.
//! A crash (or a failure) between the two writes leaves either
//! - the entry not written: the cluster is unnamed, a leak (as in the ordered case), or
//! - the entry written and the data not (or in part): the guest cluster names a cluster
//!   of zeroes with the request's range holding zeroes or part of its bytes. The
//!   request never completed, so the guest may find anything there; every other byte
//!   of the cluster reads as zeroes, as it did before (unallocated or zero, no backing
//!   bytes to lose). A failed data write with a written entry ends the same way: the
//!   guest hears the error, the cluster stays linked.
//!
//! The guest hears of the request only when both writes completed (its commit waits for
//! the entry: `settle`).
//!
//! The entry's write is a snapshot of the cached table's 4096-byte block taken at map
//! time. Nothing else may write the image while it is in flight (two writes of one
//! block in flight may land in either order, and the older would undo the newer), nor
//! read an L2 table from the file (it would miss the entry): `Meta::write`, `sync` and
//! the L2 table loads settle it first, waiting on this ring, whose completions depend
//! on no thread of ours (no deadlock, whichever thread waits). A write mapping that
//! touches the cluster settles it too (a join must not complete before the link is in
//! the file). A failed entry write drops the cached table (the file's block is unknown)
//! and the request's commit links the cluster the ordered way (its data is in the file
//! by then) or fails it; the cluster is never handed out again (the file may name it).
//!
//! The ring is the format's own (one entry), not the engine's: the engine is unchanged.

use io_uring::{opcode, types, IoUring};

use crate::formats::direct::AlignedBuf;

/// The block an early link writes: the O_DIRECT unit of every device we support.
pub const BLOCK: usize = 4096;

/// An entry write in flight.
struct Flight {
    gc: u64,
    table: u64,
    /// The bytes the kernel is writing (they stay put until it is done).
    _buf: AlignedBuf,
}

/// The outcome of an entry write: its guest cluster, its table, and whether it is in
/// the file.
pub struct Settled {
    pub gc: u64,
    pub table: u64,
    pub ok: bool,
}

/// The format's ring for early links, and the one in flight.
pub struct LinkRing {
    ring: IoUring,
    flight: Option<Flight>,
    /// A test hook: the next entry write, though done, is reported failed (as a write
    /// whose fate is unknown).
    #[cfg(test)]
    pub fail_next: bool,
}

impl LinkRing {
    /// None when io_uring is not available (links then stay ordered).
    pub fn new() -> Option<LinkRing> {
        match IoUring::new(2) {
            Ok(ring) => Some(LinkRing {
                ring,
                flight: None,
                #[cfg(test)]
                fail_next: false,
            }),
            Err(e) => {
                log::info!("qcow2: no io_uring for early links ({e}): links stay ordered");
                None
            }
        }
    }

    pub fn in_flight(&self) -> Option<u64> {
        self.flight.as_ref().map(|f| f.gc)
    }

    /// Puts `block` (one `BLOCK` of table `table`, at file offset `offset`; it names
    /// guest cluster `gc`) in flight. False when it could not be (nothing is then in
    /// flight: the caller links the ordered way).
    pub fn submit(&mut self, fd: i32, gc: u64, table: u64, offset: u64, block: &[u8]) -> bool {
        if self.flight.is_some() || block.len() != BLOCK {
            return false;
        }
        let Some(mut buf) = AlignedBuf::new(BLOCK, BLOCK) else {
            return false;
        };
        buf.as_mut_slice()[..BLOCK].copy_from_slice(block);
        let entry = opcode::Write::new(types::Fd(fd), buf.as_ptr(), BLOCK as u32)
            .offset(offset)
            .build();
        // SAFETY: `buf` lives in `self.flight` until the completion is reaped (`settle`,
        // and `Drop` waits for it too).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return false;
        }
        if let Err(e) = self.ring.submit() {
            log::warn!("qcow2: early link submit: {e}");
            // The entry may still be queued: it counts as in flight.
        }
        self.flight = Some(Flight {
            gc,
            table,
            _buf: buf,
        });
        true
    }

    /// Waits for the entry write in flight, if any; its outcome.
    pub fn settle(&mut self) -> Option<Settled> {
        let f = self.flight.as_ref()?;
        let (gc, table) = (f.gc, f.table);
        let result = loop {
            if let Some(c) = self.ring.completion().next() {
                break c.result();
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Cannot wait: the write's fate is unknown, and so is the block. The
                    // kernel may still use the buffer: it is never freed.
                    log::error!("qcow2: waiting for an early link: {e}");
                    if let Some(f) = self.flight.take() {
                        std::mem::forget(f);
                    }
                    break -libc::EIO;
                }
            }
        };
        if result != BLOCK as i32 {
            log::error!("qcow2: early L2 entry write at table {table:#x}: result {result}");
        }
        self.flight = None;
        #[cfg(test)]
        let result = if std::mem::take(&mut self.fail_next) {
            -libc::EIO
        } else {
            result
        };
        Some(Settled {
            gc,
            table,
            ok: result == BLOCK as i32,
        })
    }
}

impl Drop for LinkRing {
    fn drop(&mut self) {
        // The kernel must be done with the buffer before it is freed.
        let _ = self.settle();
    }
}
