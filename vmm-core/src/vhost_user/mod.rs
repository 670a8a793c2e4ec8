//! vhost-user frontends: vmm-core's side of the devices that device daemons serve. The
//! daemon gets guest memory (the memfd), the queue layout and the kick/call eventfds;
//! from then on the data path is guest <-> daemon only.
//!
//! - `frontend`: the virtio device the transport sees, common to every device type;
//! - `link`: the connection to the backend, the driver's setup and its replay;
//! - `reconnect`: where the next connection comes from when the backend hangs up;
//! - `deadline`: a bound on a device's first connection;
//! - `backend_requests`: the backend's own messages (a configuration change);
//! - `model`: the trait a device type implements: `blk` (configuration space from the
//!   backend) and `net` (vmm-core's own: MAC, link status, queue pairs).

pub mod backend_requests;
pub mod blk;
pub mod deadline;
pub mod frontend;
pub mod link;
pub mod model;
pub mod net;
pub mod reconnect;
#[cfg(test)]
pub(crate) mod test_backend;

pub use backend_requests::ConfigChangeHandle;
pub use blk::Blk;
pub use frontend::VhostUserDevice;
pub use link::{Link, VhostUserError};
pub use model::DeviceModel;
pub use model::MAX_QUEUES;
pub use net::{LinkHandle, Net};
pub use reconnect::{Handover, Reconnect};
