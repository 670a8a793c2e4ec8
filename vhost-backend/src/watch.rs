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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    fn ready(watch: &HostWatch) -> Vec<u64> {
        let mut events = [EpollEvent::default(); 4];
        let n = watch.epoll.wait(0, &mut events).unwrap();
        events[..n].iter().map(EpollEvent::data).collect()
    }

    #[test]
    fn a_paused_source_is_not_reported_until_it_is_resumed() {
        let (a, b) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        let watch = HostWatch::new(
            Arc::new(Epoll::new().unwrap()),
            vec![a.as_raw_fd(), b.as_raw_fd()],
            10,
        )
        .unwrap();
        a.write(1).unwrap();
        b.write(1).unwrap();
        let mut both = ready(&watch);
        both.sort_unstable();
        assert_eq!(both, vec![10, 11]);
        watch.pause(0);
        watch.pause(0); // twice is once
        assert_eq!(ready(&watch), vec![11]);
        watch.resume(0);
        watch.resume(0);
        let mut both = ready(&watch);
        both.sort_unstable();
        assert_eq!(both, vec![10, 11]);
        // Sources the device does not have are ignored.
        watch.pause(7);
        watch.resume(7);
    }
}
