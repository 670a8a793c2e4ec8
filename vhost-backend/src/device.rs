//! The one trait a device implements to be served over vhost-user: what it offers, what it
//! does when a ring is kicked or one of its own host-side descriptors becomes ready, and
//! how it stops. The framework calls it through a generic (one copy of the worker per
//! device type), never through a trait object per request.
//!
//! Threads: the worker of the current connection calls `queue_kicked` and `host_ready`;
//! the connection's request handler calls the rest. A device is a cheap handle (it is
//! cloned into each connection's worker), shared state behind it.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vm_memory::GuestMemoryMmap;

use crate::rings::Rings;
use crate::vring::Vring;
use crate::watch::HostWatch;

pub trait Device: Clone + Send + Sync + 'static {
    /// How many rings it has (what GET_QUEUE_NUM answers).
    fn num_queues(&self) -> usize;

    /// The largest ring a frontend may set up (a power of two).
    fn max_queue_size(&self) -> u16;

    /// The virtio features it offers (the framework adds VHOST_USER_F_PROTOCOL_FEATURES
    /// and VHOST_F_LOG_ALL).
    fn features(&self) -> u64;

    /// The protocol features it needs (the framework adds REPLY_ACK, LOG_SHMFD, and
    /// INFLIGHT_SHMFD when `tracks_inflight`).
    fn protocol_features(&self) -> VhostUserProtocolFeatures;

    /// Requests it has taken but not completed are tracked in the inflight region, so
    /// the next daemon can start them again (a device whose requests must not be lost:
    /// block).
    fn tracks_inflight(&self) -> bool {
        false
    }

    /// `size` bytes of its configuration space from `offset` (GET_CONFIG; zero beyond what
    /// exists).
    fn read_config(&self, offset: u32, size: u32) -> Vec<u8>;

    /// Its own host-side descriptors for the worker to watch (readable: `host_ready`).
    /// The position in this list names the source in `host_ready` and `HostWatch`.
    fn host_fds(&self) -> Vec<RawFd>;

    /// The driver's features, accepted (SET_FEATURES; a subset of what was offered, with
    /// the framework's VHOST_F_LOG_ALL among them while the frontend logs dirty pages).
    /// A frontend starting or ending a migration sends them again with only F_LOG_ALL
    /// changed, rings running: that is no new driver.
    fn features_acked(&self, _features: u64) {}

    /// Ring `q` was kicked (or just went live): serve it.
    fn queue_kicked(
        &self,
        q: usize,
        ring: &mut Vring,
        mem: &Arc<GuestMemoryMmap>,
        watch: &HostWatch,
    ) -> io::Result<()>;

    /// Host-side source `source` is readable. `mem` is None until the frontend has set
    /// up guest memory.
    fn host_ready(
        &self,
        source: usize,
        rings: &Rings,
        mem: Option<&Arc<GuestMemoryMmap>>,
        watch: &HostWatch,
    ) -> io::Result<()>;

    /// The frontend stops ring `q` (GET_VRING_BASE): whatever the device took from it
    /// finishes onto it now, so the index the frontend gets back has nothing outstanding
    /// behind it.
    fn stop_queue(
        &self,
        _q: usize,
        _ring: &mut Vring,
        _mem: &Arc<GuestMemoryMmap>,
    ) -> io::Result<()> {
        Ok(())
    }

    /// On a reconnection, the inflight region listed `requests` requests of ring `q` that a
    /// previous daemon took and did not complete; they are taken again before new ones
    /// (a device that tracks in flight may report it).
    fn resumed_in_flight(&self, _q: usize, _requests: usize) {}

    /// The frontend hung up: work in flight finishes without touching its rings (they
    /// belong to a connection nobody serves; the inflight region still lists it for the
    /// next one).
    fn disconnected(&self) {}

    /// RESET_DEVICE: back to the state of a device nobody has used.
    fn reset(&self) {}
}
