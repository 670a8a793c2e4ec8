//! A disk's statistics. Its counters live in the disk's counters page (shared memory the
//! gateway creates at attach and hands each of its daemons): they survive every daemon,
//! SIGKILLed ones too, to the last completed request, and only go up, as QEMU's do. They
//! are read from the page at each query, daemon or none. What only a running daemon knows
//! (its latency windows, `timed_stats`) is asked of it: query-blockstats asks every
//! daemon at once and waits a bounded time; a daemon that does not answer in time
//! (stopped, stuck) is shown with the last windows it gave, and its answer, when it comes,
//! is kept for the next query. At most one question per disk is out at a time, so a
//! stuck daemon costs one waiting thread, whatever the clients do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use ipc::block_counters::CountersError;
use ipc::{BlockCounters, BlockStats};
use parking_lot::Mutex;

type Answer = Result<BlockStats, String>;

#[derive(Default)]
struct Inner {
    last: BlockStats,
    /// Where the question that is out will answer (taken by the query waiting for it).
    pending: Option<Receiver<Answer>>,
    /// Counts daemons: an answer from an earlier one is not kept.
    generation: u64,
}

pub struct StatsCache {
    inner: Mutex<Inner>,
    /// A question is out (its daemon has not answered yet).
    asking: Arc<AtomicBool>,
    /// The disk's counters, whichever daemon counts into them.
    counters: BlockCounters,
}

impl StatsCache {
    /// A disk's, with a new counters page (all zero).
    pub fn new() -> Result<StatsCache, CountersError> {
        Ok(StatsCache {
            inner: Mutex::default(),
            asking: Arc::default(),
            counters: BlockCounters::create()?,
        })
    }

    /// The counters page, for the next daemon (it counts on from what is there).
    pub fn counters(&self) -> &BlockCounters {
        &self.counters
    }

    /// A new daemon serves the disk: what the old one would still answer is dropped.
    /// The counters carry on; the old daemon's latency windows are shown until the new
    /// one answers.
    pub fn new_daemon(&self) {
        let mut inner = self.inner.lock();
        inner.pending = None;
        inner.generation += 1;
    }

    /// The statistics while no daemon runs: the counters as the last daemon left them.
    pub fn without_daemon(&self) -> BlockStats {
        let mut stats = self.inner.lock().last.clone();
        self.counters.fill(&mut stats);
        stats
    }

    /// Puts `ask` (a call to the daemon) to it on a thread of its own, unless a question
    /// is already out.
    pub fn ask(&self, ask: impl FnOnce() -> Answer + Send + 'static) {
        if self.asking.swap(true, Ordering::SeqCst) {
            return;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let asking = self.asking.clone();
        let spawned = std::thread::Builder::new()
            .name("blockstats".into())
            .spawn(move || {
                let answer = ask();
                // The daemon answered: the next query may ask again, even before this
                // answer is collected.
                asking.store(false, Ordering::SeqCst);
                let _ = tx.send(answer);
            });
        match spawned {
            Ok(_) => self.inner.lock().pending = Some(rx),
            Err(e) => {
                log::warn!("asking a block daemon for its statistics: {e}");
                self.asking.store(false, Ordering::SeqCst);
            }
        }
    }

    /// The counters now, with the answer to the question that is out if it comes by
    /// `deadline`, else with the last answer.
    pub fn answer(&self, deadline: Instant) -> BlockStats {
        let mut stats = self.collect(deadline);
        self.counters.fill(&mut stats);
        stats
    }

    fn collect(&self, deadline: Instant) -> BlockStats {
        let (rx, generation) = {
            let mut inner = self.inner.lock();
            match inner.pending.take() {
                Some(rx) => (rx, inner.generation),
                None => return inner.last.clone(),
            }
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        let answer = rx.recv_timeout(wait);
        let mut inner = self.inner.lock();
        let current = inner.generation == generation;
        match answer {
            Ok(Ok(stats)) if current => inner.last = stats,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("{e}"),
            // Still out: the next query collects it.
            Err(RecvTimeoutError::Timeout) if current && inner.pending.is_none() => {
                inner.pending = Some(rx)
            }
            Err(_) => {}
        }
        inner.last.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An answer whose latency windows say `n` (the counters come from the page).
    fn stats(n: u64) -> BlockStats {
        BlockStats {
            timed: vec![ipc::TimedStats {
                interval_length: n as u32,
                ..Default::default()
            }],
            ..BlockStats::default()
        }
    }

    fn windows(s: &BlockStats) -> u32 {
        s.timed.first().map_or(0, |t| t.interval_length)
    }

    #[test]
    fn a_late_answer_is_kept_for_the_next_query() {
        let cache = StatsCache::new().unwrap();
        cache.ask(|| Ok(stats(1)));
        assert_eq!(
            windows(&cache.answer(Instant::now() + Duration::from_secs(5))),
            1
        );
        let (go, wait) = mpsc::channel::<()>();
        cache.ask(move || {
            let _ = wait.recv();
            Ok(stats(2))
        });
        // Stuck: the last values, at once; no second question while one is out.
        let t = Instant::now();
        assert_eq!(
            windows(&cache.answer(Instant::now() + Duration::from_millis(50))),
            1
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        cache.ask(|| Ok(stats(99)));
        go.send(()).unwrap();
        assert_eq!(
            windows(&cache.answer(Instant::now() + Duration::from_secs(5))),
            2
        );
        // A new daemon: its predecessor's windows until it answers, and a late answer
        // from the predecessor is not taken.
        let (go, wait) = mpsc::channel::<()>();
        cache.ask(move || {
            let _ = wait.recv();
            Ok(stats(3))
        });
        cache.new_daemon();
        go.send(()).unwrap();
        assert_eq!(windows(&cache.answer(Instant::now())), 2);
    }

    #[test]
    fn counters_come_from_the_page_with_or_without_a_daemon() {
        use std::sync::atomic::Ordering;
        let cache = StatsCache::new().unwrap();
        let page = cache.counters().page();
        page.write.operations.store(5, Ordering::Relaxed);
        // A daemon's answer is older than the page: the page wins.
        let mut old = stats(1);
        old.write.operations = 4;
        cache.ask(move || Ok(old));
        let s = cache.answer(Instant::now() + Duration::from_secs(5));
        assert_eq!((s.write.operations, windows(&s)), (5, 1));
        // Its daemon gone, another counted on; none runs now.
        cache.new_daemon();
        page.write.operations.fetch_add(2, Ordering::Relaxed);
        let s = cache.without_daemon();
        assert_eq!((s.write.operations, windows(&s)), (7, 1));
    }
}
