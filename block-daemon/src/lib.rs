//! block-daemon: a vhost-user-blk backend, serving one block node per process under the
//! gateway, or one or more nodes (each on its own socket) on its own. It owns the
//! virtio-blk device (served over vhost-user by the vhost-backend framework), the image
//! (opened by the gateway, handed in as an fd), the I/O engines, request parsing, the
//! node's policies (discard, detect-zeroes, I/O limits, write threshold), its
//! statistics, the dirty bitmaps its writes mark, the block jobs it runs (`jobs`) and a
//! block migration's end (`migration`); guest memory reaches it as the VM's memfd over
//! vhost-user, and the guest's kicks and completions travel as eventfds, never through
//! vmm-core.

pub mod config;
pub mod control;
pub mod device;
pub mod dirty;
pub mod disk;
pub mod engine;
pub mod export;
pub mod formats;
pub mod jobs;
pub mod log_limit;
pub mod migration;
pub mod paths;
pub mod request;
pub mod seccomp;
pub mod snapshots;
pub mod stats;
#[cfg(test)]
pub mod testing;
pub mod throttle;
pub mod writeback;
