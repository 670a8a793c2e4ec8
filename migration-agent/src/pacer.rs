//! The bandwidth limit (QMP's max-bandwidth): at most a tenth of the limit per 100 ms
//! window, the way QEMU paces its migration stream, so a burst never exceeds it by more
//! than a window's worth.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_millis(100);

pub struct Pacer {
    /// Bytes per second; 0: unlimited.
    limit: u64,
    window_start: Instant,
    window_bytes: u64,
}

impl Pacer {
    pub fn new(limit: u64) -> Pacer {
        Pacer {
            limit,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// The limit may change while a migration runs (migrate-set-parameters).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Accounts `bytes` just sent; waits out the window when its share is used up.
    pub fn sent(&mut self, bytes: u64) {
        self.window_bytes += bytes;
        let elapsed = self.window_start.elapsed();
        if self.limit > 0 && self.window_bytes >= self.limit / 10 {
            if let Some(rest) = WINDOW.checked_sub(elapsed) {
                std::thread::sleep(rest);
            }
            self.restart();
        } else if elapsed >= WINDOW {
            self.restart();
        }
    }

    fn restart(&mut self) {
        self.window_start = Instant::now();
        self.window_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_spreads_bytes_over_windows() {
        let mut p = Pacer::new(10 << 20);
        let start = Instant::now();
        // 3 MiB at 10 MiB/s: three full windows of 1 MiB, so at least 0.2 s.
        for _ in 0..3 {
            p.sent(1 << 20);
        }
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
