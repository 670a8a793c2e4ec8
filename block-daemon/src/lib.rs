//! block-daemon: a vhost-user-blk backend serving one block node per socket. It owns the
//! image (opened by the gateway, handed in as an fd), the I/O engine, request parsing and
//! the node's statistics; guest memory reaches it as the VM's memfd over vhost-user, and
//! the guest's kicks and completions travel as eventfds, never through vmm-core.

pub mod backend;
pub mod config;
pub mod disk;
pub mod engine;
pub mod request;
pub mod stats;
