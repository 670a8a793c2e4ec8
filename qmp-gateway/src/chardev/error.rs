//! Why a chardev command fails, and the bounds those errors name (apart from the
//! registry, so that the backends' own files can name them without importing it).

use super::ringbuf::Base64Error;

/// Most chardevs at once (each has a thread and a few fds).
pub const MAX_CHARDEVS: usize = 64;
/// Most bytes all ring buffers together may hold.
pub const MAX_RING_BYTES: usize = 64 << 20;

/// Why a chardev command failed; the texts are QEMU 7.2's where it has them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChardevError {
    #[error("Chardev with id '{0}' already exists")]
    Duplicate(String),
    #[error("Chardev '{0}' not found")]
    NotFound(String),
    #[error("Chardev '{0}' is busy")]
    Busy(String),
    #[error("Device '{0}' not found")]
    DeviceNotFound(String),
    #[error("{0} is not a ringbuf device")]
    NotRingbuf(String),
    #[error("size must be greater than zero")]
    ReadSize,
    #[error("size of ringbuf chardev must be power of two")]
    RingbufSize,
    #[error("{0} is not supported by Flotilla's chardevs")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot use stdio by multiple character devices")]
    StdioTaken,
    #[error("Failed to add chardev '{id}': {why}")]
    Open { id: String, why: String },
    #[error("Failed to add chardev '{0}': the gateway holds at most {MAX_CHARDEVS} chardevs")]
    TooMany(String),
    #[error(
        "Failed to add chardev '{id}': ring buffers may hold {MAX_RING_BYTES} bytes in all, \
         {taken} are taken"
    )]
    RingBytes { id: String, taken: usize },
    /// add_client to a chardev that cannot take the connection (QEMU's words).
    #[error("failed to add client")]
    AddClient,
    #[error(transparent)]
    Base64(#[from] Base64Error),
}
