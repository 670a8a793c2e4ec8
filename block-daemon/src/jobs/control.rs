//! What a job's thread and the control calls share: the job's state (paused, cancelled,
//! completing, its speed and progress), how the thread waits for what to do next, the
//! rate limit, and the target's writeback started as the job copies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::{BlockEvent, JobEvent, SharedBitmap};
use parking_lot::{Condvar, Mutex};

use crate::formats::Format;
use crate::writeback::Writeback;

/// Where a job sends its events.
pub type Events = Arc<dyn Fn(BlockEvent) + Send + Sync>;

/// What the job thread and the control calls share.
#[derive(Debug, Default)]
pub struct State {
    pub paused: bool,
    /// Paused by an error (on-*-error stop): resumed like a pause.
    pub failed: bool,
    /// ... by ENOSPC (io-status nospace).
    pub nospace: bool,
    pub cancel: Option<bool>,
    pub complete: bool,
    /// The daemon is going: stop where it is, say nothing (the next daemon carries on).
    pub detach: bool,
    /// Over: its end is being told (the thread returns right after).
    pub done: bool,
    pub speed: u64,
    pub ready: bool,
    pub busy: bool,
    pub offset: u64,
    pub len: u64,
}

pub struct Shared {
    pub id: String,
    pub state: Mutex<State>,
    /// A mirror's bitmaps: what is left to copy, for its progress.
    pub left: Option<(Arc<SharedBitmap>, Arc<SharedBitmap>)>,
    /// Wakes the job thread: a control call, or time to look at the bitmap again.
    pub wake: Condvar,
}

/// What a job thread is told to do next.
pub enum Next {
    Copy,
    Detach,
    Cancel { force: bool },
    Complete,
}

impl Shared {
    /// (bytes copied, bytes to copy in all): a mirror's total grows as the guest writes.
    pub fn progress(&self) -> (u64, u64) {
        let left = self
            .left
            .as_ref()
            .map(|(dirty, copying)| dirty.dirty_bytes() + copying.dirty_bytes());
        let s = self.state.lock();
        let len = left.map_or(s.len, |l| s.offset + l);
        (s.offset, len.max(s.offset))
    }

    /// Waits while the job is paused; then what to do.
    pub fn next(&self) -> Next {
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
    pub fn idle(&self, time: Duration) {
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
pub struct RateLimit {
    since: Instant,
    copied: u64,
    speed: u64,
}

impl RateLimit {
    pub fn new(speed: u64) -> RateLimit {
        RateLimit {
            since: Instant::now(),
            copied: 0,
            speed,
        }
    }

    /// `bytes` were copied (counted whatever the time): how long to wait before the
    /// next copy (speed `speed` now). For a job that knows what it copied only after
    /// the copy (a stream or commit counts only what it copies, as QEMU's).
    pub fn after(&mut self, bytes: u64, speed: u64) -> Duration {
        if speed != self.speed {
            *self = RateLimit::new(speed);
        }
        if speed == 0 {
            return Duration::ZERO;
        }
        self.copied += bytes;
        let allowed_at = Duration::from_secs_f64(self.copied as f64 / speed as f64);
        allowed_at.saturating_sub(self.since.elapsed())
    }

    /// How long to wait before copying `bytes` more (speed `speed` now).
    pub fn delay(&mut self, bytes: u64, speed: u64) -> Duration {
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

/// How a job that never becomes ready ended.
pub enum End {
    Completed,
    Cancelled,
    /// Left for the next daemon.
    Detached,
}

/// Tells the gateway how the job `shared` ended (a failure: its words), unless it was
/// left for the next daemon.
pub fn report(shared: &Shared, events: &Events, end: Result<End, String>) {
    let event = match end {
        Ok(End::Completed) => ended(shared, false, None),
        Ok(End::Cancelled) => ended(shared, true, None),
        Ok(End::Detached) => {
            log::info!("job {}: left for the next daemon", shared.id);
            return;
        }
        Err(why) => {
            log::warn!("job {}: {why}", shared.id);
            ended(shared, false, Some(why))
        }
    };
    events(event);
}

/// What a job's error policy says of a failed copy: the state is set (stopped) before
/// the BLOCK_JOB_ERROR goes, so whoever hears it and asks finds the job stopped. Err:
/// the job ends with this failure (report).
pub fn on_copy_error(
    shared: &Shared,
    events: &Events,
    spec: &ipc::JobSpec,
    operation: ipc::IoOperation,
    error: crate::formats::FormatError,
) -> Result<(), String> {
    let policy = match operation {
        ipc::IoOperation::Read => spec.on_source_error,
        ipc::IoOperation::Write => spec.on_target_error,
    };
    let errno = error.errno();
    let action = policy.action(errno);
    if action == ipc::ErrorAction::Stop {
        let mut s = shared.state.lock();
        s.failed = true;
        s.nospace = errno == libc::ENOSPC;
    }
    events(BlockEvent::Job(JobEvent::Error {
        id: spec.id.clone(),
        operation,
        action,
    }));
    if action == ipc::ErrorAction::Report {
        return Err(ipc::errno_text(&error.into_io()));
    }
    Ok(())
}

/// The walk a stream and a commit share: the chunks of a disk of `size` bytes in order,
/// but those `done` marks; `copy` copies one (returning the bytes copied, which count
/// against the speed, or what failed, which the error policy answers); each chunk done
/// is marked and its end is the job's progress; what it copies into `target` has its
/// writeback started as it goes. `finish` ends the job once every chunk is done.
#[allow(clippy::too_many_arguments)]
pub fn walk_in_order(
    shared: &Shared,
    events: &Events,
    spec: &ipc::JobSpec,
    done: &SharedBitmap,
    size: u64,
    target: Arc<dyn Format>,
    mut copy: impl FnMut(u64, u64) -> Result<u64, (ipc::IoOperation, crate::formats::FormatError)>,
    finish: impl FnOnce() -> Result<(), String>,
) -> Result<End, String> {
    let g = done.granularity();
    let chunks = done.chunks();
    shared.state.lock().len = size;
    let mut limit = RateLimit::new(0);
    let mut writeback = Writeback::new(target);
    let mut cursor = 0;
    loop {
        match shared.next() {
            Next::Detach => return Ok(End::Detached),
            Next::Cancel { .. } => return Ok(End::Cancelled),
            // Never ready: nothing to complete.
            Next::Complete | Next::Copy => {}
        }
        let Some(c) = (cursor..chunks).find(|&c| !done.is_dirty(c * g)) else {
            finish()?;
            shared.state.lock().offset = size;
            return Ok(End::Completed);
        };
        let offset = c * g;
        let len = g.min(size - offset);
        match copy(offset, len) {
            Ok(n) => {
                writeback.wrote(n);
                done.mark(offset, len);
                let speed = {
                    let mut s = shared.state.lock();
                    s.offset = offset + len;
                    s.speed
                };
                cursor = c + 1;
                // Only copies count against the speed (as QEMU's stream and commit).
                let wait = limit.after(n, speed);
                if !wait.is_zero() {
                    shared.idle(wait);
                }
            }
            Err((operation, error)) => on_copy_error(shared, events, spec, operation, error)?,
        }
    }
}

/// The job's end, as the gateway hears of it.
pub fn ended(shared: &Shared, cancelled: bool, error: Option<String>) -> BlockEvent {
    let (offset, len) = shared.progress();
    shared.state.lock().done = true;
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

    #[test]
    fn bytes_counted_after_their_copy_all_count() {
        let mut r = RateLimit::new(0);
        assert_eq!(r.after(1 << 30, 0), Duration::ZERO, "no limit");
        let mut r = RateLimit::new(1 << 20);
        // Each MiB copied puts the next copy a second later, waited or not.
        let first = r.after(1 << 20, 1 << 20);
        let second = r.after(1 << 20, 1 << 20);
        assert!(first > Duration::from_millis(900), "{first:?}");
        assert!(second > Duration::from_millis(1900), "{second:?}");
    }
}
