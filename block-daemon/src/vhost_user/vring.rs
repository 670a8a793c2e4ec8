//! One virtqueue as the frontend set it up: the split ring (virtio-queue), its kick and
//! call eventfds, its state (started by SET_VRING_KICK, enabled by SET_VRING_ENABLE), and
//! its inflight tracking.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::inflight::{InflightQueue, InflightRegion};

pub struct Vring {
    pub queue: Queue,
    pub kick: Option<File>,
    pub call: Option<File>,
    pub enabled: bool,
    /// Inflight tracking for this queue (with the counter for the next head).
    pub inflight: Option<(InflightQueue, u64)>,
    /// Keeps the region `inflight` points into mapped.
    pub inflight_region: Option<std::sync::Arc<InflightRegion>>,
    /// Recovery from the inflight region has run on this connection.
    pub recovered: bool,
    /// Heads to start again after a reconnection, oldest first.
    pub resubmit: Vec<u16>,
}

impl Vring {
    pub fn new(max_size: u16) -> Vring {
        Vring {
            // max_size is a power of two within the virtio limit (the daemon's QUEUE_SIZE).
            queue: Queue::new(max_size).unwrap_or_else(|_| {
                Queue::new(256).unwrap_or_else(|_| unreachable!("256 is a valid queue size"))
            }),
            kick: None,
            call: None,
            enabled: false,
            inflight: None,
            inflight_region: None,
            recovered: false,
            resubmit: Vec::new(),
        }
    }

    /// Started (has a kick fd) and enabled: requests may be taken from it.
    pub fn live(&self) -> bool {
        self.kick.is_some() && self.enabled && self.queue.ready()
    }

    pub fn kick_fd(&self) -> Option<RawFd> {
        self.kick.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Consumes the kick eventfd's count (it may be nonblocking or not yet signalled).
    pub fn drain_kick(&self) {
        if let Some(k) = &self.kick {
            let mut buf = [0u8; 8];
            // SAFETY: reading 8 bytes from an eventfd into a local buffer; the fd is set
            // nonblocking when the kick fd arrives.
            unsafe { libc::read(k.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        }
    }

    /// Takes a head from the available ring, marking it in flight.
    pub fn mark_started(&mut self, head: u16) {
        if let Some((q, counter)) = self.inflight.as_mut() {
            q.start(head, *counter);
            *counter += 1;
        }
    }

    /// Puts a finished head on the used ring (inflight bookkeeping around it).
    pub fn add_used(&mut self, mem: &GuestMemoryMmap, head: u16, len: u32) -> std::io::Result<()> {
        if let Some((q, _)) = &self.inflight {
            q.begin_complete(head);
        }
        self.queue
            .add_used(mem, head, len)
            .map_err(std::io::Error::other)?;
        if let Some((q, _)) = &self.inflight {
            q.end_complete(head, self.queue.next_used());
        }
        Ok(())
    }

    /// Interrupts the guest if the ring says it wants one.
    pub fn notify(&mut self, mem: &GuestMemoryMmap) -> std::io::Result<()> {
        if self
            .queue
            .needs_notification(mem)
            .map_err(std::io::Error::other)?
        {
            if let Some(mut call) = self.call.as_ref() {
                call.write_all(&1u64.to_ne_bytes())?;
            }
        }
        Ok(())
    }

    /// Back to how a new connection finds it.
    pub fn reset(&mut self) {
        let max = self.queue.max_size();
        *self = Vring::new(max);
    }
}
