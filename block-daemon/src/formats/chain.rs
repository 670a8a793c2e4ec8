//! A node's chain of images, opened from the layers the open call names (top first)
//! and their fds (in the same order): bottom up, each image gets the one below as its
//! backing file. Only the top may be written (unless the node is read-only); every
//! image gets the node's cache mode (O_DIRECT for all of them, as QEMU's backing files
//! inherit cache.direct).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use ipc::{BlockCounters, ImageFormat, ImageLayer};

use super::direct::set_direct;
use super::no_medium::NoMedium;
use super::qcow2::Qcow2;
use super::raw::Raw;
use super::{Format, FormatError};

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("the node has no image")]
    Empty,
    #[error("a node without a medium has no other images")]
    NoMediumInChain,
    #[error("the chain names {layers} image(s) but {fds} image fd(s) came with it")]
    Mismatch { layers: usize, fds: usize },
    #[error("'{filename}' is open read-only but the node is writable")]
    ReadOnlyFd { filename: String },
    #[error("'{filename}': a raw image has no backing file")]
    RawWithBacking { filename: String },
    #[error("'{filename}': {error}")]
    Io {
        filename: String,
        error: std::io::Error,
    },
    /// The format refused the image: its own words (QEMU's, where QEMU has them),
    /// after QEMU's "Could not open backing file: " once per level below the top.
    #[error("{}{error}", BACKING.repeat(*depth))]
    Format {
        filename: String,
        depth: usize,
        error: FormatError,
    },
}

/// How QEMU introduces an error of an image's backing file.
pub const BACKING: &str = "Could not open backing file: ";

/// What the chain is opened for.
#[derive(Clone)]
pub struct ChainOptions {
    /// The top image may be written.
    pub writable: bool,
    /// Every image bypasses the host page cache (O_DIRECT).
    pub direct: bool,
    /// Where the discards that reach the top image's file are counted.
    pub counters: Option<Arc<BlockCounters>>,
    /// discard=unmap: the clusters a qcow2 top image frees are punched out of its file
    /// (with discard=ignore the file keeps its blocks, as QEMU's).
    pub discard_unmap: bool,
    /// A writable qcow2 top keeps its persistent bitmaps valid: the daemon loads them,
    /// marks into them and stores them back (otherwise its header says they are stale).
    pub keep_bitmaps: bool,
}

/// Whether `file` was opened for writing.
fn opened_for_writing(file: &File) -> std::io::Result<bool> {
    // SAFETY: fcntl on an fd `file` owns, integer arguments.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags & libc::O_ACCMODE != libc::O_RDONLY)
}

/// An opened chain.
pub struct Chain {
    /// The top image, which reads through its backing files.
    pub top: Arc<dyn Format>,
    /// The fd whose fdatasync is the whole of a flush, when the chain is one raw image.
    pub flush_fd: Option<RawFd>,
}

/// Opens the chain `layers` (top first) over `files` (one per layer, same order).
pub fn open(
    layers: &[ImageLayer],
    files: Vec<File>,
    options: &ChainOptions,
) -> Result<Chain, ChainError> {
    if layers.is_empty() {
        return Err(ChainError::Empty);
    }
    if let ([only], []) = (layers, files.as_slice()) {
        if let ImageFormat::NoMedium { size } = only.format {
            let top: Arc<dyn Format> = Arc::new(NoMedium::new(size));
            return Ok(Chain {
                top,
                flush_fd: None,
            });
        }
    }
    if layers.len() != files.len() {
        return Err(ChainError::Mismatch {
            layers: layers.len(),
            fds: files.len(),
        });
    }
    let flush_fd = match (&layers[0].format, files.as_slice()) {
        (ImageFormat::Raw, [only]) => Some(only.as_raw_fd()),
        _ => None,
    };
    let mut backing: Option<Arc<dyn Format>> = None;
    for (depth, (layer, file)) in layers.iter().zip(files).enumerate().rev() {
        let top = depth == 0;
        let writable = top && options.writable;
        let io = |error| ChainError::Io {
            filename: layer.filename.clone(),
            error,
        };
        if writable && !opened_for_writing(&file).map_err(io)? {
            return Err(ChainError::ReadOnlyFd {
                filename: layer.filename.clone(),
            });
        }
        set_direct(&file, options.direct).map_err(io)?;
        let format = open_layer(layer, file, backing.take(), writable, depth, options)?;
        backing = Some(format);
    }
    let top = backing.ok_or(ChainError::Empty)?;
    Ok(Chain { top, flush_fd })
}

/// Opens one image alone over `backing`, an image of a chain opened already (a
/// commit's base, written beside the chain that reads it).
pub fn open_over(
    layer: &ImageLayer,
    file: File,
    backing: Option<Arc<dyn Format>>,
    options: &ChainOptions,
) -> Result<Arc<dyn Format>, ChainError> {
    let io = |error| ChainError::Io {
        filename: layer.filename.clone(),
        error,
    };
    if options.writable && !opened_for_writing(&file).map_err(io)? {
        return Err(ChainError::ReadOnlyFd {
            filename: layer.filename.clone(),
        });
    }
    set_direct(&file, options.direct).map_err(io)?;
    open_layer(layer, file, backing, options.writable, 0, options)
}

/// Opens one image over its backing file (opened already).
fn open_layer(
    layer: &ImageLayer,
    file: File,
    backing: Option<Arc<dyn Format>>,
    writable: bool,
    depth: usize,
    options: &ChainOptions,
) -> Result<Arc<dyn Format>, ChainError> {
    let top = depth == 0;
    let format_error = |error| ChainError::Format {
        filename: layer.filename.clone(),
        depth,
        error,
    };
    match &layer.format {
        ImageFormat::Raw => {
            if backing.is_some() {
                return Err(ChainError::RawWithBacking {
                    filename: layer.filename.clone(),
                });
            }
            let raw = Raw::open(file, writable).map_err(format_error)?;
            Ok(match (&options.counters, top) {
                (Some(c), true) => Arc::new(raw.count_discards(c.clone())),
                _ => Arc::new(raw),
            })
        }
        // Only a chain of its own (`open`).
        ImageFormat::NoMedium { .. } => Err(ChainError::NoMediumInChain),
        ImageFormat::Qcow2(opts) => {
            let qcow2 = if top && options.keep_bitmaps {
                Qcow2::open_keeping_bitmaps(file, backing, opts, writable)
            } else {
                Qcow2::open(file, backing, opts, writable)
            }
            .map_err(format_error)?;
            Ok(
                match (&options.counters, top && writable && options.discard_unmap) {
                    (Some(c), true) => Arc::new(qcow2.pass_discards(c.clone())),
                    _ => Arc::new(qcow2),
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Scratch;

    fn layer(name: &str, format: ImageFormat) -> ImageLayer {
        ImageLayer {
            node_name: name.into(),
            format,
            filename: format!("{name}.img"),
        }
    }

    fn options(writable: bool) -> ChainOptions {
        ChainOptions {
            writable,
            direct: false,
            counters: None,
            discard_unmap: true,
            keep_bitmaps: false,
        }
    }

    fn error(result: Result<Chain, ChainError>) -> ChainError {
        match result {
            Ok(_) => panic!("the chain opened"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_chain_that_does_not_match_its_fds_is_refused() {
        let s = Scratch::new("chain-mismatch", 1 << 16);
        let path = &s.path;
        let raw = || layer("top", ImageFormat::Raw);
        let file = || File::open(path).unwrap();
        let e = error(open(&[raw(), raw()], vec![file()], &options(false)));
        assert_eq!(
            e.to_string(),
            "the chain names 2 image(s) but 1 image fd(s) came with it"
        );
        let e = error(open(&[raw()], vec![file(), file()], &options(false)));
        assert!(matches!(e, ChainError::Mismatch { layers: 1, fds: 2 }));
        assert!(matches!(
            error(open(&[], vec![], &options(false))),
            ChainError::Empty
        ));
        // A writable node on an fd opened read-only.
        let e = error(open(&[raw()], vec![file()], &options(true)));
        assert_eq!(
            e.to_string(),
            "'top.img' is open read-only but the node is writable"
        );
        // Raw has no backing file.
        let e = error(open(&[raw(), raw()], vec![file(), file()], &options(false)));
        assert_eq!(e.to_string(), "'top.img': a raw image has no backing file");
    }

    #[test]
    fn no_medium_is_a_chain_of_its_own_without_fds() {
        let s = Scratch::new("chain-no-medium", 1 << 16);
        let none = || layer("gone", ImageFormat::NoMedium { size: 1 << 20 });
        let chain = match open(&[none()], vec![], &options(true)) {
            Ok(chain) => chain,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(chain.top.virtual_size(), 1 << 20);
        assert!(chain.flush_fd.is_none());
        let e = chain.top.read(0, &mut [0; 512]).unwrap_err();
        assert_eq!(e.errno(), libc::ENOMEDIUM);
        // With an image fd, or under an image, it is refused.
        let file = || File::open(&s.path).unwrap();
        let e = error(open(&[none()], vec![file()], &options(false)));
        assert!(matches!(e, ChainError::NoMediumInChain), "{e}");
        let raw = layer("top", ImageFormat::Raw);
        let e = error(open(&[raw, none()], vec![file(), file()], &options(false)));
        assert!(matches!(e, ChainError::NoMediumInChain), "{e}");
    }

    #[test]
    fn one_raw_image_flushes_by_its_fd_and_counts_its_discards() {
        let s = Scratch::new("chain-raw", 1 << 16);
        let path = &s.path;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let fd = file.as_raw_fd();
        let counters = Arc::new(BlockCounters::create().unwrap());
        let chain = open(
            &[layer("top", ImageFormat::Raw)],
            vec![file],
            &ChainOptions {
                counters: Some(counters.clone()),
                ..options(true)
            },
        )
        .unwrap();
        assert_eq!(chain.flush_fd, Some(fd));
        assert_eq!(
            (chain.top.name(), chain.top.virtual_size()),
            ("raw", 1 << 16)
        );
        chain.top.discard(0, 4096).unwrap();
        let ok = counters
            .page()
            .discard_ok
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ok, 1);
    }
}
