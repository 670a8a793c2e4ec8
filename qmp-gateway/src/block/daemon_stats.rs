//! A disk's statistics as its daemon last gave them. query-blockstats asks every daemon
//! at once and waits a bounded time: a daemon that does not answer in time (stopped,
//! stuck) is shown with the last values it gave, and its answer, when it comes, is kept
//! for the next query. At most one question per disk is out at a time, so a stuck
//! daemon costs one waiting thread, whatever the clients do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use ipc::BlockStats;
use parking_lot::Mutex;

type Answer = Result<BlockStats, String>;

#[derive(Default)]
struct Inner {
    last: BlockStats,
    /// Where the question that is out will answer (taken by the query waiting for it).
    pending: Option<Receiver<Answer>>,
    /// Counts resets: an answer from before one is not kept.
    generation: u64,
}

#[derive(Default)]
pub struct StatsCache {
    inner: Mutex<Inner>,
    /// A question is out (its daemon has not answered yet).
    asking: Arc<AtomicBool>,
}

impl StatsCache {
    /// A new daemon counts from zero; what the old one would still answer is dropped.
    pub fn reset(&self) {
        let mut inner = self.inner.lock();
        inner.last = BlockStats::default();
        inner.pending = None;
        inner.generation += 1;
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

    /// The answer to the question that is out if it comes by `deadline`, else the last
    /// values.
    pub fn answer(&self, deadline: Instant) -> BlockStats {
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

    fn stats(ops: u64) -> BlockStats {
        let mut s = BlockStats::default();
        s.read.operations = ops;
        s
    }

    #[test]
    fn a_late_answer_is_kept_for_the_next_query() {
        let cache = StatsCache::default();
        cache.ask(|| Ok(stats(1)));
        assert_eq!(
            cache
                .answer(Instant::now() + Duration::from_secs(5))
                .read
                .operations,
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
            cache
                .answer(Instant::now() + Duration::from_millis(50))
                .read
                .operations,
            1
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        cache.ask(|| Ok(stats(99)));
        go.send(()).unwrap();
        assert_eq!(
            cache
                .answer(Instant::now() + Duration::from_secs(5))
                .read
                .operations,
            2
        );
        cache.reset();
        assert_eq!(cache.answer(Instant::now()).read.operations, 0);
    }
}
