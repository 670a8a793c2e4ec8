//! The data path of one connection: a thread on an epoll set of the rings' kick
//! eventfds, the device's own host-side descriptors and a stop eventfd. A kicked ring is
//! handed to the device locked; a live ring is recovered on the first look at it (see
//! `Vring::recover_once`).
//!
//! A daemon may start its resident I/O thread (`start_resident_thread`) before any
//! frontend comes: each connection's data path then runs on it (a new thread only while
//! it is busy with another), so the thread that serves the device is there, with one id,
//! for the daemon's whole life, and the gateway can name it (an iothread's thread-id)
//! before the first kick.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::Device;
use crate::shared::Shared;
use crate::watch::HostWatch;

/// A data path to run.
type Job = Box<dyn FnOnce() + Send>;

/// The resident thread: where jobs go (each with what its end drops), and whether it
/// waits for one.
struct Resident {
    jobs: Mutex<SyncSender<(Job, SyncSender<()>)>>,
    idle: AtomicBool,
}

static RESIDENT: OnceLock<Resident> = OnceLock::new();

/// Starts the process's resident I/O thread (once; later calls do nothing). Started after
/// the daemon's sandbox, so that its seccomp filter covers it as every other thread.
pub fn start_resident_thread() -> io::Result<()> {
    if RESIDENT.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Job, SyncSender<()>)>(1);
    std::thread::Builder::new()
        .name(ipc::process::IO_THREAD_NAME.into())
        .spawn(move || {
            for (job, done) in rx {
                // A data path that panics ends its connection, not the thread.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                // Idle before its `Worker` hears of the end: the next connection's
                // data path, which may start at once, runs here too.
                if let Some(r) = RESIDENT.get() {
                    r.idle.store(true, Ordering::SeqCst);
                }
                drop(done);
            }
        })?;
    let _ = RESIDENT.set(Resident {
        jobs: Mutex::new(tx),
        idle: AtomicBool::new(true),
    });
    Ok(())
}

/// Runs `job` on the resident thread if there is one and it is idle (the receiver is
/// disconnected once it is over, it never receives); gives `job` back otherwise.
fn run_resident(job: Job) -> Result<Receiver<()>, Job> {
    let Some(r) = RESIDENT.get() else {
        return Err(job);
    };
    if r.idle
        .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return Err(job);
    }
    let (done, ended) = std::sync::mpsc::sync_channel(0);
    let sent = match r.jobs.lock() {
        Ok(tx) => tx.send((job, done)).map_err(|e| e.0 .0),
        Err(_) => Err(job),
    };
    if sent.is_err() {
        r.idle.store(true, Ordering::SeqCst);
    }
    sent.map(|()| ended)
}

/// Where a connection's data path runs.
enum Running {
    Spawned(JoinHandle<()>),
    /// On the resident thread, until this is disconnected.
    Resident(Receiver<()>),
}

/// epoll data: ring `q`'s kick is `q`, the device's host source `s` is `queues + s`, and
/// the stop event comes after them.
pub(crate) struct Worker {
    epoll: Arc<Epoll>,
    stop: EventFd,
    thread: Option<Running>,
}

impl Worker {
    pub fn start<D: Device>(device: D, shared: Arc<Shared>) -> io::Result<Worker> {
        let queues = shared.rings.len();
        let epoll = Arc::new(Epoll::new()?);
        let host_fds = device.host_fds();
        let stop_data = (queues + host_fds.len()) as u64;
        let watch = HostWatch::new(epoll.clone(), host_fds, queues as u64)?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, stop_data),
        )?;
        let thread_epoll = epoll.clone();
        let job: Job = Box::new(move || run(&device, &shared, &thread_epoll, &watch, stop_data));
        let thread = match run_resident(job) {
            Ok(ended) => Running::Resident(ended),
            Err(job) => Running::Spawned(
                std::thread::Builder::new()
                    .name("vhost-worker".into())
                    .spawn(job)?,
            ),
        };
        Ok(Worker {
            epoll,
            stop,
            thread: Some(thread),
        })
    }

    pub fn watch_kick(&self, q: usize, fd: RawFd) -> io::Result<()> {
        let event = EpollEvent::new(EventSet::IN, q as u64);
        match self.epoll.ctl(ControlOperation::Add, fd, event) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.epoll.ctl(ControlOperation::Modify, fd, event)
            }
            other => other,
        }
    }

    pub fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Ends the thread once it is done with what it is doing.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        let _ = self.stop.write(1);
        match self.thread.take() {
            Some(Running::Spawned(t)) => {
                let _ = t.join();
            }
            Some(Running::Resident(ended)) => {
                let _ = ended.recv();
            }
            None => {}
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.end();
    }
}

/// Logs the first failures of the data path (a guest that breaks its rings), then one in
/// a thousand.
fn note_failure(count: &mut u64, what: std::fmt::Arguments<'_>, e: &io::Error) {
    *count += 1;
    if *count <= 10 || (*count).is_multiple_of(1000) {
        log::warn!("{what}: {e} [{count} so far]");
    }
}

fn run<D: Device>(device: &D, shared: &Shared, epoll: &Epoll, watch: &HostWatch, stop: u64) {
    let queues = shared.rings.len();
    let mut events = vec![EpollEvent::default(); stop as usize + 1];
    let mut failures = 0u64;
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("worker epoll: {e}");
                return;
            }
        };
        for ev in &events[..count] {
            let data = ev.data();
            if data == stop {
                return;
            }
            let q = data as usize;
            if q >= queues {
                let source = q - queues;
                let mem = shared.memory();
                if let Err(e) = device.host_ready(source, &shared.rings, mem.as_ref(), watch) {
                    note_failure(&mut failures, format_args!("host source {source}"), &e);
                }
                continue;
            }
            let Some(mut ring) = shared.rings.lock_for_setup(q) else {
                continue;
            };
            ring.drain_kick();
            ipc::tracepoint!(VirtqueueKick, "queue={q}");
            // The memory as it is once the kicks are taken, not as it was at the wake-up:
            // a frontend that changed the memory table (a DIMM added) before it kicked
            // has its change seen with the kick. Read before the drain, a table older than
            // the buffers the kick is for would fail them.
            let Some(mem) = shared.memory() else {
                continue;
            };
            if !ring.live() {
                continue;
            }
            ring.recover_once(q, &mem);
            // Recovery may have run in the device's own lock of the ring (Rings::lock):
            // whichever ran it, the device hears of it here, once.
            let resumed = ring.take_resumed();
            if resumed > 0 {
                device.resumed_in_flight(q, resumed);
            }
            if let Err(e) = device.queue_kicked(q, &mut ring, &mem, watch) {
                note_failure(&mut failures, format_args!("queue {q}"), &e);
            }
        }
    }
}
