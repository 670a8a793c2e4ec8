//! What a block node is served with, shared by the block daemon's messages and its
//! jobs': image layers and their formats, the cache mode, and what a failed request
//! does.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CacheFlags {
    /// O_DIRECT: bypass the host page cache.
    pub direct: bool,
    /// Ignore the guest's flushes.
    pub no_flush: bool,
}

/// What happens to writes of all-zero data (QEMU's detect-zeroes).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DetectZeroes {
    #[default]
    Off,
    /// Written as write-zeroes.
    On,
    /// Written as write-zeroes that may deallocate (needs discard=unmap).
    Unmap,
}

impl DetectZeroes {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            DetectZeroes::Off => "off",
            DetectZeroes::On => "on",
            DetectZeroes::Unmap => "unmap",
        }
    }
}

/// An OS error as QEMU words it in its block errors and BLOCK_IO_ERROR's reason:
/// strerror's text, without Rust's " (os error N)". The daemon's answers and the
/// gateway's own errors both say it this way.
pub fn errno_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// What a node does when the image fails a request (QEMU's BlockdevOnError, the values
/// -drive's werror= and rerror= take).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnError {
    /// The guest gets the error.
    #[default]
    Report,
    /// The guest is told the request succeeded.
    Ignore,
    /// The request is held and the VM stopped, until `cont` retries it.
    Stop,
    /// Stop on ENOSPC, report anything else.
    Enospc,
}

impl OnError {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            OnError::Report => "report",
            OnError::Ignore => "ignore",
            OnError::Stop => "stop",
            OnError::Enospc => "enospc",
        }
    }

    /// What is done about a request that failed with `errno`.
    pub fn action(&self, errno: i32) -> ErrorAction {
        match self {
            OnError::Report => ErrorAction::Report,
            OnError::Ignore => ErrorAction::Ignore,
            OnError::Stop => ErrorAction::Stop,
            OnError::Enospc if errno == libc::ENOSPC => ErrorAction::Stop,
            OnError::Enospc => ErrorAction::Report,
        }
    }

    /// Whether this policy can stop the VM (then the disk has an I/O status).
    pub fn may_stop(&self) -> bool {
        matches!(self, OnError::Stop | OnError::Enospc)
    }
}

/// What was done about a failed request (QEMU's BlockErrorAction).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    Report,
    Ignore,
    Stop,
}

impl ErrorAction {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            ErrorAction::Report => "report",
            ErrorAction::Ignore => "ignore",
            ErrorAction::Stop => "stop",
        }
    }
}

/// Which way a failed request went (QEMU's IoOperationType): reads are read, everything
/// else (writes, flushes, discards, write-zeroes) is a write.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOperation {
    Read,
    Write,
}

impl IoOperation {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            IoOperation::Read => "read",
            IoOperation::Write => "write",
        }
    }
}

/// An image format block-daemon reads and writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Guest byte N is byte N of the file.
    Raw,
    Qcow2(Qcow2Options),
    /// No image (its drive was deleted, HMP drive_del, while its device stayed): every
    /// request fails, as QEMU's fail with no medium; the guest still sees `size` bytes.
    /// A chain's only layer, with no fd.
    NoMedium {
        size: u64,
    },
}

/// qcow2's run-time options (QEMU's names in the comments); `None`: the default.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Qcow2Options {
    /// l2-cache-size: bytes of L2 tables kept in memory.
    pub l2_cache_bytes: Option<u64>,
    /// refcount-cache-size: bytes of refcount blocks kept in memory.
    pub refcount_cache_bytes: Option<u64>,
    /// lazy-refcounts: overrides the image's header bit while it is open.
    pub lazy_refcounts: Option<bool>,
}

/// One image of a node's chain: the node's own image first, then its backing file, that
/// one's backing file, and so on. Each comes as an fd the gateway opened (backing files
/// read-only).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImageLayer {
    /// The format node this image belongs to (named in errors and events).
    pub node_name: String,
    pub format: ImageFormat,
    /// The path as the user or the image named it (for messages).
    pub filename: String,
}

impl ImageLayer {
    /// How many of `layers` come with an image fd (all but a missing medium).
    pub fn images(layers: &[ImageLayer]) -> usize {
        (layers.iter())
            .filter(|l| !matches!(l.format, ImageFormat::NoMedium { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_medium_comes_with_no_fd() {
        let layer = |format| ImageLayer {
            node_name: "n".into(),
            format,
            filename: String::new(),
        };
        assert_eq!(ImageLayer::images(&[]), 0);
        assert_eq!(
            ImageLayer::images(&[layer(ImageFormat::Raw), layer(ImageFormat::Raw)]),
            2
        );
        assert_eq!(
            ImageLayer::images(&[layer(ImageFormat::NoMedium { size: 512 })]),
            0
        );
    }

    #[test]
    fn os_errors_read_as_strerror() {
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(errno_text(&e), "No space left on device");
        let other = std::io::Error::other("plain text");
        assert_eq!(errno_text(&other), "plain text");
    }

    #[test]
    fn error_policies_act_as_qemus() {
        let enospc = libc::ENOSPC;
        let eio = libc::EIO;
        assert_eq!(OnError::Enospc.action(enospc), ErrorAction::Stop);
        assert_eq!(OnError::Enospc.action(eio), ErrorAction::Report);
        assert_eq!(OnError::Stop.action(eio), ErrorAction::Stop);
        assert_eq!(OnError::Report.action(enospc), ErrorAction::Report);
        assert_eq!(OnError::Ignore.action(enospc), ErrorAction::Ignore);
        assert!(OnError::Enospc.may_stop() && OnError::Stop.may_stop());
        assert!(!OnError::Report.may_stop() && !OnError::Ignore.may_stop());
        assert_eq!(OnError::default(), OnError::Report);
    }
}
