//! Log lines a guest can repeat at will (a failing image, a disk that is full) are
//! rate-limited per call site: a burst, then one a second, each saying how many like it
//! were left out. Otherwise a guest that retries a failing write fills the host's log at
//! thousands of lines a second.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lines let through at once before the rate applies.
const BURST: u32 = 5;
/// One more line is let through per this much time.
const REFILL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Bucket {
    tokens: u32,
    refilled: Option<Instant>,
    suppressed: u64,
}

/// One call site's limit. `const`, so each site can keep its own in a static.
pub struct LogLimit {
    bucket: Mutex<Bucket>,
}

impl Default for LogLimit {
    fn default() -> Self {
        LogLimit::new()
    }
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit {
            bucket: parking_lot::const_mutex(Bucket {
                tokens: BURST,
                refilled: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now; if so, how many were left out before it.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut b = self.bucket.lock();
        let since = *b.refilled.get_or_insert(now);
        let earned = now.saturating_duration_since(since).as_nanos() / REFILL.as_nanos();
        if earned > 0 {
            b.tokens = (u128::from(b.tokens) + earned).min(u128::from(BURST)) as u32;
            b.refilled = Some(since + REFILL * earned.min(u128::from(u32::MAX)) as u32);
        }
        if b.tokens == 0 {
            b.suppressed += 1;
            return None;
        }
        b.tokens -= 1;
        Some(std::mem::take(&mut b.suppressed))
    }
}

/// `log::warn!` through a [`LogLimit`]: `warn_limited!(LIMIT, "format", args...)`.
#[macro_export]
macro_rules! warn_limited {
    ($limit:expr, $($arg:tt)+) => {
        match $limit.admit() {
            Some(0) => log::warn!($($arg)+),
            Some(left_out) => log::warn!(
                "{} [{left_out} similar lines left out]",
                format_args!($($arg)+)
            ),
            None => {}
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_a_second_counting_the_rest() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        let burst: Vec<_> = (0..BURST).map(|_| limit.admit_at(t0)).collect();
        assert!(burst.iter().all(|a| *a == Some(0)));
        for _ in 0..1000 {
            assert_eq!(limit.admit_at(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(limit.admit_at(t0 + Duration::from_millis(1001)), Some(1000));
        assert_eq!(limit.admit_at(t0 + Duration::from_millis(1002)), None);
        // A long quiet spell refills the burst, no more.
        let later = t0 + Duration::from_secs(3600);
        let admitted = (0..2 * BURST)
            .filter(|_| limit.admit_at(later).is_some())
            .count();
        assert_eq!(admitted, BURST as usize);
    }
}
