//! ipc: how Flotilla's processes talk to each other. Typed messages (plain serde structs
//! and enums, encoded with bincode 2 under a size limit) travel in length-prefixed frames
//! on Unix stream sockets, each frame carrying the file descriptors its message declares
//! (SCM_RIGHTS). Every message type is defined here, once.
//!
//! Nothing a peer sends is trusted: frame length, fd count and message contents are all
//! checked against limits, received fds are owned (closed on drop), and a frame whose fds
//! do not match what its message declares is rejected with its fds closed.

pub mod connection;
pub mod fds;
pub mod frame;
pub mod messages;

pub use connection::{Connection, Received};
pub use messages::*;

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("peer closed the connection")]
    Closed,
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("frame of {0} bytes exceeds the {max} byte limit", max = frame::MAX_FRAME)]
    FrameTooLarge(u64),
    #[error("frame carries {got} file descriptors, its message allows {expected}")]
    FdMismatch { got: usize, expected: usize },
    #[error("more than {max} file descriptors in one frame", max = frame::MAX_FDS)]
    TooManyFds,
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("unencodable message: {0}")]
    Encode(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}
