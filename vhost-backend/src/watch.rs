//! The device's own host-side descriptors (`Device::host_fds`: engine completions, a
//! timer, network ports), watched by a connection's worker next to the rings' kicks. A
//! device may stop watching one for a while and resume (net stops watching a port while
//! the guest has no receive buffers, so a frame waiting for room does not wake the worker
//! over and over); every new connection starts with all of them watched.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub struct HostWatch {
    epoll: Arc<Epoll>,
    fds: Vec<RawFd>,
    /// epoll data of source 0; source `s` is `first + s`.
    first: u64,
    paused: Vec<Cell<bool>>,
}

impl HostWatch {
    /// Watches every one of `fds` on `epoll`, source `s` with data `first + s`.
    pub(crate) fn new(
        epoll: Arc<Epoll>,
        fds: Vec<RawFd>,
        first: u64,
    ) -> std::io::Result<HostWatch> {
        let watch = HostWatch {
            paused: fds.iter().map(|_| Cell::new(false)).collect(),
            epoll,
            fds,
            first,
        };
        for s in 0..watch.fds.len() {
            watch.ctl(ControlOperation::Add, s)?;
        }
        Ok(watch)
    }

    fn ctl(&self, op: ControlOperation, source: usize) -> std::io::Result<()> {
        let Some(&fd) = self.fds.get(source) else {
            return Ok(());
        };
        self.epoll.ctl(
            op,
            fd,
            EpollEvent::new(EventSet::IN, self.first + source as u64),
        )
    }

    /// Stops watching `source` (until `resume`).
    pub fn pause(&self, source: usize) {
        if let Some(p) = self.paused.get(source).filter(|p| !p.get()) {
            if let Err(e) = self.ctl(ControlOperation::Delete, source) {
                log::warn!("unwatching host source {source}: {e}");
            }
            p.set(true);
        }
    }

    /// Watches `source` again if it was paused (nothing to do, and no system call, if not).
    pub fn resume(&self, source: usize) {
        if let Some(p) = self.paused.get(source).filter(|p| p.get()) {
            if let Err(e) = self.ctl(ControlOperation::Add, source) {
                log::warn!("watching host source {source} again: {e}");
            }
            p.set(false);
        }
    }

    /// A watch on an epoll set of its own, for exercising a device without a connection.
    #[cfg(any(test, feature = "testing"))]
    pub fn for_testing(fds: Vec<RawFd>) -> std::io::Result<HostWatch> {
        HostWatch::new(Arc::new(Epoll::new()?), fds, 0)
    }
}
