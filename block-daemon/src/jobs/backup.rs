//! The backup's copy: the disk as it was when the job started (the device quiesced then)
//! goes to the target. `to_copy` holds the chunks of that image to copy (all of them, or
//! an incremental backup's, taken from a dirty bitmap), `done` those copied; both are the
//! gateway's memory, so a new daemon carries on. A guest write first copies the chunks
//! it would overwrite that are still to copy (copy before write, on the queue's thread);
//! the job's thread copies the others in order. One lock orders the two, so a chunk is
//! read from the disk once, before any write that came after the start lands on it.

use std::sync::Arc;

use ipc::{errno_text, BackupSpec, IoOperation, JobSpec, SharedBitmap, SyncMode};
use parking_lot::Mutex;

use crate::writeback::Writeback;

use super::control::{on_copy_error, report, End, Events, Next, RateLimit, Shared};
use super::kernel_copy;
use crate::device::BlkDevice;
use crate::dirty::WriteHook;
use crate::formats::chain::Chain;
use crate::formats::FormatError;

/// The most one read and one write move.
const MAX_IO: u64 = 1 << 20;

/// What the guest's writes and the job's thread share.
pub struct Copier {
    device: BlkDevice,
    target: Chain,
    spec: BackupSpec,
    to_copy: Arc<SharedBitmap>,
    done: Arc<SharedBitmap>,
    /// Held while chunks are copied: a write's copy and the job's never overlap.
    copying: Mutex<()>,
    /// A copy before a write failed: the job ends with this.
    failure: Mutex<Option<String>>,
    shared: Arc<Shared>,
}

impl Copier {
    pub fn new(
        device: BlkDevice,
        target: Chain,
        spec: BackupSpec,
        to_copy: Arc<SharedBitmap>,
        done: Arc<SharedBitmap>,
        shared: Arc<Shared>,
    ) -> Copier {
        Copier {
            device,
            target,
            spec,
            to_copy,
            done,
            copying: Mutex::new(()),
            failure: Mutex::new(None),
            shared,
        }
    }

    fn pending(&self, chunk: u64) -> bool {
        let at = chunk * self.spec.granularity;
        self.to_copy.is_dirty(at) && !self.done.is_dirty(at)
    }

    /// Copies chunks `first..first + n` that are still to copy; the caller holds
    /// `copying`. Returns the bytes copied.
    fn copy_run(&self, first: u64, n: u64) -> Result<u64, (IoOperation, FormatError)> {
        let g = self.spec.granularity;
        let size = self.device.disk().size();
        let mut copied = 0;
        let mut c = first;
        while c < first + n {
            if !self.pending(c) {
                c += 1;
                continue;
            }
            let mut run = 1;
            while c + run < first + n && self.pending(c + run) && run * g < MAX_IO {
                run += 1;
            }
            let offset = c * g;
            let len = (run * g).min(size.saturating_sub(offset));
            let source = self.device.disk().served().format;
            if !self.spec.compress && kernel_copy::copy(&*source, &*self.target.top, offset, len) {
                self.done.mark(offset, len);
                copied += len;
                c += run;
                continue;
            }
            let mut buf = vec![0u8; len as usize];
            source
                .read(offset, &mut buf)
                .map_err(|e| (IoOperation::Read, e))?;
            let zero = buf.iter().all(|&b| b == 0);
            if !(zero && self.spec.fresh_target) {
                let written = if zero {
                    self.target.top.write_zeroes(offset, len, true)
                } else if self.spec.compress {
                    self.target.top.write_compressed(offset, &buf)
                } else {
                    self.target.top.write(offset, &buf)
                };
                written.map_err(|e| (IoOperation::Write, e))?;
            }
            self.done.mark(offset, len);
            copied += len;
            c += run;
        }
        Ok(copied)
    }
}

impl WriteHook for Copier {
    fn before_write(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let g = self.spec.granularity;
        let (first, last) = (offset / g, (offset + len - 1) / g);
        if !(first..=last).any(|c| self.pending(c)) {
            return;
        }
        let _copying = self.copying.lock();
        match self.copy_run(first, last - first + 1) {
            Ok(copied) => self.shared.state.lock().offset += copied,
            Err((op, e)) => {
                // The guest's write goes on; the backup cannot be what it was.
                let why = format!(
                    "copy before write ({}): {}",
                    op.qmp_name(),
                    errno_text(&e.into_io())
                );
                self.failure.lock().get_or_insert(why);
                self.shared.wake.notify_all();
            }
        }
    }
}

pub struct Backup {
    pub spec: JobSpec,
    pub copier: Arc<Copier>,
    pub events: Events,
}

impl Backup {
    pub fn run(self) {
        let end = self.copy_all();
        let device = &self.copier.device;
        device.dirty_bitmaps().set_job(None);
        if let Err(e) = self.copier.target.top.close() {
            log::warn!("job {}: closing the target: {e}", self.spec.id);
        }
        report(&self.copier.shared, &self.events, end);
    }

    fn copy_all(&self) -> Result<End, String> {
        let c = &self.copier;
        let g = c.spec.granularity;
        let chunks = c.to_copy.chunks();
        let run_chunks = (MAX_IO / g).max(1);
        let mut limit = RateLimit::new(0);
        let mut writeback = Writeback::new(c.target.top.clone());
        let mut written = c.shared.state.lock().offset;
        let mut cursor = 0;
        loop {
            if let Some(why) = c.failure.lock().take() {
                return Err(why);
            }
            match c.shared.next() {
                Next::Detach => return Ok(End::Detached),
                Next::Cancel { .. } => return Ok(End::Cancelled),
                // A backup is never ready: nothing to complete.
                Next::Complete | Next::Copy => {}
            }
            if c.spec.sync == SyncMode::None {
                // Only the guest's writes copy.
                c.shared.idle(std::time::Duration::from_millis(100));
                continue;
            }
            let Some(first) = (cursor..chunks).chain(0..cursor).find(|&i| c.pending(i)) else {
                c.target.top.flush().map_err(|e| errno_text(&e.into_io()))?;
                return Ok(End::Completed);
            };
            let n = run_chunks.min(chunks - first);
            let speed = c.shared.state.lock().speed;
            let wait = limit.delay(n * g, speed);
            if !wait.is_zero() {
                c.shared.idle(wait);
                continue;
            }
            let result = {
                let _copying = c.copying.lock();
                c.copy_run(first, n)
            };
            // The copies before writes count too (they are in the offset).
            let now = c.shared.state.lock().offset;
            writeback.wrote(now - written);
            written = now;
            match result {
                Ok(copied) => c.shared.state.lock().offset += copied,
                Err((operation, error)) => {
                    on_copy_error(&c.shared, &self.events, &self.spec, operation, error)?;
                    continue;
                }
            }
            cursor = first + n;
            if cursor >= chunks {
                cursor = 0;
            }
        }
    }
}
