//! The one thread every child is started from. The parent-death signal a child asks for
//! (PR_SET_PDEATHSIG) fires when the *thread* that started it ends, not the process: a
//! daemon started on a QMP client's thread was killed as soon as that client hung up.
//! This thread starts on first use and never ends, so the signal means what it should:
//! the gateway is gone.

use std::sync::mpsc::{self, Sender};

use parking_lot::Mutex;

type Job = Box<dyn FnOnce() + Send>;

/// Where jobs go; set once, never dropped (the thread lives while it can receive).
static JOBS: Mutex<Option<Sender<Job>>> = Mutex::new(None);

fn gone() -> std::io::Error {
    std::io::Error::other("the thread that starts children is gone")
}

fn start() -> std::io::Result<Sender<Job>> {
    let (jobs, queue) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            for job in queue {
                // A job that panicked must not end the thread: every child would die.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
        })?;
    Ok(jobs)
}

/// Runs `job` on the spawner thread (starting it the first time) and waits for its
/// result.
pub fn on_spawner_thread<R: Send + 'static>(
    job: impl FnOnce() -> R + Send + 'static,
) -> std::io::Result<R> {
    let (result, answer) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = result.send(job());
    });
    let jobs = {
        let mut slot = JOBS.lock();
        match &*slot {
            Some(jobs) => jobs.clone(),
            None => slot.insert(start()?).clone(),
        }
    };
    jobs.send(job).map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_one_thread_that_outlives_the_callers() {
        let name = || std::thread::current().name().map(str::to_string);
        let tid = || {
            // SAFETY: gettid has no arguments and cannot fail.
            unsafe { libc::gettid() }
        };
        let first = std::thread::spawn(move || on_spawner_thread(move || (name(), tid())))
            .join()
            .unwrap()
            .unwrap();
        let second = std::thread::spawn(move || on_spawner_thread(move || (name(), tid())))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(first.0.as_deref(), Some("spawner"));
        assert_eq!(first, second);
        // A panicking job is an error for its caller, not the thread's end.
        assert!(on_spawner_thread(|| panic!("a job that panics")).is_err());
        assert_eq!(on_spawner_thread(tid).unwrap(), first.1);
    }
}
