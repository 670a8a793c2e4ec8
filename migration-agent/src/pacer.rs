//! The bandwidth limit (QMP's max-bandwidth, max-postcopy-bandwidth): a token bucket that
//! holds at most a tenth of a second's worth (QEMU's window), so a burst never exceeds the
//! limit by more than that, and time spent blocked on the connection counts toward the
//! budget rather than being lost (a window that ends blocked would otherwise waste the
//! rest of its share: 20% below the limit was measured with per-window accounting).

use std::time::{Duration, Instant};

/// The most a burst may run ahead of the limit, in time.
const WINDOW: Duration = Duration::from_millis(100);

pub struct Pacer {
    /// Bytes per second; 0: unlimited.
    limit: u64,
    /// When the bytes of `sent` would have been due, sent at exactly the limit from it.
    start: Instant,
    sent: u64,
    /// How long it has waited in all.
    waited: Duration,
}

impl Pacer {
    pub fn new(limit: u64) -> Pacer {
        Pacer {
            limit,
            start: Instant::now(),
            sent: 0,
            waited: Duration::ZERO,
        }
    }

    /// The limit may change while a migration runs (migrate-set-parameters).
    pub fn set_limit(&mut self, limit: u64) {
        if limit != self.limit {
            self.limit = limit;
            self.start = Instant::now();
            self.sent = 0;
        }
    }

    /// Accounts `bytes` just sent; waits while they are ahead of the limit by more than
    /// the window.
    pub fn sent(&mut self, bytes: u64) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        // Behind the limit by more than a window (idle, or blocked): start afresh, so an
        // idle spell does not buy a long burst (the window below is the only credit).
        if now.checked_sub(WINDOW).is_some_and(|w| self.due() < w) {
            self.start = now;
            self.sent = 0;
        }
        self.sent += bytes;
        let due = self.due();
        if let Some(ahead) = due.checked_duration_since(now) {
            // Within a window of the limit: go on; beyond: wait until back to it.
            if ahead > WINDOW {
                let wait = ahead - WINDOW;
                std::thread::sleep(wait);
                self.waited += wait;
            }
        }
    }

    /// When everything sent so far is due at the limit.
    fn due(&self) -> Instant {
        let secs = self.sent as f64 / self.limit.max(1) as f64;
        self.start + Duration::from_secs_f64(secs)
    }

    /// How long it has waited for the limit in all.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_spreads_bytes_over_time() {
        let mut p = Pacer::new(10 << 20);
        let start = Instant::now();
        // 3 MiB at 10 MiB/s: 300 ms of budget, of which a window (100 ms) may run ahead.
        for _ in 0..3 {
            p.sent(1 << 20);
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(195), "{took:?}");
        assert!(took < Duration::from_millis(300), "{took:?}");
    }

    #[test]
    fn time_blocked_elsewhere_counts_toward_the_budget() {
        let mut p = Pacer::new(10 << 20);
        let start = Instant::now();
        // 4 MiB at 10 MiB/s with 80 ms spent elsewhere (a blocked write) between the
        // halves: 400 ms of budget less the window's head start, 300 ms in all; the 80 ms
        // are part of it, not added (per-window accounting lost them).
        p.sent(2 << 20);
        std::thread::sleep(Duration::from_millis(80));
        p.sent(2 << 20);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(295), "{took:?}");
        assert!(took < Duration::from_millis(370), "{took:?}");
    }

    #[test]
    fn an_idle_spell_buys_a_window_at_most() {
        let mut p = Pacer::new(10 << 20);
        std::thread::sleep(Duration::from_millis(500));
        let start = Instant::now();
        // After 500 ms idle, 3 MiB still take 200 ms: only 100 ms of credit kept.
        for _ in 0..3 {
            p.sent(1 << 20);
        }
        assert!(
            start.elapsed() >= Duration::from_millis(195),
            "{:?}",
            start.elapsed()
        );
        let mut unlimited = Pacer::new(0);
        unlimited.sent(u64::MAX);
        assert_eq!(unlimited.waited(), Duration::ZERO);
    }
}
