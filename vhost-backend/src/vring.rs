//! One virtqueue of a connection, as the frontend set it up: the split ring
//! (virtio-queue), its kick and call eventfds, whether it is enabled, and its in-flight
//! tracking. A device takes chains from it and completes them through it.
//!
//! Every write the framework makes to guest memory on a device's behalf is a write to a
//! used ring (entries, index, and the avail_event or flags field), and all of them happen
//! in this file: `add_used`, `enable_notification`, `disable_notification`. They are
//! marked in the dirty log there, and so are a chain's device-writable buffers when
//! `add_used` completes it: a device writes into a chain only before completing it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio::{ChainError, Desc};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::dirty_log::DirtyLog;
use crate::inflight::{InflightQueue, InflightRegion};

/// Where a used ring's fields are (virtio 1.2, 2.7.8): flags, idx, then the elements,
/// then avail_event.
const USED_FLAGS: u64 = 0;
const USED_IDX: u64 = 2;
const USED_RING: u64 = 4;
const USED_ELEM: u64 = 8;

/// A queue's part of the inflight region, and the counter for the next head taken.
struct Tracking {
    queue: InflightQueue,
    counter: u64,
    /// Keeps the mapping `queue` points into alive.
    _region: Arc<InflightRegion>,
}

pub struct Vring {
    queue: Queue,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    tracking: Option<Tracking>,
    /// The first look at this ring, live, on this connection has happened (recover_once).
    recovered: bool,
    /// Heads a previous daemon had in flight, to take again before new ones, oldest first.
    resubmit: VecDeque<u16>,
    /// How many requests recovery found in flight, until the worker tells the device.
    resumed_unreported: usize,
    /// The connection's dirty log.
    log: Arc<DirtyLog>,
    /// SET_VRING_ADDR's log_guest_addr, when its flags have VHOST_VRING_F_LOG: where
    /// used ring writes are logged (at the ring's own guest address without it).
    used_log_addr: Option<u64>,
}

fn ring_error(e: virtio_queue::Error) -> io::Error {
    io::Error::other(e)
}

impl Vring {
    /// `max_size`: a power of two within the virtio limit (the device's max queue size).
    pub(crate) fn new(max_size: u16, log: Arc<DirtyLog>) -> Vring {
        Vring {
            queue: Queue::new(max_size).unwrap_or_else(|_| {
                Queue::new(256).unwrap_or_else(|_| unreachable!("256 is a valid queue size"))
            }),
            kick: None,
            call: None,
            enabled: false,
            tracking: None,
            recovered: false,
            resubmit: VecDeque::new(),
            resumed_unreported: 0,
            log,
            used_log_addr: None,
        }
    }

    /// Started (has a kick fd) and enabled: chains may be taken from it.
    pub fn live(&self) -> bool {
        self.kick.is_some() && self.enabled && self.queue.ready()
    }

    /// The ring's state, to read (indices, size, EVENT_IDX).
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The driver negotiated VIRTIO_F_EVENT_IDX.
    pub fn event_idx(&self) -> bool {
        self.queue.event_idx_enabled()
    }

    /// The next chain to serve: first the heads a previous daemon had in flight (read
    /// again from the descriptor table), then what the driver made available (marked in
    /// flight when the device tracks it). The head comes with its descriptors or with why
    /// they cannot be used; either way the device completes it. None when the ring is not
    /// live or has nothing new.
    pub fn pop_chain(
        &mut self,
        mem: &GuestMemoryMmap,
    ) -> Option<(u16, Result<Vec<Desc>, ChainError>)> {
        // A kick or a host event can race with the frontend stopping the ring.
        if !self.live() {
            return None;
        }
        if let Some(head) = self.resubmit.pop_front() {
            let table = GuestAddress(self.queue.desc_table());
            return Some((
                head,
                virtio::read_chain(mem, table, self.queue.size(), head),
            ));
        }
        let (head, chain) = virtio::pop_chain(&mut self.queue, mem)?;
        if let Some(t) = self.tracking.as_mut() {
            t.queue.start(head, t.counter);
            t.counter += 1;
        }
        Some((head, chain))
    }

    /// Where the next chain will be taken from the available ring.
    pub fn next_avail(&self) -> u16 {
        self.queue.next_avail()
    }

    /// Puts back the chains taken since the available index was `next_avail` (a device
    /// that found too little room in them to use any). Only for a device that does not
    /// track in flight: the inflight region would still say those heads were taken.
    pub fn rewind(&mut self, next_avail: u16) {
        debug_assert!(self.tracking.is_none(), "rewinding a tracked ring");
        self.queue.set_next_avail(next_avail);
    }

    /// Puts a finished chain on the used ring, with `len` bytes written into it (the
    /// in-flight bookkeeping around it, when tracked). With dirty logging on, every
    /// device-writable buffer of the chain is marked, then the used element and index.
    pub fn add_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) -> io::Result<()> {
        if let Some(t) = &self.tracking {
            t.queue.begin_complete(head);
        }
        let marker = if self.log.on() {
            self.log.marker()
        } else {
            None
        };
        let size = self.queue.size();
        let slot = self.queue.next_used().checked_rem(size);
        if let Some(m) = &marker {
            // Before the used index gives the chain back: from then on the driver may
            // reuse its descriptors, and the walk would find someone else's buffers.
            m.mark_chain(mem, self.queue.desc_table(), size, head);
        }
        self.queue.add_used(mem, head, len).map_err(ring_error)?;
        if let (Some(m), Some(slot)) = (&marker, slot) {
            m.mark(
                self.used_log(USED_RING + USED_ELEM * u64::from(slot)),
                USED_ELEM,
            );
            m.mark(self.used_log(USED_IDX), 2);
        }
        if let Some(t) = &self.tracking {
            t.queue.end_complete(head, self.queue.next_used());
        }
        Ok(())
    }

    /// Where the write to byte `offset` of the used ring is logged: from log_guest_addr
    /// when the frontend set VHOST_VRING_F_LOG (the spec's rule), else from the ring's
    /// guest address (a frontend that logs without that flag still loses no page).
    fn used_log(&self, offset: u64) -> u64 {
        self.used_log_addr
            .unwrap_or(self.queue.used_ring())
            .saturating_add(offset)
    }

    /// Marks the used ring field the notification calls write: avail_event with
    /// EVENT_IDX (only when asking for kicks), the flags without.
    fn log_notification(&self, asking: bool) {
        if !self.log.on() {
            return;
        }
        let offset = match (self.event_idx(), asking) {
            (true, true) => USED_RING + USED_ELEM * u64::from(self.queue.size()),
            (true, false) => return,
            (false, _) => USED_FLAGS,
        };
        if let Some(marker) = self.log.marker() {
            marker.mark(self.used_log(offset), 2);
        }
    }

    /// Interrupts the driver (the call eventfd) if the ring says it wants one.
    pub fn notify(&mut self, mem: &GuestMemoryMmap) -> io::Result<()> {
        if self.queue.needs_notification(mem).map_err(ring_error)? {
            if let Some(mut call) = self.call.as_ref() {
                call.write_all(&1u64.to_ne_bytes())?;
            }
        }
        Ok(())
    }

    /// Asks the driver to kick for new chains; true if some arrived meanwhile (look again).
    /// Nothing is written to a ring that is not live (it may belong to nobody now).
    pub fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> io::Result<bool> {
        if !self.live() {
            return Ok(false);
        }
        let more = self.queue.enable_notification(mem).map_err(ring_error)?;
        self.log_notification(true);
        Ok(more)
    }

    /// Asks the driver not to kick while the device is taking chains anyway.
    pub fn disable_notification(&mut self, mem: &GuestMemoryMmap) -> io::Result<()> {
        if !self.live() {
            return Ok(());
        }
        self.queue.disable_notification(mem).map_err(ring_error)?;
        self.log_notification(false);
        Ok(())
    }

    /// On the first look at the ring, live, on this connection: where its indices really
    /// are, and what a previous daemon left in flight. The used ring is the truth about
    /// what completed, whatever base the frontend set.
    pub(crate) fn recover_once(&mut self, q: usize, mem: &GuestMemoryMmap) {
        if self.recovered || !self.live() {
            return;
        }
        self.recovered = true;
        let ring_used = match self.queue.used_idx(mem, Ordering::Acquire) {
            Ok(i) => i.0,
            Err(e) => {
                log::warn!("queue {q}: reading the used index: {e}");
                return;
            }
        };
        self.queue.set_next_used(ring_used);
        let Some(t) = self.tracking.as_mut() else {
            return;
        };
        match t.queue.recover(ring_used) {
            Some((found, next_counter)) => {
                t.counter = next_counter;
                self.queue.set_next_avail(found.next_avail);
                if !found.resubmit.is_empty() {
                    log::info!(
                        "queue {q}: starting again {} request(s) in flight when the last daemon stopped",
                        found.resubmit.len()
                    );
                }
                self.resumed_unreported = found.resubmit.len();
                self.resubmit = found.resubmit.into();
            }
            None => log::warn!("queue {q}: inflight region was for another queue size; reset it"),
        }
    }

    /// How many requests recovery found in flight, once (0 after that, or if none).
    pub(crate) fn take_resumed(&mut self) -> usize {
        std::mem::take(&mut self.resumed_unreported)
    }

    pub(crate) fn kick_fd(&self) -> Option<RawFd> {
        self.kick.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// SET_VRING_KICK: the ring starts with a kick fd (made nonblocking: the worker
    /// drains it) and stops without one.
    pub(crate) fn set_kick(&mut self, kick: Option<File>) {
        if let Some(f) = &kick {
            // SAFETY: fcntl on the fd we were just given, with integer arguments.
            unsafe {
                let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        self.queue.set_ready(kick.is_some());
        self.kick = kick;
    }

    pub(crate) fn set_call(&mut self, call: Option<File>) {
        self.call = call;
    }

    pub(crate) fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// Consumes the kick eventfd's count (it may be nonblocking or not yet signalled).
    pub(crate) fn drain_kick(&self) {
        if let Some(k) = &self.kick {
            let mut buf = [0u8; 8];
            // SAFETY: reading 8 bytes from an eventfd into a local buffer; the fd is set
            // nonblocking when it arrives.
            unsafe { libc::read(k.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        }
    }

    pub(crate) fn set_size(&mut self, size: u16) {
        self.queue.set_size(size);
    }

    pub(crate) fn set_addresses(
        &mut self,
        desc: GuestAddress,
        avail: GuestAddress,
        used: GuestAddress,
    ) -> Result<(), virtio_queue::Error> {
        self.queue.try_set_desc_table_address(desc)?;
        self.queue.try_set_avail_ring_address(avail)?;
        self.queue.try_set_used_ring_address(used)
    }

    /// SET_VRING_ADDR's log_guest_addr if its flags had VHOST_VRING_F_LOG, else None.
    pub(crate) fn set_used_log_addr(&mut self, addr: Option<u64>) {
        self.used_log_addr = addr;
    }

    /// SET_VRING_BASE: where the frontend says the ring stands (recovery corrects the
    /// used side from the ring itself).
    pub(crate) fn set_base(&mut self, base: u16) {
        self.queue.set_next_avail(base);
        self.queue.set_next_used(base);
    }

    pub(crate) fn set_event_idx(&mut self, enabled: bool) {
        self.queue.set_event_idx(enabled);
    }

    /// GET_VRING_BASE: the ring stops (the device has drained it); the next start looks
    /// at it afresh.
    pub(crate) fn stop(&mut self) {
        self.kick = None;
        self.queue.set_ready(false);
        self.recovered = false;
    }

    /// SET_INFLIGHT_FD: this ring's heads are tracked in queue `q` of `region`.
    pub(crate) fn track_in(&mut self, region: &Arc<InflightRegion>, q: u16) {
        self.tracking = Some(Tracking {
            queue: region.queue(q),
            counter: 0,
            _region: region.clone(),
        });
        self.recovered = false;
    }

    /// The driver's interrupt, as SET_VRING_CALL gives it: for counting the calls a
    /// device makes without a connection.
    #[cfg(any(test, feature = "testing"))]
    pub fn set_call_for_testing(&mut self, call: File) {
        self.set_call(Some(call));
    }

    /// A ring as a frontend leaves it after setting it up, live, with a kick eventfd of
    /// its own: for exercising a device without a connection.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn set_up_for_testing(
        &mut self,
        size: u16,
        (desc, avail, used): (u64, u64, u64),
        event_idx: bool,
    ) -> io::Result<()> {
        use std::os::fd::{FromRawFd, OwnedFd};
        self.set_size(size);
        self.set_addresses(GuestAddress(desc), GuestAddress(avail), GuestAddress(used))
            .map_err(ring_error)?;
        self.set_event_idx(event_idx);
        // SAFETY: eventfd with integer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and nothing else owns it.
        self.set_kick(Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) })));
        self.set_enabled(true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use vm_memory::Bytes;

    const QSIZE: u16 = 16;
    const LAYOUT: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(mem: &GuestMemoryMmap, i: u16, addr: u64, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&512u32.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(LAYOUT.0 + 16 * u64::from(i)))
            .unwrap();
    }

    fn make_available(mem: &GuestMemoryMmap, heads: &[u16]) {
        for (i, h) in heads.iter().enumerate() {
            mem.write_obj(*h, GuestAddress(LAYOUT.1 + 4 + 2 * i as u64))
                .unwrap();
        }
        mem.write_obj(heads.len() as u16, GuestAddress(LAYOUT.1 + 2))
            .unwrap();
    }

    fn live_ring() -> Vring {
        let mut v = Vring::new(QSIZE, Arc::default());
        v.set_up_for_testing(QSIZE, LAYOUT, false).unwrap();
        v
    }

    #[test]
    fn a_ring_that_is_not_live_gives_nothing() {
        let mem = memory();
        put(&mem, 0, 0x4000, 0, 0);
        make_available(&mem, &[0]);
        let mut v = live_ring();
        v.set_enabled(false);
        assert!(v.pop_chain(&mem).is_none());
        v.set_enabled(true);
        v.stop();
        assert!(v.pop_chain(&mem).is_none());
    }

    /// A daemon takes three heads and completes one, then dies; the next one's ring
    /// starts from the used ring and takes the two still in flight again (the broken one
    /// with its error) before anything new.
    #[test]
    fn recovery_resubmits_what_was_in_flight_before_new_chains() {
        let mem = memory();
        put(&mem, 0, 0x4000, 0, 0);
        put(&mem, 1, 0x4000, 1, 99); // next beyond the table: a broken chain
        put(&mem, 2, 0x5000, 0, 0);
        put(&mem, 3, 0x6000, 0, 0);
        make_available(&mem, &[0, 1, 2]);
        let region = Arc::new(InflightRegion::create(1, QSIZE).unwrap());

        let mut first = live_ring();
        first.track_in(&region, 0);
        first.recover_once(0, &mem);
        assert_eq!(first.take_resumed(), 0, "a fresh region holds nothing");
        let taken: Vec<u16> = (0..3).map(|_| first.pop_chain(&mem).unwrap().0).collect();
        assert_eq!(taken, vec![0, 1, 2]);
        first.add_used(&mem, 2, 1).unwrap();
        drop(first);

        // The driver made one more available meanwhile.
        make_available(&mem, &[0, 1, 2, 3]);
        let mut second = live_ring();
        second.set_base(0);
        second.track_in(&region, 0);
        second.recover_once(0, &mem);
        assert_eq!(second.take_resumed(), 2, "two were in flight");
        assert_eq!(second.take_resumed(), 0, "told once");
        assert_eq!(second.queue().next_used(), 1);
        assert_eq!(second.queue().next_avail(), 3);
        let (head, chain) = second.pop_chain(&mem).unwrap();
        assert_eq!(
            (head, chain.unwrap()),
            (
                0,
                vec![Desc {
                    addr: 0x4000,
                    len: 512,
                    writable: false
                }]
            )
        );
        let (head, chain) = second.pop_chain(&mem).unwrap();
        assert_eq!(head, 1);
        assert!(matches!(chain, Err(ChainError::OutOfTable { .. })));
        assert_eq!(second.pop_chain(&mem).unwrap().0, 3);
        assert!(second.pop_chain(&mem).is_none());
        // Recovery happens once per connection.
        second.recover_once(0, &mem);
        assert!(second.pop_chain(&mem).is_none());
    }

    /// The call eventfd's count since the last look (0: the driver was not interrupted).
    fn calls(call: &File) -> u64 {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes from a nonblocking eventfd into a local buffer.
        let n = unsafe { libc::read(call.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n == 8 {
            u64::from_ne_bytes(buf)
        } else {
            0
        }
    }

    /// With EVENT_IDX the driver is asked to kick only once the device goes back to
    /// waiting (avail_event = where it stopped), and interrupted only when the used index
    /// passes the used_event it published.
    #[test]
    fn event_idx_asks_for_kicks_when_waiting_and_calls_only_past_used_event() {
        let mem = memory();
        let avail_event = GuestAddress(LAYOUT.2 + 4 + 8 * u64::from(QSIZE));
        let used_event = GuestAddress(LAYOUT.1 + 4 + 2 * u64::from(QSIZE));
        for i in 0..4 {
            put(&mem, i, 0x4000, 0, 0);
        }
        make_available(&mem, &[0, 1, 2]);
        let mut v = Vring::new(QSIZE, Arc::default());
        v.set_up_for_testing(QSIZE, LAYOUT, true).unwrap();
        // SAFETY: eventfd with integer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: fd was just created and nothing else owns it.
        let call = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        v.set_call(Some(call.try_clone().unwrap()));
        mem.write_obj(0xffffu16, avail_event).unwrap();

        // Taking chains: no new request for kicks is published.
        v.disable_notification(&mem).unwrap();
        for _ in 0..3 {
            v.pop_chain(&mem).unwrap().1.unwrap();
        }
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 0xffff);
        // Going back to waiting: kick me from the next one on.
        assert!(!v.enable_notification(&mem).unwrap());
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 3);
        // One arrived meanwhile: look again.
        make_available(&mem, &[0, 1, 2, 3]);
        assert!(v.enable_notification(&mem).unwrap());

        // The driver wants an interrupt when entry 2 (the third) is used.
        mem.write_obj(2u16, used_event).unwrap();
        v.add_used(&mem, 0, 1).unwrap();
        v.add_used(&mem, 1, 1).unwrap();
        v.notify(&mem).unwrap();
        assert_eq!(calls(&call), 0, "used index 2 has not passed used_event 2");
        v.add_used(&mem, 2, 1).unwrap();
        v.notify(&mem).unwrap();
        assert_eq!(calls(&call), 1);
        // Nothing more until the driver publishes a new used_event.
        v.add_used(&mem, 3, 1).unwrap();
        v.notify(&mem).unwrap();
        assert_eq!(calls(&call), 0);
    }

    #[test]
    fn without_tracking_recovery_takes_the_used_index_from_the_ring() {
        let mem = memory();
        mem.write_obj(7u16, GuestAddress(LAYOUT.2 + 2)).unwrap();
        let mut v = live_ring();
        v.set_base(3);
        v.recover_once(0, &mem);
        assert_eq!((v.queue().next_avail(), v.queue().next_used()), (3, 7));
    }
}
