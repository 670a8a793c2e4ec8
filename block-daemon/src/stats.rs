//! Per-device I/O statistics (what query-blockstats reports): counters of completed,
//! failed and refused operations with their total latency, the highest offset written,
//! the time of the last completion, and latency windows over configured intervals
//! (`timed_stats`). Write-zeroes counts as a write and discard as unmap, as QEMU's
//! virtio-blk accounts them.
//!
//! The counters are kept in the disk's counters page (`ipc::BlockCounters`, shared with
//! the gateway and with the daemons before and after this one), so they carry on across
//! daemons; the latency windows are this daemon's own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::block_counters::{monotonic_ns, SharedOpCounters};
use ipc::{BlockCounters, BlockStats, Latency, TimedStats};
use parking_lot::Mutex;

use crate::engine::Op;
use virtio::blk::{T_DISCARD, T_FLUSH, T_IN, T_OUT, T_WRITE_ZEROES};

/// Latencies of one kind of operation within one window.
#[derive(Clone, Copy, Default)]
struct Acc {
    count: u64,
    sum_ns: u64,
    min_ns: u64,
    max_ns: u64,
}

impl Acc {
    fn add(&mut self, ns: u64) {
        self.min_ns = if self.count == 0 {
            ns
        } else {
            self.min_ns.min(ns)
        };
        self.max_ns = self.max_ns.max(ns);
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    fn latency(&self, elapsed: Duration) -> Latency {
        Latency {
            min_ns: self.min_ns,
            max_ns: self.max_ns,
            avg_ns: self.sum_ns.checked_div(self.count).unwrap_or(0),
            // Each operation was in flight for its latency: the sum over the window's
            // length is the mean number in flight.
            avg_queue_depth: if elapsed.is_zero() {
                0.0
            } else {
                self.sum_ns as f64 / elapsed.as_nanos() as f64
            },
        }
    }
}

/// One window: read, write and flush latencies since `start`.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    acc: [Acc; 3],
}

/// Two windows of `length`, started half a length apart, so that one of them always
/// holds between half a length and a whole length of history: that one is reported.
struct Interval {
    length: Duration,
    windows: [Window; 2],
}

impl Interval {
    fn new(length_s: u32, now: Instant) -> Interval {
        let length = Duration::from_secs(u64::from(length_s.max(1)));
        let half = now.checked_sub(length / 2).unwrap_or(now);
        let window = |start| Window {
            start,
            acc: [Acc::default(); 3],
        };
        Interval {
            length,
            windows: [window(now), window(half)],
        }
    }

    /// Starts windows whose length has run out afresh, at the last boundary.
    fn roll(&mut self, now: Instant) {
        for w in &mut self.windows {
            let age = now.saturating_duration_since(w.start);
            if age >= self.length {
                let periods = (age.as_nanos() / self.length.as_nanos()) as u32;
                w.start += self.length * periods;
                w.acc = [Acc::default(); 3];
            }
        }
    }

    fn snapshot(&self, now: Instant) -> TimedStats {
        let w = if self.windows[0].start <= self.windows[1].start {
            &self.windows[0]
        } else {
            &self.windows[1]
        };
        let elapsed = now.saturating_duration_since(w.start);
        TimedStats {
            interval_length: self.length.as_secs() as u32,
            read: w.acc[0].latency(elapsed),
            write: w.acc[1].latency(elapsed),
            flush: w.acc[2].latency(elapsed),
        }
    }
}

pub struct Stats {
    counters: Arc<BlockCounters>,
    intervals: Mutex<Vec<Interval>>,
}

impl Stats {
    /// Counts into `counters`; `intervals`: window lengths in seconds for timed
    /// statistics.
    pub fn new(intervals: &[u32], counters: Arc<BlockCounters>) -> Stats {
        let now = Instant::now();
        Stats {
            counters,
            intervals: Mutex::new(intervals.iter().map(|&s| Interval::new(s, now)).collect()),
        }
    }

    pub fn of(&self, op: Op) -> Option<&SharedOpCounters> {
        let page = self.counters.page();
        match op {
            Op::Read => Some(&page.read),
            Op::Write | Op::WriteZeroes => Some(&page.write),
            Op::Flush => Some(&page.flush),
            Op::Discard => Some(&page.unmap),
            Op::Other => None,
        }
    }

    pub fn record(&self, op: Op, bytes: u64, ok: bool, latency: Duration) {
        let Some(s) = self.of(op) else {
            return;
        };
        if !ok {
            s.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let ns = latency.as_nanos() as u64;
        s.operations.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        s.total_time_ns.fetch_add(ns, Ordering::Relaxed);
        self.counters
            .page()
            .last_completion_ns
            .store(monotonic_ns().max(1), Ordering::Relaxed);
        let now = Instant::now();
        let slot = match op {
            Op::Read => 0,
            Op::Write | Op::WriteZeroes => 1,
            Op::Flush => 2,
            _ => return,
        };
        let mut intervals = self.intervals.lock();
        for i in intervals.iter_mut() {
            i.roll(now);
            for w in &mut i.windows {
                w.acc[slot].add(ns);
            }
        }
    }

    /// A request the parser refused; `request_type` is its virtio-blk type if known.
    pub fn record_invalid(&self, request_type: Option<u32>) {
        let page = self.counters.page();
        let counter = match request_type {
            Some(T_IN) => &page.read.invalid,
            Some(T_OUT | T_WRITE_ZEROES) => &page.write.invalid,
            Some(T_FLUSH) => &page.flush.invalid,
            Some(T_DISCARD) => &page.unmap.invalid,
            _ => &page.invalid_other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn note_write_end(&self, end: u64) {
        self.counters
            .page()
            .wr_highest_offset
            .fetch_max(end, Ordering::Relaxed);
    }

    /// Everything query-blockstats needs.
    pub fn snapshot(&self, size: u64) -> BlockStats {
        let now = Instant::now();
        let mut intervals = self.intervals.lock();
        let timed = intervals
            .iter_mut()
            .map(|i| {
                i.roll(now);
                i.snapshot(now)
            })
            .collect();
        let mut stats = BlockStats {
            size,
            timed,
            ..BlockStats::default()
        };
        self.counters.fill(&mut stats);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Arc<BlockCounters> {
        Arc::new(BlockCounters::create().unwrap())
    }

    #[test]
    fn counters_and_latency_windows() {
        let s = Stats::new(&[60], page());
        s.record(Op::Read, 4096, true, Duration::from_micros(100));
        s.record(Op::Read, 4096, true, Duration::from_micros(300));
        s.record(Op::WriteZeroes, 8192, true, Duration::from_micros(50));
        s.record(Op::Write, 512, false, Duration::from_micros(1));
        s.record(Op::Discard, 1 << 20, true, Duration::from_micros(10));
        s.record_invalid(Some(T_IN));
        s.record_invalid(None);
        s.note_write_end(8192);
        let snap = s.snapshot(1 << 30);
        assert_eq!(snap.read.operations, 2);
        assert_eq!(snap.read.bytes, 8192);
        assert_eq!(snap.read.invalid, 1);
        assert_eq!(snap.read.total_time_ns, 400_000);
        assert_eq!(snap.write.operations, 1);
        assert_eq!(snap.write.failed, 1);
        assert_eq!(snap.unmap.bytes, 1 << 20);
        assert_eq!(snap.wr_highest_offset, 8192);
        assert!(snap.idle_time_ns.is_some());
        let t = &snap.timed[0];
        assert_eq!(t.interval_length, 60);
        assert_eq!(
            (t.read.min_ns, t.read.max_ns, t.read.avg_ns),
            (100_000, 300_000, 200_000)
        );
        assert_eq!(t.write.avg_ns, 50_000);
        assert_eq!(t.flush.max_ns, 0);
        assert!(t.read.avg_queue_depth > 0.0);
    }

    #[test]
    fn no_operation_means_no_idle_time() {
        assert_eq!(Stats::new(&[], page()).snapshot(0).idle_time_ns, None);
    }

    #[test]
    fn a_later_daemon_counts_on_from_the_page() {
        let counters = page();
        let first = Stats::new(&[5], counters.clone());
        first.record(Op::Write, 4096, true, Duration::from_micros(900));
        first.note_write_end(8192);
        drop(first);
        let second = Stats::new(&[5], counters);
        second.record(Op::Write, 512, true, Duration::from_micros(10));
        second.note_write_end(4096);
        let snap = second.snapshot(1 << 20);
        assert_eq!(snap.write.operations, 2);
        assert_eq!(snap.write.bytes, 4608);
        assert_eq!(
            snap.wr_highest_offset, 8192,
            "the highest offset never goes down"
        );
        assert_eq!(
            snap.timed[0].write.max_ns, 10_000,
            "windows are the daemon's own"
        );
    }

    #[test]
    fn windows_roll_over() {
        let now = Instant::now();
        let mut i = Interval::new(1, now);
        i.windows[0].acc[0].add(5);
        i.windows[1].acc[0].add(5);
        i.roll(now + Duration::from_millis(2100));
        let snap = i.snapshot(now + Duration::from_millis(2100));
        assert_eq!(
            snap.read.max_ns, 0,
            "old latencies dropped after the window"
        );
    }
}
