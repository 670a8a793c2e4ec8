//! A block node as blockdev-add or `--drive` describe it (QEMU's BlockdevOptions, the
//! drivers Flotilla serves): its driver, settings, its image or `file` child (an inline
//! one, or an existing node), a qcow2 node's `backing` and cache options, and QEMU's
//! rule for node names.

use ipc::DetectZeroes;

use super::error::BlockError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    File,
    HostDevice,
    Raw,
    Qcow2,
}

impl Driver {
    pub fn name(&self) -> &'static str {
        match self {
            Driver::File => "file",
            Driver::HostDevice => "host_device",
            Driver::Raw => "raw",
            Driver::Qcow2 => "qcow2",
        }
    }

    /// Protocol drivers open an image; format drivers sit on a child.
    pub fn is_protocol(&self) -> bool {
        !matches!(self, Driver::Raw | Driver::Qcow2)
    }

    /// The format driver of a backing file by QEMU's name (from an image's header, or
    /// probed), if Flotilla serves it.
    pub fn format(name: &str) -> Option<Driver> {
        match name {
            "raw" => Some(Driver::Raw),
            "qcow2" => Some(Driver::Qcow2),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ChildRef {
    /// An existing node.
    Node(String),
    /// A node described inline, created with its parent.
    Inline(Box<NodeOptions>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A protocol node's filename (may be /dev/fdset/N).
    Path(String),
    /// A format node's `file` child.
    Child(ChildRef),
}

/// A qcow2 node's `backing` option.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Backing {
    /// Not given: the backing file the image's header names, if any.
    #[default]
    FromImage,
    /// null: no backing file, even if the image names one.
    None,
    /// A node (existing or inline) instead of what the header names.
    Node(ChildRef),
}

/// qcow2's cache and refcount options as given (QEMU's names); `None`: not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Qcow2Settings {
    pub cache_size: Option<u64>,
    pub l2_cache_size: Option<u64>,
    pub refcount_cache_size: Option<u64>,
    pub lazy_refcounts: Option<bool>,
}

/// One node as blockdev-add describes it. `None`: not given (inherited by an inline
/// child from its parent, else the default).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeOptions {
    pub driver: Driver,
    pub node_name: Option<String>,
    pub read_only: Option<bool>,
    pub direct: Option<bool>,
    pub no_flush: Option<bool>,
    /// discard=unmap.
    pub discard_unmap: Option<bool>,
    pub detect_zeroes: Option<DetectZeroes>,
    /// A protocol node's `locking` (on and auto: true).
    pub locking: Option<bool>,
    pub source: Source,
    /// A qcow2 node's backing file.
    pub backing: Backing,
    pub qcow2: Qcow2Settings,
}

impl NodeOptions {
    /// A file node on `path`, every setting inherited or the default.
    pub fn file(path: String) -> NodeOptions {
        NodeOptions {
            driver: Driver::File,
            node_name: None,
            read_only: None,
            direct: None,
            no_flush: None,
            discard_unmap: None,
            detect_zeroes: None,
            locking: None,
            source: Source::Path(path),
            backing: Backing::FromImage,
            qcow2: Qcow2Settings::default(),
        }
    }

    /// A `driver` format node over the inline child `file`, every setting inherited or
    /// the default (a qcow2 node's backing file: the one its image names).
    pub fn over(driver: Driver, file: NodeOptions) -> NodeOptions {
        NodeOptions {
            driver,
            source: Source::Child(ChildRef::Inline(Box::new(file))),
            ..NodeOptions::file(String::new())
        }
    }
}

/// QEMU's rule for node names: a letter, then letters, digits, '-', '.' or '_'.
pub fn check_node_name(name: &str) -> Result<(), BlockError> {
    let mut chars = name.chars();
    let wellformed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !wellformed {
        return Err(BlockError::InvalidNodeName(name.to_string()));
    }
    if name.len() > 31 {
        return Err(BlockError::NodeNameTooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(check_node_name("disk-0.a_b").is_ok());
        assert_eq!(
            check_node_name("1bad").unwrap_err().to_string(),
            "Invalid node-name: '1bad'"
        );
        assert!(check_node_name("#block1").is_err());
        assert!(check_node_name("").is_err());
        assert_eq!(
            check_node_name(&"a".repeat(32)).unwrap_err().to_string(),
            "Node name too long"
        );
    }
}
