//! The data path of one connection: a thread on an epoll set of the rings' kick
//! eventfds, the engines' completion eventfds, the throttle timer and a stop eventfd.
//! A ring seen for the first time on this connection is first recovered from the
//! inflight region (requests a previous daemon had in flight start again, oldest first).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::vring::Vring;
use super::{lock, Shared};
use crate::backend::BlkBackend;

pub struct Worker {
    epoll: Arc<Epoll>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// epoll data: kicks are 0..n, completions n..2n, then the timer and the stop event.
fn completion(n: usize, q: usize) -> u64 {
    (n + q) as u64
}

fn timer(n: usize) -> u64 {
    (2 * n) as u64
}

fn stop(n: usize) -> u64 {
    (2 * n + 1) as u64
}

impl Worker {
    pub fn start(backend: BlkBackend, shared: Arc<Shared>) -> std::io::Result<Worker> {
        let n = backend.num_queues();
        let epoll = Arc::new(Epoll::new()?);
        let add = |fd: RawFd, data: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )
        };
        for (q, fd) in backend.notifiers() {
            add(fd, completion(n, q))?;
        }
        add(backend.timer_fd(), timer(n))?;
        let stop_fd = EventFd::new(EFD_NONBLOCK)?;
        add(stop_fd.as_raw_fd(), stop(n))?;
        let thread_epoll = epoll.clone();
        let thread = std::thread::Builder::new()
            .name("blk-worker".into())
            .spawn(move || run(&backend, &shared, &thread_epoll))?;
        Ok(Worker {
            epoll,
            stop: stop_fd,
            thread: Some(thread),
        })
    }

    pub fn watch_kick(&self, q: usize, fd: RawFd) -> std::io::Result<()> {
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

    pub fn stop(mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// On the first look at a live ring in this connection: where its indices really are,
/// and what a previous daemon left in flight.
fn recover(q: usize, vring: &mut Vring, mem: &GuestMemoryMmap) {
    if vring.recovered {
        return;
    }
    vring.recovered = true;
    let ring_used = match vring.queue.used_idx(mem, Ordering::Acquire) {
        Ok(i) => i.0,
        Err(e) => {
            log::warn!("queue {q}: reading the used index: {e}");
            return;
        }
    };
    // The used ring is the truth about what completed, whatever base the frontend set.
    vring.queue.set_next_used(ring_used);
    let Some((region, counter)) = vring.inflight.as_mut() else {
        return;
    };
    match region.recover(ring_used) {
        Some((found, next_counter)) => {
            *counter = next_counter;
            vring.queue.set_next_avail(found.next_avail);
            if !found.resubmit.is_empty() {
                log::info!(
                    "queue {q}: starting again {} request(s) in flight when the last daemon stopped",
                    found.resubmit.len()
                );
            }
            vring.resubmit = found.resubmit;
        }
        None => log::warn!("queue {q}: inflight region was for another queue size; reset it"),
    }
}

/// Logs the first failures of a queue's processing (a guest that breaks its rings), then
/// one in a thousand.
fn note_failure(count: &mut u64, q: usize, e: &std::io::Error) {
    *count += 1;
    if *count <= 10 || (*count).is_multiple_of(1000) {
        log::warn!("queue {q}: {e} [{count} so far]");
    }
}

fn run(backend: &BlkBackend, shared: &Shared, epoll: &Epoll) {
    let n = backend.num_queues();
    let mut events = vec![EpollEvent::default(); 2 * n + 2];
    let mut failures = 0u64;
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("worker epoll: {e}");
                return;
            }
        };
        for ev in &events[..count] {
            let data = ev.data();
            if data == stop(n) {
                return;
            }
            let mem = shared.memory();
            if data == timer(n) {
                match &mem {
                    Some(m) => {
                        if let Err(e) = backend.release_held(&shared.vrings, m) {
                            note_failure(&mut failures, 0, &e);
                        }
                    }
                    None => backend.discard_timer(),
                }
                continue;
            }
            let data = data as usize;
            let (q, is_kick) = if data < n {
                (data, true)
            } else {
                (data - n, false)
            };
            let Some(vring) = shared.vrings.get(q) else {
                continue;
            };
            let mut vring = lock(vring);
            let Some(mem) = mem else {
                vring.drain_kick();
                if !is_kick {
                    backend.discard_completions(q);
                }
                continue;
            };
            let result = if is_kick {
                vring.drain_kick();
                if !vring.live() {
                    continue;
                }
                recover(q, &mut vring, &mem);
                backend.process_queue(q, &mut vring, &mem)
            } else {
                backend.reap(q, &mut vring, &mem)
            };
            if let Err(e) = result {
                note_failure(&mut failures, q, &e);
            }
        }
    }
}
