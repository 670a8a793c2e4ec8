//! The mirror's copy loop. Writes mark the job's dirty bitmap before they reach the
//! image; a pass takes every dirty chunk into the copy bitmap at once, with the device
//! quiesced (so each chunk taken was written before the take, and a later write marks
//! it dirty again), then reads each taken run from the node as the guest sees it and
//! writes it to the target, cleaning it in the copy bitmap once copied. A pass that
//! leaves at most `buf_size` dirty makes the job ready. To complete (or cancel a ready
//! mirror), the device is quiesced once more and the last dirty chunks are copied; a
//! completed mirror's node then serves the target.

use std::sync::Arc;
use std::time::Duration;

use ipc::{
    errno_text, BlockEvent, ErrorAction, IoOperation, JobEvent, JobSpec, MirrorSpec, SharedBitmap,
    SyncMode,
};

use crate::writeback::Writeback;

use super::control::{ended, Events, Next, RateLimit, Shared};
use super::kernel_copy;
use crate::device::{BlkDevice, QUIESCE_TIMEOUT};
use crate::disk::Served;
use crate::formats::chain::Chain;
use crate::formats::FormatError;

/// The most one read and one write move.
const MAX_IO: u64 = 1 << 20;

/// How often a ready mirror with nothing dirty looks again.
const IDLE: Duration = Duration::from_millis(20);

pub struct Mirror {
    pub device: BlkDevice,
    pub spec: JobSpec,
    pub mirror: MirrorSpec,
    pub target: Chain,
    pub dirty: Arc<SharedBitmap>,
    pub copying: Arc<SharedBitmap>,
    pub shared: Arc<Shared>,
    pub events: Events,
    /// A pass copied what the first take found (not ready before: QEMU's mirror is
    /// ready once its first pass over the disk is done).
    pub first_pass_done: std::cell::Cell<bool>,
}

/// How a copy loop ended.
enum End {
    /// Completed: the node serves the target now.
    Pivoted,
    /// A ready mirror cancelled: the target is a copy as of now.
    Completed,
    Cancelled,
    /// Left for the next daemon.
    Detached,
}

/// A failed copy the job does not get over.
struct Failed(String);

/// Chunks of a fresh target that were written (the others read as zeroes).
struct Written(Option<Vec<u64>>);

impl Written {
    fn all_zero(&self, first: u64, n: u64) -> bool {
        let Some(bits) = &self.0 else {
            return false;
        };
        (first..first + n).all(|c| bits[(c / 64) as usize] & (1 << (c % 64)) == 0)
    }

    fn set(&mut self, first: u64, n: u64) {
        if let Some(bits) = &mut self.0 {
            for c in first..first + n {
                bits[(c / 64) as usize] |= 1 << (c % 64);
            }
        }
    }
}

impl Mirror {
    pub fn run(self) {
        if !self.spec.resume && self.mirror.sync == SyncMode::Full {
            // Top: the caller marked what the top holds (an active commit's images
            // above base); None: only what the guest writes.
            self.dirty.mark_all();
        }
        let end = self.copy_loop();
        self.device.dirty_bitmaps().set_job(None);
        // Clean before the gateway hears of the end (unless the node serves it now).
        if !matches!(end, Ok(End::Pivoted)) {
            if let Err(e) = self.target.top.close() {
                log::warn!("job {}: closing the target: {e}", self.spec.id);
            }
        }
        let event = match end {
            Ok(End::Pivoted | End::Completed) => ended(&self.shared, false, None),
            Ok(End::Cancelled) => ended(&self.shared, true, None),
            Ok(End::Detached) => {
                log::info!("job {}: left for the next daemon", self.spec.id);
                return;
            }
            Err(Failed(why)) => {
                log::warn!("job {}: {why}", self.spec.id);
                ended(&self.shared, false, Some(why))
            }
        };
        (self.events)(event);
    }

    fn copy_loop(&self) -> Result<End, Failed> {
        let granularity = self.mirror.granularity;
        let size = self.device.disk().size();
        let chunks = self.dirty.chunks();
        let run_chunks = (self
            .mirror
            .buf_size
            .clamp(granularity, MAX_IO.max(granularity))
            / granularity)
            .max(1);
        let mut written = Written(
            (self.mirror.fresh_target && !self.spec.resume)
                .then(|| vec![0u64; chunks.div_ceil(64) as usize]),
        );
        let mut limit = RateLimit::new(0);
        let mut writeback = Writeback::new(self.target.top.clone());
        let mut cursor = 0u64;
        loop {
            match self.shared.next() {
                Next::Detach => return Ok(End::Detached),
                Next::Cancel { force } => {
                    let ready = self.shared.state.lock().ready;
                    if ready && !force {
                        // A ready mirror cancelled leaves a consistent copy.
                        self.converge(&mut written, size, false)?;
                        return Ok(End::Completed);
                    }
                    return Ok(End::Cancelled);
                }
                Next::Complete => {
                    self.converge(&mut written, size, true)?;
                    return Ok(End::Pivoted);
                }
                Next::Copy => {}
            }
            let Some(first) = self.copying.next_dirty(cursor) else {
                cursor = 0;
                self.take()?;
                continue;
            };
            let mut n = 1;
            while n < run_chunks
                && first + n < chunks
                && self.copying.is_dirty((first + n) * granularity)
            {
                n += 1;
            }
            let offset = first * granularity;
            let len = (n * granularity).min(size - offset);
            let speed = self.shared.state.lock().speed;
            let wait = limit.delay(len, speed);
            if !wait.is_zero() {
                self.shared.idle(wait);
                continue;
            }
            match self.copy(offset, len, first, n, &mut written) {
                Ok(()) => {
                    writeback.wrote(len);
                    for c in first..first + n {
                        self.copying.clean_chunk(c);
                    }
                    let mut s = self.shared.state.lock();
                    s.offset += len;
                    s.len = s.len.max(s.offset);
                }
                Err(failure) => self.failed(failure, first, n)?,
            }
            cursor = first + n;
        }
    }

    /// A pass ended: takes what the guest wrote since into the copy bitmap (the device
    /// quiesced), or waits for it to write; a small rest makes the job ready.
    fn take(&self) -> Result<(), Failed> {
        let remaining = self.dirty.dirty_bytes();
        let first_pass_done = self.first_pass_done.replace(true) || self.spec.resume;
        let in_step = {
            let s = self.shared.state.lock();
            !s.ready && remaining <= self.mirror.buf_size && (first_pass_done || remaining == 0)
        };
        if in_step {
            // What was copied is durable before the job says it is in step (as QEMU's
            // mirror): the completion's flush then waits only on the copies since.
            if let Err(e) = self.target.top.flush() {
                return self.failed((IoOperation::Write, e), 0, 0);
            }
        }
        let ready_now = {
            let mut s = self.shared.state.lock();
            s.len = s.offset + remaining;
            s.ready |= in_step;
            in_step.then(|| (s.offset, s.len))
        };
        if let Some((offset, len)) = ready_now {
            (self.events)(BlockEvent::Job(JobEvent::Ready {
                id: self.spec.id.clone(),
                offset,
                len,
            }));
        }
        if remaining == 0 || self.shared.state.lock().ready {
            // Nothing to copy, or kept in step: not a quiesce per write.
            self.shared.idle(IDLE);
            if remaining == 0 {
                return Ok(());
            }
        }
        let _quiesced = match self.device.quiesce(QUIESCE_TIMEOUT) {
            Ok(q) => q,
            Err(e) => {
                // The guest's requests take long (a slow disk): the next pass tries again.
                log::warn!("job {}: {e}", self.spec.id);
                return Ok(());
            }
        };
        self.dirty
            .take_into(&self.copying)
            .map_err(|e| Failed(e.to_string()))
    }

    /// With the device quiesced, copies everything dirty, flushes the target and, with
    /// `pivot`, serves it from now on.
    fn converge(&self, written: &mut Written, size: u64, pivot: bool) -> Result<(), Failed> {
        let granularity = self.mirror.granularity;
        let _quiesced = self
            .device
            .quiesce(QUIESCE_TIMEOUT)
            .map_err(|e| Failed(e.to_string()))?;
        self.dirty
            .take_into(&self.copying)
            .map_err(|e| Failed(e.to_string()))?;
        let mut at = 0;
        while let Some(c) = self.copying.next_dirty(at) {
            let offset = c * granularity;
            let len = granularity.min(size - offset);
            self.copy(offset, len, c, 1, written)
                .map_err(|f| Failed(errno_text(&f.1.into_io())))?;
            self.copying.clean_chunk(c);
            self.shared.state.lock().offset += len;
            at = c + 1;
        }
        self.target
            .top
            .flush()
            .map_err(|e| Failed(errno_text(&e.into_io())))?;
        if pivot {
            let old = self.device.disk().replace_served(Served {
                format: self.target.top.clone(),
                flush_fd: self.target.flush_fd,
            });
            // The source's persistent bitmaps stay with it (as they stay on QEMU's
            // source node): stored there, and none marked from now on (the gateway
            // sends the target's).
            let bitmaps = self.device.dirty_bitmaps();
            if let Err(e) = bitmaps.store_in(self.device.disk(), &*old.format) {
                log::warn!("job {}: storing the source's bitmaps: {e}", self.spec.id);
            }
            if let Err(e) = bitmaps.set(Vec::new()) {
                log::warn!("job {}: {e}", self.spec.id);
            }
            if let Err(e) = old.format.close() {
                log::warn!("job {}: closing the old image: {e}", self.spec.id);
            }
            log::info!(
                "job {}: the node serves {} now",
                self.spec.id,
                self.mirror.target.filename
            );
        }
        Ok(())
    }

    /// Copies `len` bytes at `offset` (chunks `first..first + n`).
    fn copy(
        &self,
        offset: u64,
        len: u64,
        first: u64,
        n: u64,
        written: &mut Written,
    ) -> Result<(), (IoOperation, FormatError)> {
        let source = self.device.disk().served().format;
        if kernel_copy::copy(&*source, &*self.target.top, offset, len) {
            written.set(first, n);
            return Ok(());
        }
        let mut buf = vec![0u8; len as usize];
        source
            .read(offset, &mut buf)
            .map_err(|e| (IoOperation::Read, e))?;
        let target = &self.target.top;
        let result = if buf.iter().all(|&b| b == 0) {
            if written.all_zero(first, n) {
                Ok(())
            } else {
                target.write_zeroes(offset, len, self.mirror.unmap)
            }
        } else {
            target.write(offset, &buf)
        };
        result.map_err(|e| (IoOperation::Write, e))?;
        written.set(first, n);
        Ok(())
    }

    /// A copy of chunks `first..first + n` failed: what the job's error policy says.
    fn failed(
        &self,
        (operation, error): (IoOperation, FormatError),
        first: u64,
        n: u64,
    ) -> Result<(), Failed> {
        let policy = match operation {
            IoOperation::Read => self.spec.on_source_error,
            IoOperation::Write => self.spec.on_target_error,
        };
        let errno = error.errno();
        let action = policy.action(errno);
        // The state first: whoever hears the event and asks finds the job stopped.
        if action == ErrorAction::Stop {
            let mut s = self.shared.state.lock();
            s.failed = true;
            s.nospace = errno == libc::ENOSPC;
        }
        (self.events)(BlockEvent::Job(JobEvent::Error {
            id: self.spec.id.clone(),
            operation,
            action,
        }));
        if action == ErrorAction::Report {
            return Err(Failed(errno_text(&error.into_io())));
        }
        // The chunks stay to be copied: on the next pass (ignore) or once resumed.
        for c in first..first + n {
            self.dirty.mark(c * self.mirror.granularity, 1);
        }
        Ok(())
    }
}
