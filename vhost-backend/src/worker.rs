//! The data path of one connection: a thread on an epoll set of the rings' kick
//! eventfds, the device's own host-side descriptors and a stop eventfd. A kicked ring is
//! handed to the device locked; a live ring is recovered on the first look at it (see
//! `Vring::recover_once`).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::Device;
use crate::shared::Shared;
use crate::watch::HostWatch;

/// epoll data: ring `q`'s kick is `q`, the device's host source `s` is `queues + s`, and
/// the stop event comes after them.
pub(crate) struct Worker {
    epoll: Arc<Epoll>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
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
        let thread = std::thread::Builder::new()
            .name("vhost-worker".into())
            .spawn(move || run(&device, &shared, &thread_epoll, &watch, stop_data))?;
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
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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
            let mem = shared.memory();
            let q = data as usize;
            if q >= queues {
                let source = q - queues;
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
            let Some(mem) = mem else {
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
