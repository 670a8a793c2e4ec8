//! vhost-user frontends: vmm-core's side of the devices that device daemons serve. The
//! daemon gets guest memory (the memfd), the queue layout and the kick/call eventfds;
//! from then on the data path is guest <-> daemon only. `frontend` holds everything the
//! device types share (the connection, its replay after a backend restart); the types
//! differ in `frontend::Kind`.

pub mod frontend;

pub use frontend::{
    ConfigChangeHandle, Kind, LinkHandle, Reconnect, VhostUserDevice, VhostUserError, MAX_QUEUES,
};
