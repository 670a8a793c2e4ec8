//! I/O limits (QEMU's block_set_io_throttle): six leaky buckets (bytes and operations;
//! total, read, write), each draining at its average rate and allowed to fill up to a
//! burst. A request may start while every bucket it counts against is at or below its
//! size; it then adds its bytes or operations. Otherwise it waits for the buckets to
//! drain.
//!
//! The bucket levels live in a page of shared memory (a memfd the gateway hands every
//! member of a throttle group), so disks served by different daemons share one budget.
//! The page holds only levels and timestamps; each member applies the same limits, which
//! the gateway sends to all of them.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc::block_counters::monotonic_ns;
use ipc::shm::{self, SharedMapping};
use ipc::OPS_WRITE;
use ipc::{BucketLimits, ThrottleLimits, BPS_READ, BPS_TOTAL, BPS_WRITE, OPS_READ, OPS_TOTAL};

#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    #[error("throttle state: {0}")]
    Io(#[from] std::io::Error),
    #[error("throttle state is {0} bytes, smaller than {1}")]
    TooSmall(u64, usize),
}

#[repr(C)]
struct SharedBucket {
    /// f64 bits: units in the bucket.
    level: AtomicU64,
    /// f64 bits: units in the burst bucket (drains at the burst rate).
    burst_level: AtomicU64,
}

#[repr(C)]
struct SharedState {
    /// 0 when free, else the holder's pid.
    lock: AtomicU32,
    _pad: u32,
    /// CLOCK_MONOTONIC (system-wide) of the last drain, ns.
    stamp_ns: AtomicU64,
    buckets: [SharedBucket; 6],
}

pub const STATE_SIZE: usize = std::mem::size_of::<SharedState>();
const _: () = assert!(STATE_SIZE as u64 <= ipc::THROTTLE_STATE_SIZE);

/// A mapping of a throttle group's state page.
pub struct SharedPage {
    map: SharedMapping,
}

// SAFETY: the page is only accessed through atomics.
unsafe impl Send for SharedPage {}
// SAFETY: as for Send: every access from any thread is atomic.
unsafe impl Sync for SharedPage {}

impl SharedPage {
    /// Maps the page in `fd` (a memfd of at least STATE_SIZE bytes); the mapping keeps the
    /// memory, the fd is closed.
    pub fn map(fd: OwnedFd) -> Result<SharedPage, ThrottleError> {
        let len = shm::file_len(fd.as_fd())?;
        if len < STATE_SIZE as u64 {
            return Err(ThrottleError::TooSmall(len, STATE_SIZE));
        }
        Ok(SharedPage {
            map: SharedMapping::new(fd.as_fd(), STATE_SIZE)?,
        })
    }

    /// A page for a disk in no group (shared with nobody).
    pub fn private() -> Result<SharedPage, ThrottleError> {
        SharedPage::map(ipc::new_throttle_state()?)
    }

    fn state(&self) -> &SharedState {
        // SAFETY: mapped for our lifetime (page-aligned, STATE_SIZE long); all fields are
        // atomics, valid for any bits.
        unsafe { self.map.ptr().cast::<SharedState>().as_ref() }
    }
}

/// Reads a level another process wrote: anything that is not a sane number counts as
/// an empty bucket.
fn load(a: &AtomicU64) -> f64 {
    let v = f64::from_bits(a.load(Ordering::Relaxed));
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}

fn store(a: &AtomicU64, v: f64) {
    a.store(v.max(0.0).to_bits(), Ordering::Relaxed);
}

/// How long a holder may keep the lock before it is presumed dead (killed while
/// holding it) and the lock is taken over.
const LOCK_STALE: Duration = Duration::from_millis(50);

struct Locked<'a>(&'a SharedState);

impl<'a> Locked<'a> {
    fn take(s: &'a SharedState) -> Locked<'a> {
        let me = std::process::id();
        let start = Instant::now();
        loop {
            if s.lock
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Locked(s);
            }
            if start.elapsed() > LOCK_STALE {
                log::warn!("throttle group lock held for {LOCK_STALE:?}: taking it over");
                s.lock.store(me, Ordering::SeqCst);
                return Locked(s);
            }
            std::hint::spin_loop();
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.0.lock.store(0, Ordering::Release);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// Bucket size and burst-bucket size of one configured bucket.
fn sizes(b: &BucketLimits) -> (f64, Option<f64>) {
    if b.max == 0 {
        // Without a burst setting, a tenth of a second's worth may go at once.
        (b.avg as f64 / 10.0, None)
    } else {
        (
            b.max as f64 * b.burst_length.max(1) as f64,
            Some(b.max as f64 / 10.0),
        )
    }
}

/// The limits of one disk and the shared page its levels live in.
pub struct Throttle {
    limits: ThrottleLimits,
    page: SharedPage,
}

impl Throttle {
    pub fn new(limits: ThrottleLimits, page: SharedPage) -> Throttle {
        Throttle { limits, page }
    }

    pub fn limits(&self) -> &ThrottleLimits {
        &self.limits
    }

    fn buckets_for(dir: Direction) -> [usize; 4] {
        match dir {
            Direction::Read => [BPS_TOTAL, BPS_READ, OPS_TOTAL, OPS_READ],
            Direction::Write => [BPS_TOTAL, BPS_WRITE, OPS_TOTAL, OPS_WRITE],
        }
    }

    fn units(&self, bucket: usize, bytes: u64) -> f64 {
        if bucket < OPS_TOTAL {
            bytes as f64
        } else if self.limits.iops_size > 0 && bytes > self.limits.iops_size {
            bytes as f64 / self.limits.iops_size as f64
        } else {
            1.0
        }
    }

    /// Admits a request of `bytes` (it is accounted), or says how long to wait before
    /// asking again.
    pub fn admit(&self, dir: Direction, bytes: u64) -> Result<(), Duration> {
        let state = self.page.state();
        let _held = Locked::take(state);
        let now = monotonic_ns();
        let last = state.stamp_ns.swap(now, Ordering::Relaxed);
        let elapsed = now.saturating_sub(last) as f64 / 1e9;
        // Drain every bucket for the time since the last look (any member's).
        for (b, s) in self.limits.buckets.iter().zip(&state.buckets) {
            if b.avg == 0 {
                continue;
            }
            store(&s.level, load(&s.level) - b.avg as f64 * elapsed);
            if b.max > 0 {
                store(
                    &s.burst_level,
                    load(&s.burst_level) - b.max as f64 * elapsed,
                );
            }
        }
        let mut wait = 0f64;
        for i in Self::buckets_for(dir) {
            let b = &self.limits.buckets[i];
            if b.avg == 0 {
                continue;
            }
            let s = &state.buckets[i];
            let (size, burst_size) = sizes(b);
            let level = load(&s.level);
            if level > size {
                wait = wait.max((level - size) / b.avg as f64);
            }
            if let Some(burst_size) = burst_size {
                let burst = load(&s.burst_level);
                if burst > burst_size {
                    wait = wait.max((burst - burst_size) / b.max as f64);
                }
            }
        }
        if wait > 0.0 {
            // Rounded up so the retry finds the bucket drained.
            return Err(Duration::from_secs_f64(wait) + Duration::from_micros(10));
        }
        for i in Self::buckets_for(dir) {
            let b = &self.limits.buckets[i];
            if b.avg == 0 {
                continue;
            }
            let s = &state.buckets[i];
            let units = self.units(i, bytes);
            store(&s.level, load(&s.level) + units);
            if b.max > 0 {
                store(&s.burst_level, load(&s.burst_level) + units);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(bucket: usize, avg: u64, max: u64, burst_length: u64) -> ThrottleLimits {
        let mut l = ThrottleLimits::default();
        l.buckets[bucket] = BucketLimits {
            avg,
            max,
            burst_length,
        };
        l
    }

    /// Admits as fast as allowed for `secs`, sleeping out each wait; returns units done.
    fn run(t: &Throttle, dir: Direction, bytes: u64, secs: f64) -> u64 {
        let start = Instant::now();
        let mut done = 0;
        while start.elapsed().as_secs_f64() < secs {
            match t.admit(dir, bytes) {
                Ok(()) => done += bytes,
                Err(wait) => std::thread::sleep(wait),
            }
        }
        done
    }

    #[test]
    fn sustained_rate_is_the_average() {
        let t = Throttle::new(
            limits(BPS_TOTAL, 1 << 20, 0, 0),
            SharedPage::private().unwrap(),
        );
        let done = run(&t, Direction::Read, 64 << 10, 1.0) as f64;
        // 1 MiB/s plus the initial tenth-of-a-second bucket.
        assert!(
            (done - 1.1 * (1 << 20) as f64).abs() < 0.1 * (1 << 20) as f64,
            "{done}"
        );
    }

    #[test]
    fn burst_then_average() {
        // 100 ops/s sustained, bursts of 1000 ops/s for 1 s: the first second sees about
        // 1000, the next about 100 more.
        let t = Throttle::new(
            limits(OPS_TOTAL, 100, 1000, 1),
            SharedPage::private().unwrap(),
        );
        let first = run(&t, Direction::Write, 1, 0.5);
        assert!(first > 400, "burst allowed only {first} ops in 0.5 s");
        let t0 = Instant::now();
        let later = run(&t, Direction::Write, 1, 1.5);
        let secs = t0.elapsed().as_secs_f64();
        assert!(
            later as f64 <= 1000.0 + 150.0 * secs,
            "{later} ops in {secs} s"
        );
    }

    #[test]
    fn reads_do_not_count_against_write_limits() {
        let t = Throttle::new(
            limits(BPS_WRITE, 1000, 0, 0),
            SharedPage::private().unwrap(),
        );
        for _ in 0..100 {
            assert!(t.admit(Direction::Read, 1 << 20).is_ok());
        }
        assert!(t.admit(Direction::Write, 4096).is_ok());
        assert!(t.admit(Direction::Write, 4096).is_err());
    }

    #[test]
    fn iops_size_counts_large_requests_as_several() {
        let mut l = limits(OPS_TOTAL, 10, 0, 0);
        l.iops_size = 4096;
        let t = Throttle::new(l, SharedPage::private().unwrap());
        // One request of 8 ops' size fills the 1-op bucket eightfold: the next waits ~0.7 s.
        assert!(t.admit(Direction::Read, 8 * 4096).is_ok());
        let wait = t.admit(Direction::Read, 4096).unwrap_err();
        assert!(wait > Duration::from_millis(600), "{wait:?}");
    }

    #[test]
    fn group_members_share_one_budget() {
        let fd = ipc::new_throttle_state().unwrap();
        let l = limits(OPS_TOTAL, 10, 0, 0);
        let a = Throttle::new(l, SharedPage::map(fd.try_clone().unwrap()).unwrap());
        let b = Throttle::new(l, SharedPage::map(fd).unwrap());
        assert!(a.admit(Direction::Read, 1).is_ok());
        assert!(a.admit(Direction::Read, 1).is_ok());
        // The bucket (size 1) is now over: the other member must wait too.
        assert!(b.admit(Direction::Write, 1).is_err());
    }

    #[test]
    fn garbage_in_the_page_counts_as_empty() {
        let page = SharedPage::private().unwrap();
        store(&page.state().buckets[OPS_TOTAL].level, f64::NAN);
        page.state().buckets[OPS_TOTAL]
            .level
            .store(f64::NAN.to_bits(), Ordering::Relaxed);
        let t = Throttle::new(limits(OPS_TOTAL, 10, 0, 0), page);
        assert!(t.admit(Direction::Read, 1).is_ok());
    }

    #[test]
    fn a_page_too_small_is_refused() {
        let fd = ipc::new_throttle_state().unwrap();
        std::fs::File::from(fd.try_clone().unwrap())
            .set_len(8)
            .unwrap();
        assert!(matches!(
            SharedPage::map(fd),
            Err(ThrottleError::TooSmall(8, _))
        ));
    }
}
