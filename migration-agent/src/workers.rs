//! A pool of worker threads whose results come back in the order their jobs went in:
//! jobs go round-robin, each worker serves its own queue in order, and results are taken
//! oldest first. So what the workers produce for one page is used in the order the page
//! was handed out, whichever worker finishes first. At most `DEPTH` jobs per worker are
//! in flight: memory stays bounded and a caller that gets ahead waits for the oldest.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Jobs in flight per worker: one it works on and one waiting, so a worker never idles
/// while the caller takes its previous result.
const DEPTH: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("starting {what} thread {index}: {error}")]
    Spawn {
        what: &'static str,
        index: usize,
        error: std::io::Error,
    },
    #[error("a {0} thread ended")]
    Gone(&'static str),
}

struct Worker<J, D> {
    jobs: Option<SyncSender<J>>,
    done: Receiver<D>,
    thread: Option<JoinHandle<()>>,
}

pub struct OrderedWorkers<J, D> {
    what: &'static str,
    workers: Vec<Worker<J, D>>,
    /// The page of each job in flight and its worker, oldest first.
    in_flight: VecDeque<(u64, usize)>,
    /// The worker the next job goes to.
    next: usize,
}

impl<J: Send + 'static, D: Send + 'static> OrderedWorkers<J, D> {
    /// `threads` workers (at least one) named `what-N`, each running what `make` gives
    /// it on its jobs.
    pub fn start<W>(
        what: &'static str,
        threads: usize,
        mut make: impl FnMut() -> W,
    ) -> Result<Self, WorkersError>
    where
        W: FnMut(J) -> D + Send + 'static,
    {
        let mut workers = Vec::new();
        for index in 0..threads.max(1) {
            let (jobs, queue) = mpsc::sync_channel::<J>(DEPTH);
            let (results, done) = mpsc::channel::<D>();
            let mut work = make();
            let thread = std::thread::Builder::new()
                .name(format!("{what}-{index}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        if results.send(work(job)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|error| WorkersError::Spawn { what, index, error })?;
            workers.push(Worker {
                jobs: Some(jobs),
                done,
                thread: Some(thread),
            });
        }
        Ok(OrderedWorkers {
            what,
            workers,
            in_flight: VecDeque::new(),
            next: 0,
        })
    }

    /// Every worker has its share of jobs: the next must wait for the oldest.
    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= self.workers.len() * DEPTH
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Hands `job` (for `page`) to the next worker. Call it only when not full: the
    /// worker's queue then has room (jobs go round-robin), so this never waits.
    pub fn submit(&mut self, page: u64, job: J) -> Result<(), WorkersError> {
        let index = self.next;
        let sent = self.workers[index].jobs.as_ref().map(|j| j.send(job));
        if !matches!(sent, Some(Ok(()))) {
            return Err(WorkersError::Gone(self.what));
        }
        self.in_flight.push_back((page, index));
        self.next = (index + 1) % self.workers.len();
        Ok(())
    }

    /// The oldest job's page and result: waited for if `wait`, else only if it is ready
    /// (None otherwise, or when nothing is in flight).
    pub fn oldest(&mut self, wait: bool) -> Result<Option<(u64, D)>, WorkersError> {
        let Some(&(page, index)) = self.in_flight.front() else {
            return Ok(None);
        };
        let done = &self.workers[index].done;
        let result = if wait {
            done.recv().map_err(|_| WorkersError::Gone(self.what))?
        } else {
            match done.try_recv() {
                Ok(result) => result,
                Err(mpsc::TryRecvError::Empty) => return Ok(None),
                Err(mpsc::TryRecvError::Disconnected) => return Err(WorkersError::Gone(self.what)),
            }
        };
        self.in_flight.pop_front();
        Ok(Some((page, result)))
    }

    /// How many of the oldest jobs must be taken before no job for a page of
    /// `first..first + count` is in flight (0: none is).
    pub fn jobs_through(&self, first: u64, count: u64) -> usize {
        let end = first.saturating_add(count);
        self.in_flight
            .iter()
            .rposition(|(page, _)| (first..end).contains(page))
            .map_or(0, |last| last + 1)
    }
}

impl<J, D> Drop for OrderedWorkers<J, D> {
    fn drop(&mut self) {
        // Their queues closed, the workers end after the job at hand.
        for w in &mut self.workers {
            w.jobs.take();
        }
        for w in &mut self.workers {
            if let Some(thread) = w.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn results_come_back_in_the_order_jobs_went_in() {
        // The first job of each worker is the slowest: later ones finish first, and
        // still come back after it.
        let mut w = OrderedWorkers::start("t", 3, || {
            |(n, ms): (u64, u64)| {
                std::thread::sleep(Duration::from_millis(ms));
                n
            }
        })
        .unwrap();
        let mut got = Vec::new();
        for n in 0..20u64 {
            if w.is_full() {
                got.push(w.oldest(true).unwrap().unwrap());
            }
            w.submit(n % 4, (n, if n < 3 { 30 } else { 0 })).unwrap();
        }
        while let Some(r) = w.oldest(true).unwrap() {
            got.push(r);
        }
        let expected: Vec<_> = (0..20u64).map(|n| (n % 4, n)).collect();
        assert_eq!(got, expected);
        assert!(w.is_empty());
    }

    #[test]
    fn in_flight_pages_are_found_and_bounded() {
        let mut w = OrderedWorkers::start("t", 2, || |n: u64| n).unwrap();
        for page in [10, 11, 10, 12] {
            assert!(!w.is_full());
            w.submit(page, page).unwrap();
        }
        assert!(w.is_full(), "2 workers, 2 jobs each");
        assert_eq!(w.jobs_through(10, 1), 3, "the later copy of page 10");
        assert_eq!(w.jobs_through(12, 5), 4);
        assert_eq!(w.jobs_through(13, 5), 0);
        assert_eq!(w.jobs_through(u64::MAX, 5), 0);
        // Not waiting: a result that is ready, or none yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let first = loop {
            if let Some(r) = w.oldest(false).unwrap() {
                break r;
            }
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        };
        assert_eq!(first, (10, 10));
    }
}
