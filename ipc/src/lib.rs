//! ipc: how Flotilla's processes talk to each other. Typed messages (plain serde structs
//! and enums, encoded with bincode 2 under a size limit) travel in length-prefixed frames
//! on Unix stream sockets, each frame carrying the file descriptors its message declares
//! (SCM_RIGHTS). Every message type is defined here, once.
//!
//! Nothing a peer sends is trusted: frame length, fd count and message contents are all
//! checked against limits, received fds are owned (closed on drop), and a frame whose fds
//! do not match what its message declares is rejected with its fds closed.
//!
//! Beside the messages: a disk's I/O counters and dirty bitmaps in shared memory
//! (`block_counters`, `dirty_bitmap`), a block migration's byte protocol between the
//! migration agent and a block daemon (`disk_channel`), guest RAM's dirty-page log
//! (`page_log`), a child's end of its control link (`child`), what every process does
//! as it starts (`process`: its log, its terminating signals, its
//! inherited fds), trace points and their log (`trace`), and what two processes both name or open on the host (`host`: the VM
//! options, the serial spec, MAC addresses, a NIC's tap or datagram socket), so that no
//! process links another one's crate for them.

pub mod block_counters;
pub mod child;
pub mod connection;
pub mod dirty_bitmap;
pub mod disk_channel;
pub mod error;
pub mod fds;
pub mod frame;
pub mod host;
pub mod input;
pub mod machine;
pub mod messages;
pub mod page_log;
pub mod process;
pub mod registers;
pub mod shm;
pub mod trace;
pub mod userfault;

pub use block_counters::{BlockCounters, CountersPage};
pub use connection::{Connection, Received};
pub use dirty_bitmap::SharedBitmap;
pub use error::IpcError;
pub use messages::*;
pub use page_log::PageLog;
