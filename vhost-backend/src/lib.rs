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
//!   rings, config, inflight region, dirty log), per connection;
//! - `early_enable`: QEMU's SET_VRING_ENABLE before SET_FEATURES, accepted here, with no
//!   process or socket in between;
//! - `vring`, `rings`, `shared`: the rings (split rings on virtio-queue, kick and call
//!   eventfds, enable state, EVENT_IDX), every chain read through `virtio::pop_chain` /
//!   `virtio::read_chain`, and the guest memory;
//! - `inflight`: the INFLIGHT_SHMFD region for any device that tracks in flight, and
//!   recovery on the first look at a live ring after a reconnection
//!   (`Vring::recover_once`): what a previous daemon left in flight is taken again first;
//! - `postcopy`: postcopy migration at the destination (the protocol feature PAGEFAULT,
//!   offered): a userfaultfd of the backend's own, made through the /dev/userfaultfd fd
//!   the daemon puts in a `UserfaultDevice` (`serve_forever_with_userfault`), with every
//!   memory table the frontend sends while it listens registered on it, and the rings
//!   kept off guest memory from LISTEN until the frontend acknowledges that table;
//! - `dirty_log`: dirty-page logging for live migration (F_LOG_ALL and the protocol
//!   feature LOG_SHMFD, both offered). While the frontend has F_LOG_ALL acked and has
//!   given a log (SET_LOG_BASE: a memfd, mapped shared), every page the framework or a
//!   device writes in guest memory is marked in it (bit N: the 4 KiB page at guest
//!   address N * 4096, set with an atomic OR, as the frontend clears the log meanwhile).
//!   Those writes all go through `Vring`: the used ring in `add_used`,
//!   `enable_notification` and `disable_notification` (logged at log_guest_addr when the
//!   ring has VHOST_VRING_F_LOG, else at the ring's own guest address), and a chain's
//!   device-writable buffers, which `add_used` marks by walking the chain again before
//!   giving it back, so a device needs no code of its own for it. A log that cannot be
//!   mapped ends the connection with the reason; a write beyond a log too small for it
//!   is left unmarked, with a warning;
//! - `worker`, `watch`: one thread per connection on an epoll set of the kicks, the
//!   device's host-side descriptors (which it may stop and resume watching) and stop;
//!   the daemon's resident I/O thread (`start_resident_thread`), when it has one.
//!
//! It is built by composition on the vhost crate (`BackendReqHandler` driving our
//! `VhostUserBackendReqHandlerMut`), not on vhost-user-backend 0.24, which has no
//! inflight support, keeps its `owned` flag from one connection to the next, and cannot
//! take QEMU's early enable.

mod connection;
mod device;
mod dirty_log;
mod early_enable;
mod inflight;
mod postcopy;
mod rings;
mod serve;
mod shared;
mod shared_mapping;
mod vring;
mod watch;
mod worker;

pub use device::Device;
pub use postcopy::{PostcopyError, UserfaultDevice};
pub use rings::Rings;
pub use serve::{
    serve_forever, serve_forever_with_userfault, serve_frontends, serve_one, serve_stream,
    ServeError,
};
pub use vring::Vring;
pub use watch::HostWatch;
pub use worker::start_resident_thread;
