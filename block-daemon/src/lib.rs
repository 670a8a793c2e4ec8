//! block-daemon: a vhost-user-blk backend, serving one block node per process under the
//! gateway, or one or more nodes (each on its own socket) on its own. It owns the image
//! (opened by the gateway, handed in as an fd), the I/O engine, request parsing, the
//! node's policies (discard, detect-zeroes, I/O limits, write threshold) and its
//! statistics; guest memory reaches it as the VM's memfd over vhost-user, and the guest's
//! kicks and completions travel as eventfds, never through vmm-core.

pub mod backend;
pub mod config;
pub mod control;
pub mod disk;
pub mod engine;
pub mod export;
pub mod request;
pub mod seccomp;
pub mod serve;
pub mod stats;
pub mod throttle;
pub mod vhost_user;
