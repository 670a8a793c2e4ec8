//! Block jobs the daemon runs on its node (QMP's mirrors and backups): one at a time, each on a thread of its own, reading the node as the guest sees
//! it and writing a target the gateway opened. The gateway keeps the job's bitmaps, so a
//! new daemon carries a job on (`JobSpec::resume`). This file holds what every job
//! shares: its control (pause, resume, cancel, complete, speed), its progress, the rate
//! limit; `mirror.rs` is the mirror's copy loop, `backup.rs` the backup's.

mod backup;
mod mirror;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc::{BlockEvent, JobControl, JobEvent, JobKind, JobSpec, JobStatus, SharedBitmap};
use parking_lot::{Condvar, Mutex};

use crate::device::{BlkDevice, QUIESCE_TIMEOUT};
use crate::dirty::WriteHook;
use crate::formats::chain::{self, ChainOptions};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job '{0}' is running; one job at a time")]
    Busy(String),
    #[error("no job '{0}' runs here")]
    NoJob(String),
    #[error("job '{0}' is not ready")]
    NotReady(String),
    #[error("the job came without its target and bitmaps")]
    MissingFds,
    #[error("the job's bitmap: {0}")]
    Bitmap(#[from] ipc::dirty_bitmap::BitmapError),
    #[error("Could not open '{filename}': {error}")]
    Target {
        filename: String,
        error: crate::formats::chain::ChainError,
    },
    #[error("starting the job's thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Quiesce(#[from] crate::device::QuiesceTimeout),
    #[error("Dirty bitmap '{0}' not found")]
    NoBitmap(String),
}

/// Where a job sends its events.
pub type Events = Arc<dyn Fn(BlockEvent) + Send + Sync>;

/// What the job thread and the control calls share.
#[derive(Debug, Default)]
struct State {
    paused: bool,
    /// Paused by an error (on-*-error stop): resumed like a pause.
    failed: bool,
    cancel: Option<bool>,
    complete: bool,
    /// The daemon is going: stop where it is, say nothing (the next daemon carries on).
    detach: bool,
    speed: u64,
    ready: bool,
    busy: bool,
    offset: u64,
    len: u64,
}

struct Shared {
    id: String,
    state: Mutex<State>,
    /// A mirror's bitmaps: what is left to copy, for its progress.
    left: Option<(Arc<SharedBitmap>, Arc<SharedBitmap>)>,
    /// Wakes the job thread: a control call, or time to look at the bitmap again.
    wake: Condvar,
}

/// What a job thread is told to do next.
enum Next {
    Copy,
    Detach,
    Cancel { force: bool },
    Complete,
}

impl Shared {
    /// (bytes copied, bytes to copy in all): a mirror's total grows as the guest writes.
    fn progress(&self) -> (u64, u64) {
        let left = self
            .left
            .as_ref()
            .map(|(dirty, copying)| dirty.dirty_bytes() + copying.dirty_bytes());
        let s = self.state.lock();
        let len = left.map_or(s.len, |l| s.offset + l);
        (s.offset, len.max(s.offset))
    }

    /// Waits while the job is paused; then what to do.
    fn next(&self) -> Next {
        let mut s = self.state.lock();
        loop {
            if s.detach {
                return Next::Detach;
            }
            if let Some(force) = s.cancel {
                return Next::Cancel { force };
            }
            if s.complete {
                return Next::Complete;
            }
            if !s.paused && !s.failed {
                s.busy = true;
                return Next::Copy;
            }
            s.busy = false;
            self.wake.wait(&mut s);
        }
    }

    /// Sleeps up to `time` (less if a control call comes), not busy meanwhile.
    fn idle(&self, time: Duration) {
        let mut s = self.state.lock();
        if s.cancel.is_some() || s.complete || s.paused || s.detach {
            return;
        }
        s.busy = false;
        self.wake.wait_for(&mut s, time);
    }
}

/// Keeps a copy to `speed` bytes per second: the bytes copied since the speed was set
/// may not run ahead of the time passed.
struct RateLimit {
    since: Instant,
    copied: u64,
    speed: u64,
}

impl RateLimit {
    fn new(speed: u64) -> RateLimit {
        RateLimit {
            since: Instant::now(),
            copied: 0,
            speed,
        }
    }

    /// How long to wait before copying `bytes` more (speed `speed` now).
    fn delay(&mut self, bytes: u64, speed: u64) -> Duration {
        if speed != self.speed {
            *self = RateLimit::new(speed);
        }
        if speed == 0 {
            return Duration::ZERO;
        }
        let allowed_at = Duration::from_secs_f64(self.copied as f64 / speed as f64);
        let wait = allowed_at.saturating_sub(self.since.elapsed());
        if wait.is_zero() {
            self.copied += bytes;
        }
        wait
    }
}

/// The job that runs, if any.
pub struct Jobs {
    current: Mutex<Option<(Arc<Shared>, JoinHandle<()>)>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            current: Mutex::new(None),
        }
    }
}

impl Jobs {
    /// Starts `spec` on `device`; fds: the target image, the dirty and copy bitmaps.
    pub fn start(
        &self,
        device: &BlkDevice,
        spec: JobSpec,
        fds: Vec<OwnedFd>,
        events: Events,
    ) -> Result<(), JobError> {
        let mut current = self.current.lock();
        if let Some((shared, thread)) = current.as_ref() {
            if !thread.is_finished() {
                return Err(JobError::Busy(shared.id.clone()));
            }
        }
        let mut fds = fds.into_iter();
        let (Some(target), Some(first), Some(second)) = (fds.next(), fds.next(), fds.next()) else {
            return Err(JobError::MissingFds);
        };
        let granularity = spec.kind.granularity();
        let disk_size = device.disk().size();
        let map = |fd: &OwnedFd| SharedBitmap::map(fd.as_fd(), disk_size, granularity);
        let (first, second) = (Arc::new(map(&first)?), Arc::new(map(&second)?));
        let layer = spec.kind.target().clone();
        let unmap = match &spec.kind {
            JobKind::Mirror(m) => m.unmap,
            JobKind::Backup(_) => true,
        };
        let target = chain::open(
            std::slice::from_ref(&layer),
            vec![File::from(target)],
            &ChainOptions {
                writable: true,
                direct: device.disk().cache().direct(),
                counters: None,
                discard_unmap: unmap,
            },
        )
        .map_err(|error| JobError::Target {
            filename: layer.filename.clone(),
            error,
        })?;
        if target.top.virtual_size() != disk_size {
            // Taken, and over at once (QEMU's words).
            events(BlockEvent::Job(JobEvent::Ended {
                id: spec.id.clone(),
                offset: 0,
                len: 0,
                cancelled: false,
                error: Some("Source and target image have different sizes".into()),
            }));
            return Ok(());
        }
        let shared = Arc::new(Shared {
            id: spec.id.clone(),
            state: Mutex::new(State {
                speed: spec.speed,
                ready: spec.ready,
                offset: spec.offset,
                ..State::default()
            }),
            wake: Condvar::new(),
            left: matches!(spec.kind, JobKind::Mirror(_)).then(|| (first.clone(), second.clone())),
        });
        let run: Box<dyn FnOnce() + Send> = match spec.kind.clone() {
            JobKind::Mirror(mirror) => {
                // Marked from now on, before a request the daemon serves after this call.
                device
                    .dirty_bitmaps()
                    .set_job(Some(first.clone() as Arc<dyn WriteHook>));
                let job = mirror::Mirror {
                    device: device.clone(),
                    spec,
                    mirror,
                    target,
                    dirty: first,
                    copying: second,
                    shared: shared.clone(),
                    events,
                };
                Box::new(move || job.run())
            }
            JobKind::Backup(backup) => {
                let (to_copy, done) = (first, second);
                // The point in time: nothing in flight, every later write copies first.
                let _quiesced = device.quiesce(QUIESCE_TIMEOUT)?;
                if !spec.resume {
                    match &backup.bitmap {
                        Some(name) => {
                            if !device.dirty_bitmaps().take_named(name, &to_copy)? {
                                return Err(JobError::NoBitmap(name.clone()));
                            }
                        }
                        None => to_copy.mark_all(),
                    }
                }
                shared.state.lock().len = to_copy.dirty_bytes();
                let copier = Arc::new(backup::Copier::new(
                    device.clone(),
                    target,
                    backup,
                    to_copy,
                    done,
                    shared.clone(),
                ));
                device
                    .dirty_bitmaps()
                    .set_job(Some(copier.clone() as Arc<dyn WriteHook>));
                let job = backup::Backup {
                    spec,
                    copier,
                    events,
                };
                Box::new(move || job.run())
            }
        };
        let thread = std::thread::Builder::new()
            .name("block-job".into())
            .spawn(run)
            .map_err(|e| {
                device.dirty_bitmaps().set_job(None);
                JobError::Thread(e)
            })?;
        *current = Some((shared, thread));
        Ok(())
    }

    /// The running job `id`'s control state.
    fn running(&self, id: &str) -> Result<Arc<Shared>, JobError> {
        match self.current.lock().as_ref() {
            Some((shared, thread)) if shared.id == id && !thread.is_finished() => {
                Ok(shared.clone())
            }
            _ => Err(JobError::NoJob(id.to_string())),
        }
    }

    pub fn control(&self, id: &str, control: JobControl) -> Result<(), JobError> {
        let shared = self.running(id)?;
        let mut s = shared.state.lock();
        match control {
            JobControl::Pause => s.paused = true,
            JobControl::Resume => {
                s.paused = false;
                s.failed = false;
            }
            JobControl::Cancel { force } => s.cancel = Some(force),
            JobControl::Complete if !s.ready => return Err(JobError::NotReady(id.to_string())),
            JobControl::Complete => s.complete = true,
            JobControl::SetSpeed(speed) => s.speed = speed,
        }
        shared.wake.notify_all();
        Ok(())
    }

    /// The running job's progress.
    pub fn status(&self) -> Option<JobStatus> {
        let current = self.current.lock();
        let (shared, thread) = current.as_ref()?;
        if thread.is_finished() {
            return None;
        }
        let (offset, len) = shared.progress();
        let s = shared.state.lock();
        Some(JobStatus {
            id: shared.id.clone(),
            offset,
            len,
            speed: s.speed,
            paused: s.paused || s.failed,
            ready: s.ready,
            busy: s.busy,
            failed: s.failed,
        })
    }

    /// Stops the running job, if any, where it is and waits for its thread (the daemon
    /// is going; the gateway gives the job to the next one).
    pub fn stop(&self) {
        let Some((shared, thread)) = self.current.lock().take() else {
            return;
        };
        shared.state.lock().detach = true;
        shared.wake.notify_all();
        if thread.join().is_err() {
            log::error!("job {}: its thread panicked", shared.id);
        }
    }
}

/// The job's end, as the gateway hears of it.
fn ended(shared: &Shared, cancelled: bool, error: Option<String>) -> BlockEvent {
    let (offset, len) = shared.progress();
    BlockEvent::Job(JobEvent::Ended {
        id: shared.id.clone(),
        offset,
        len,
        cancelled,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_lets_bytes_through_as_time_passes() {
        let mut r = RateLimit::new(0);
        assert_eq!(r.delay(1 << 30, 0), Duration::ZERO, "no limit");
        let mut r = RateLimit::new(1 << 20);
        assert_eq!(
            r.delay(1 << 20, 1 << 20),
            Duration::ZERO,
            "the first copy goes"
        );
        let wait = r.delay(1 << 20, 1 << 20);
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(r.delay(1, 0), Duration::ZERO, "a new speed starts over");
    }
}
