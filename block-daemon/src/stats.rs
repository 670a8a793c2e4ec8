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
use parking_lot::{Mutex, MutexGuard};

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

    /// Counts the completions of one pass over a queue, all finished at `now`: one
    /// clock reading, one lock of the windows and one update of each shared counter
    /// for the lot. Per request, these were a fifth of a queue thread's time at 800k
    /// requests a second (bench/blk, hole reads from the page cache).
    pub fn recorder(&self, now: Instant) -> Recorder<'_> {
        let mut intervals = self.intervals.lock();
        for i in intervals.iter_mut() {
            i.roll(now);
        }
        Recorder {
            stats: self,
            now,
            intervals,
            sums: [Sums::default(); 4],
            last: None,
        }
    }

    /// The disk's counters page (a chain opened again counts into it too).
    pub fn counters(&self) -> &Arc<BlockCounters> {
        &self.counters
    }

    /// The shared counters of `slot` (see `slot`).
    fn shared(&self, slot: usize) -> &SharedOpCounters {
        let page = self.counters.page();
        match slot {
            0 => &page.read,
            1 => &page.write,
            2 => &page.flush,
            _ => &page.unmap,
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

/// Where an operation is counted: read 0, write 1 (write-zeroes too, as QEMU counts
/// it), flush 2, unmap 3 (latency windows: the first three only); None: not counted.
fn slot(op: Op) -> Option<usize> {
    match op {
        Op::Read => Some(0),
        Op::Write | Op::WriteZeroes => Some(1),
        Op::Flush => Some(2),
        Op::Discard => Some(3),
        Op::Other => None,
    }
}

/// One pass's counts of one kind of operation, added to the shared page at the end.
#[derive(Clone, Copy, Default)]
struct Sums {
    operations: u64,
    bytes: u64,
    time_ns: u64,
    failed: u64,
}

/// The completions of one pass (`Stats::recorder`); they reach the shared counters when
/// it is dropped.
pub struct Recorder<'a> {
    stats: &'a Stats,
    now: Instant,
    intervals: MutexGuard<'a, Vec<Interval>>,
    sums: [Sums; 4],
    /// The last latency worked out, and the start it was for: the requests of a pass
    /// share one start (`Request::arrived`), and the subtraction showed in profiles.
    last: Option<(Instant, u64)>,
}

impl Recorder<'_> {
    /// A request taken at `started` finished (`ok`: successfully).
    pub fn record(&mut self, op: Op, bytes: u64, ok: bool, started: Instant) {
        let Some(slot) = slot(op) else {
            return;
        };
        let sums = &mut self.sums[slot];
        if !ok {
            sums.failed += 1;
            return;
        }
        let ns = match self.last {
            Some((at, ns)) if at == started => ns,
            _ => {
                let ns = self.now.saturating_duration_since(started).as_nanos() as u64;
                self.last = Some((started, ns));
                ns
            }
        };
        sums.operations += 1;
        sums.bytes += bytes;
        sums.time_ns = sums.time_ns.saturating_add(ns);
        if slot < 3 {
            for i in self.intervals.iter_mut() {
                for w in &mut i.windows {
                    w.acc[slot].add(ns);
                }
            }
        }
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        let mut completed = false;
        for (slot, sums) in self.sums.iter().enumerate() {
            let shared = self.stats.shared(slot);
            if sums.failed > 0 {
                shared.failed.fetch_add(sums.failed, Ordering::Relaxed);
            }
            if sums.operations > 0 {
                completed = true;
                shared
                    .operations
                    .fetch_add(sums.operations, Ordering::Relaxed);
                shared.bytes.fetch_add(sums.bytes, Ordering::Relaxed);
                shared
                    .total_time_ns
                    .fetch_add(sums.time_ns, Ordering::Relaxed);
            }
        }
        if completed {
            self.stats
                .counters
                .page()
                .last_completion_ns
                .store(monotonic_ns().max(1), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Arc<BlockCounters> {
        Arc::new(BlockCounters::create().unwrap())
    }

    /// A pass of one successful request of `latency`.
    fn record(s: &Stats, op: Op, bytes: u64, latency: Duration) {
        let now = Instant::now();
        s.recorder(now).record(op, bytes, true, now - latency);
    }

    #[test]
    fn counters_and_latency_windows() {
        let s = Stats::new(&[60], page());
        let now = Instant::now();
        let ago = |us| now - Duration::from_micros(us);
        {
            // One pass: its counts reach the page when the recorder goes.
            let mut pass = s.recorder(now);
            pass.record(Op::Read, 4096, true, ago(100));
            pass.record(Op::Read, 4096, true, ago(300));
            pass.record(Op::WriteZeroes, 8192, true, ago(50));
            pass.record(Op::Write, 512, false, ago(1));
            pass.record(Op::Discard, 1 << 20, true, ago(10));
        }
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
        record(&first, Op::Write, 4096, Duration::from_micros(900));
        first.note_write_end(8192);
        drop(first);
        let second = Stats::new(&[5], counters);
        record(&second, Op::Write, 512, Duration::from_micros(10));
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
