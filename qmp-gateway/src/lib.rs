//! qmp-gateway: Flotilla's front door and supervisor. It opens every path the VM needs,
//! launches vmm-core and the block daemons and passes them the fds, speaks QMP to any
//! number of clients on Unix and TCP sockets, routes each command to the process that
//! serves it, fans events out, holds the fds clients pass in, and stops everything in
//! order when the VM ends.

pub mod block;
pub mod children;
pub mod events;
pub mod fdstore;
pub mod gateway;
pub mod launch;
pub mod net;
pub mod qmp;
pub mod sockets;
