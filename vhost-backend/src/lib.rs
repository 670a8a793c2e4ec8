//! vhost-backend: the one vhost-user backend framework every Flotilla device daemon
//! (block-daemon, net-daemon, and any later one) is served by. A device implements one
//! trait, `Device`: what it offers (queues, features, protocol features, config space,
//! whether it tracks in-flight requests) and what it does (serve a kicked ring, react to
//! one of its own host-side descriptors, stop a ring, let go of a dead connection). The
//! framework owns everything else:
//!
//! - `serve`: frontends one after another on a listener, each connection with fresh
//!   state and its own worker (`serve_frontends`, `serve_forever`), or one connection
//!   (`serve_one`, `serve_stream`: the daemons' `--once`);
//! - `connection`: the vhost-user messages (features, protocol features, memory table,
//!   rings, config, inflight region), per connection;
//! - `early_enable`: QEMU's SET_VRING_ENABLE before SET_FEATURES, accepted here, with no
//!   process or socket in between;
//! - `vring`, `rings`, `shared`: the rings (split rings on virtio-queue, kick and call
//!   eventfds, enable state, EVENT_IDX), every chain read through `virtio::pop_chain` /
//!   `virtio::read_chain`, and the guest memory;
//! - `inflight`: the INFLIGHT_SHMFD region for any device that tracks in flight, and
//!   recovery on the first look at a live ring after a reconnection
//!   (`Vring::recover_once`): what a previous daemon left in flight is taken again first;
//! - `worker`, `watch`: one thread per connection on an epoll set of the kicks, the
//!   device's host-side descriptors (which it may stop and resume watching) and stop.
//!
//! It is built by composition on the vhost crate (`BackendReqHandler` driving our
//! `VhostUserBackendReqHandlerMut`), not on vhost-user-backend 0.24, which has no
//! inflight support, keeps its `owned` flag from one connection to the next, and cannot
//! take QEMU's early enable.
//!
//! Dirty logging (migration) is not offered yet: F_LOG_ALL is not among the features and
//! SET_LOG_BASE is refused with a clear error. When it comes, the framework's writes to
//! guest memory on a device's behalf are all in one place: the used ring, written only by
//! `Vring::add_used`, `Vring::enable_notification` and `Vring::disable_notification`
//! (vring.rs); that is where pages will be marked in the log.

mod connection;
mod device;
mod early_enable;
mod inflight;
mod rings;
mod serve;
mod shared;
mod vring;
mod watch;
mod worker;

pub use device::Device;
pub use rings::Rings;
pub use serve::{serve_forever, serve_frontends, serve_one, serve_stream, ServeError};
pub use vring::Vring;
pub use watch::HostWatch;
