//! Per-node I/O statistics (what query-blockstats reports).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::Op;

#[derive(Default)]
pub struct OpStats {
    pub ops: AtomicU64,
    pub bytes: AtomicU64,
    pub failed: AtomicU64,
    pub total_ns: AtomicU64,
}

#[derive(Default)]
pub struct Stats {
    pub read: OpStats,
    pub write: OpStats,
    pub flush: OpStats,
    pub discard: OpStats,
    pub write_zeroes: OpStats,
    /// Requests the parser refused (malformed or unsupported).
    pub invalid: AtomicU64,
    /// Highest byte offset written + 1 (for write thresholds).
    pub wr_highest_offset: AtomicU64,
    /// Wall-clock time (ns since the epoch) of the last completed request.
    pub last_ns: AtomicU64,
}

impl Stats {
    pub fn of(&self, op: Op) -> Option<&OpStats> {
        match op {
            Op::Read => Some(&self.read),
            Op::Write => Some(&self.write),
            Op::Flush => Some(&self.flush),
            Op::Discard => Some(&self.discard),
            Op::WriteZeroes => Some(&self.write_zeroes),
            Op::Other => None,
        }
    }

    pub fn record(&self, op: Op, bytes: u64, ok: bool, latency: Duration) {
        if let Some(s) = self.of(op) {
            if ok {
                s.ops.fetch_add(1, Ordering::Relaxed);
                s.bytes.fetch_add(bytes, Ordering::Relaxed);
                s.total_ns
                    .fetch_add(latency.as_nanos() as u64, Ordering::Relaxed);
            } else {
                s.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_ns.store(now.as_nanos() as u64, Ordering::Relaxed);
    }
}
