//! What can go wrong on a link between two processes.

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("peer closed the connection")]
    Closed,
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    FrameTooLarge { len: u64, max: usize },
    #[error("frame carries {got} file descriptors, its message allows {expected}")]
    FdMismatch { got: usize, expected: usize },
    #[error("more than {max} file descriptors in one frame")]
    TooManyFds { max: usize },
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("unencodable message: {0}")]
    Encode(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}
