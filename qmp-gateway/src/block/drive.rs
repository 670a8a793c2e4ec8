//! `--drive file=PATH,format=raw|qcow2,id=ID[,...]`: an image the guest sees as a
//! virtio-blk disk, in QEMU's -drive syntax (the subset that applies). The format must
//! be named: unlike QEMU, Flotilla never probes a disk's format (a guest could make its
//! raw disk look like a qcow2 header naming any host file as its backing file).
//!
//! A qcow2 drive's backing file may be given as QEMU's -drive gives it, with dotted
//! `backing` options (its BlockdevOptions, flattened): `backing=` for none,
//! `backing=NODE` for a node, or `backing.driver=raw|qcow2`, `backing.file.filename=PATH`
//! and the rest of that node's options (`backing.node-name`, `backing.read-only`, the
//! qcow2 cache options, `backing.file.driver=file|host_device`, `backing.file.locking`,
//! `backing.backing...` further down), with QEMU 7.2's errors. Unlike QEMU, the driver
//! and the filename must be given (QEMU probes the format, or takes the file the
//! header names).

use std::str::FromStr;

use ipc::{DetectZeroes, OnError};

use super::options::{Backing, ChildRef, Driver, NodeOptions, Qcow2Settings, Source};
use crate::devices::spec::launch_slot;

#[derive(Clone, Debug, PartialEq)]
pub struct DriveSpec {
    pub file: String,
    /// raw or qcow2.
    pub format: Driver,
    /// qcow2's cache options (l2-cache-size, refcount-cache-size, cache-size,
    /// lazy-refcounts), as on blockdev-add.
    pub qcow2: Qcow2Settings,
    /// The disk's name in QMP (query-block's "device"); default virtioN.
    pub id: Option<String>,
    /// The raw node's name; default an automatic "#block..." name.
    pub node_name: Option<String>,
    pub read_only: bool,
    pub direct: bool,
    pub no_flush: bool,
    pub discard_unmap: bool,
    pub detect_zeroes: DetectZeroes,
    /// What the guest reads with GET_ID; default the id.
    pub serial: Option<String>,
    pub queues: u32,
    /// Windows for timed statistics, in seconds.
    pub stats_intervals: Vec<u32>,
    /// rerror=: what a failed read does (QEMU's default: report).
    pub on_read_error: OnError,
    /// werror=: what any other failed request does (QEMU's default: enospc).
    pub on_write_error: OnError,
    /// file.locking=: hold QEMU's locks on the image (default on; auto is on).
    pub locking: bool,
    /// A qcow2 drive's `backing` options (default: the backing file its header names).
    pub backing: Backing,
    /// addr=: its slot on PCI bus 0 (default: the lowest free one, in launch order).
    pub slot: Option<u8>,
}

/// QEMU's parse_block_error_action: a read cannot stop on ENOSPC alone.
fn on_error(v: &str, read: bool) -> Result<OnError, String> {
    match v {
        "ignore" => Ok(OnError::Ignore),
        "enospc" if !read => Ok(OnError::Enospc),
        "stop" => Ok(OnError::Stop),
        "report" => Ok(OnError::Report),
        _ => Err(format!(
            "'{v}' invalid {} error action",
            if read { "read" } else { "write" }
        )),
    }
}

/// A size as QEMU's -drive takes it: bytes, or a number with a k, M, G or T suffix.
fn size(key: &str, v: &str) -> Result<u64, String> {
    let (digits, shift) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'B' => 0,
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{key}={v}: a size (bytes, or k, M, G, T)")),
            };
            (&v[..i], shift)
        }
        _ => (v, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{key}={v}: a size (bytes, or k, M, G, T)"))
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("{key}={v}: expected on or off")),
    }
}

/// QEMU's -drive text read once, by the one reader of its options: the drive, and what
/// each user then requires of it (--drive: a virtio disk with an image and a format, by
/// `DriveSpec`'s FromStr; HMP drive_add: an if=none drive, with or without a medium).
pub struct DriveText {
    /// The drive; `file` is empty without file=, `format` is raw without format=.
    pub spec: DriveSpec,
    /// format= as given.
    pub format: Option<Driver>,
    /// if= as given.
    pub interface: Option<String>,
    /// Keys no option takes, in order.
    pub unknown: Vec<String>,
    /// Options given beyond those QEMU keeps for a drive without a medium (its id,
    /// interface, read-only, cache, discard, error actions, serial): a node's.
    pub node_options: bool,
}

impl DriveText {
    /// Reads `s`; the checks that need the format are made when it is given.
    pub fn read(s: &str) -> Result<DriveText, String> {
        let mut d = DriveSpec {
            file: String::new(),
            format: Driver::Raw,
            qcow2: Qcow2Settings::default(),
            id: None,
            node_name: None,
            read_only: false,
            direct: false,
            no_flush: false,
            discard_unmap: false,
            detect_zeroes: DetectZeroes::Off,
            serial: None,
            queues: 1,
            stats_intervals: Vec::new(),
            on_read_error: OnError::Report,
            on_write_error: OnError::Enospc,
            locking: true,
            backing: Backing::FromImage,
            slot: None,
        };
        let mut format = None;
        let mut interface = None;
        let mut unknown = Vec::new();
        let mut node_options = false;
        let mut backing_ref = None;
        let mut backing_keys = Vec::new();
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected key=value"))?;
            if let Some(rest) = key.strip_prefix("backing.") {
                backing_keys.push((rest, value));
                node_options = true;
                continue;
            }
            node_options |= !matches!(
                key,
                "file"
                    | "format"
                    | "id"
                    | "if"
                    | "addr"
                    | "readonly"
                    | "read-only"
                    | "cache"
                    | "cache.direct"
                    | "cache.no-flush"
                    | "discard"
                    | "detect-zeroes"
                    | "serial"
                    | "werror"
                    | "rerror"
            );
            match key {
                "backing" => backing_ref = Some(value),
                "file" => d.file = value.to_string(),
                "format" => format = Some(value.to_string()),
                "id" => d.id = Some(value.to_string()),
                "addr" => d.slot = Some(launch_slot(value)?),
                "node-name" => d.node_name = Some(value.to_string()),
                "if" => interface = Some(value.to_string()),
                "readonly" | "read-only" => d.read_only = on_off(key, value)?,
                "cache" => {
                    (d.direct, d.no_flush) = match value {
                        "writeback" => (false, false),
                        "none" => (true, false),
                        "unsafe" => (false, true),
                        "writethrough" | "directsync" => {
                            return Err(format!(
                                "cache={value}: not supported (the guest always sees a \
                                 write-back cache and its flushes are honoured); use \
                                 writeback, none or unsafe"
                            ))
                        }
                        _ => return Err(format!("cache={value}: unknown cache mode")),
                    }
                }
                "cache.direct" => d.direct = on_off(key, value)?,
                "cache.no-flush" => d.no_flush = on_off(key, value)?,
                "discard" => {
                    d.discard_unmap = match value {
                        "unmap" | "on" => true,
                        "ignore" | "off" => false,
                        _ => return Err(format!("discard={value}: expected ignore or unmap")),
                    }
                }
                "detect-zeroes" => {
                    d.detect_zeroes = match value {
                        "off" => DetectZeroes::Off,
                        "on" => DetectZeroes::On,
                        "unmap" => DetectZeroes::Unmap,
                        _ => {
                            return Err(format!("detect-zeroes={value}: expected off, on or unmap"))
                        }
                    }
                }
                "serial" => d.serial = Some(value.to_string()),
                "l2-cache-size" => d.qcow2.l2_cache_size = Some(size(key, value)?),
                "refcount-cache-size" => d.qcow2.refcount_cache_size = Some(size(key, value)?),
                "cache-size" => d.qcow2.cache_size = Some(size(key, value)?),
                "lazy-refcounts" => d.qcow2.lazy_refcounts = Some(on_off(key, value)?),
                "werror" => d.on_write_error = on_error(value, false)?,
                "rerror" => d.on_read_error = on_error(value, true)?,
                "file.locking" | "locking" => {
                    d.locking = match value {
                        "on" | "auto" => true,
                        "off" => false,
                        _ => {
                            return Err(format!(
                                "Parameter 'locking' does not accept value '{value}'"
                            ))
                        }
                    }
                }
                "queues" | "num-queues" => {
                    d.queues = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=16).contains(n))
                        .ok_or_else(|| format!("{key}={value}: 1 to 16"))?
                }
                k if k.starts_with("stats-intervals.") => d.stats_intervals.push(
                    value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("{key}={value}: a number of seconds"))?,
                ),
                _ => unknown.push(key.to_string()),
            }
        }
        let format = match format.as_deref() {
            Some("raw") => Some(Driver::Raw),
            Some("qcow2") => Some(Driver::Qcow2),
            Some(f) => return Err(format!("format={f}: raw and qcow2 images are served")),
            None => None,
        };
        d.format = format.unwrap_or(Driver::Raw);
        d.backing = backing_child(backing_ref, &backing_keys)?;
        if format.is_some() {
            d.check_format_options()?;
        }
        if d.detect_zeroes == DetectZeroes::Unmap && !d.discard_unmap {
            return Err(
                "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"
                    .into(),
            );
        }
        Ok(DriveText {
            spec: d,
            format,
            interface,
            unknown,
            node_options,
        })
    }
}

impl FromStr for DriveSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<DriveSpec, String> {
        let text = DriveText::read(s)?;
        if let Some(key) = text.unknown.first() {
            return Err(format!("unknown drive option '{key}'"));
        }
        if let Some(i) = text.interface.filter(|i| i != "virtio") {
            return Err(format!("if={i}: only virtio disks exist here"));
        }
        if text.spec.file.is_empty() {
            return Err("file=PATH is required".into());
        }
        if text.format.is_none() {
            return Err(
                "format=raw or format=qcow2 is required (image formats are never guessed)".into(),
            );
        }
        Ok(text.spec)
    }
}

impl DriveSpec {
    /// What the drive's format must agree with: a raw drive has no backing file and no
    /// qcow2 options.
    fn check_format_options(&self) -> Result<(), String> {
        let d = self;
        if d.format == Driver::Raw && !matches!(d.backing, Backing::FromImage | Backing::None) {
            return Err("Driver doesn't support backing files".into());
        }
        if d.format == Driver::Raw && d.qcow2 != Qcow2Settings::default() {
            return Err(
                "l2-cache-size, refcount-cache-size, cache-size and lazy-refcounts \
                 are qcow2 options"
                    .into(),
            );
        }
        Ok(())
    }

    /// The node tree the drive's image is opened as: its format node over a file node.
    pub fn node_options(&self) -> NodeOptions {
        let file = NodeOptions {
            locking: Some(self.locking),
            ..NodeOptions::file(self.file.clone())
        };
        NodeOptions {
            node_name: self.node_name.clone(),
            read_only: Some(self.read_only),
            direct: Some(self.direct),
            no_flush: Some(self.no_flush),
            discard_unmap: Some(self.discard_unmap),
            detect_zeroes: Some(self.detect_zeroes),
            qcow2: self.qcow2,
            backing: self.backing.clone(),
            ..NodeOptions::over(self.format, file)
        }
    }
}

/// QEMU's words for an option that is not on or off.
fn qemu_on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// QEMU's words for an option that is not a size.
fn qemu_size(key: &str, v: &str) -> Result<u64, String> {
    size(key, v).map_err(|_| format!("Parameter '{key}' expects a non-negative number below 2^64"))
}

/// A node's `backing` from its `backing=` value and its `backing.*` options (the
/// prefix taken off), as QEMU's -drive reads them.
fn backing_child(reference: Option<&str>, keys: &[(&str, &str)]) -> Result<Backing, String> {
    let backing_error = |e: String| format!("Could not open backing file: {e}");
    match (reference, keys.is_empty()) {
        (None, true) => Ok(Backing::FromImage),
        (Some(""), true) => Ok(Backing::None),
        (Some(node), true) => Ok(Backing::Node(ChildRef::Node(node.to_string()))),
        (Some(_), false) => Err(backing_error(
            "Cannot reference an existing block device with additional options or a new filename"
                .into(),
        )),
        (None, false) => Ok(Backing::Node(ChildRef::Inline(Box::new(
            backing_node(keys).map_err(backing_error)?,
        )))),
    }
}

/// A backing node described by its dotted options.
fn backing_node(keys: &[(&str, &str)]) -> Result<NodeOptions, String> {
    let last = |key: &str| keys.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let driver = match last("driver") {
        Some("raw") => Driver::Raw,
        Some("qcow2") => Driver::Qcow2,
        Some(other) => {
            return Err(format!(
                "backing.driver={other}: raw and qcow2 backing files are served"
            ))
        }
        None => {
            return Err(
                "backing.driver=raw or backing.driver=qcow2 is required with backing options \
                 (image formats are never guessed)"
                    .into(),
            )
        }
    };
    let mut node = NodeOptions::over(driver, NodeOptions::file(String::new()));
    let mut file = NodeOptions::file(String::new());
    let mut filename = None;
    let (mut backing_ref, mut backing_keys) = (None, Vec::new());
    for &(key, value) in keys {
        if let Some(rest) = key.strip_prefix("backing.") {
            backing_keys.push((rest, value));
            continue;
        }
        if let Some(rest) = key.strip_prefix("file.") {
            match rest {
                "filename" => filename = Some(value),
                "driver" => {
                    file.driver = match value {
                        "file" => Driver::File,
                        "host_device" => Driver::HostDevice,
                        other => {
                            return Err(format!(
                                "backing.file.driver={other}: file and host_device are served"
                            ))
                        }
                    }
                }
                "locking" => {
                    file.locking = match value {
                        "on" | "auto" => Some(true),
                        "off" => Some(false),
                        _ => {
                            return Err(format!(
                                "Parameter 'locking' does not accept value '{value}'"
                            ))
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "Block protocol '{}' doesn't support the option '{rest}'",
                        file.driver.name()
                    ))
                }
            }
            continue;
        }
        let qcow2 = driver == Driver::Qcow2;
        match key {
            "driver" => {}
            "backing" if qcow2 => backing_ref = Some(value),
            "node-name" => node.node_name = Some(value.to_string()),
            "read-only" => node.read_only = Some(qemu_on_off(key, value)?),
            "l2-cache-size" if qcow2 => node.qcow2.l2_cache_size = Some(qemu_size(key, value)?),
            "refcount-cache-size" if qcow2 => {
                node.qcow2.refcount_cache_size = Some(qemu_size(key, value)?)
            }
            "cache-size" if qcow2 => node.qcow2.cache_size = Some(qemu_size(key, value)?),
            "lazy-refcounts" if qcow2 => node.qcow2.lazy_refcounts = Some(qemu_on_off(key, value)?),
            _ => {
                return Err(format!(
                    "Block format '{}' does not support the option '{key}'",
                    driver.name()
                ))
            }
        }
    }
    if driver == Driver::Raw && !backing_keys.is_empty() {
        return Err("Driver doesn't support backing files".into());
    }
    let Some(filename) = filename else {
        return Err(
            "backing.file.filename is required with backing options (Flotilla does not take \
             the header's backing file with other options)"
                .into(),
        );
    };
    file.source = Source::Path(filename.to_string());
    node.source = Source::Child(ChildRef::Inline(Box::new(file)));
    if driver == Driver::Qcow2 {
        node.backing = backing_child(backing_ref, &backing_keys)?;
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_drive() {
        let d: DriveSpec = "file=/x.raw,format=raw,id=d0,readonly=on,cache=none,discard=unmap,detect-zeroes=unmap,serial=abc,queues=4,stats-intervals.0=1,stats-intervals.1=60"
            .parse()
            .unwrap();
        assert_eq!(d.file, "/x.raw");
        assert_eq!(d.id.as_deref(), Some("d0"));
        assert!(d.read_only && d.direct && !d.no_flush && d.discard_unmap);
        assert_eq!(d.detect_zeroes, DetectZeroes::Unmap);
        assert_eq!(d.queues, 4);
        assert_eq!(d.stats_intervals, vec![1, 60]);
        assert_eq!(
            (d.on_read_error, d.on_write_error, d.locking),
            (OnError::Report, OnError::Enospc, true),
            "QEMU's defaults"
        );
        let d: DriveSpec = "file=/x,format=raw,werror=stop,rerror=ignore,file.locking=off"
            .parse()
            .unwrap();
        assert_eq!(
            (d.on_read_error, d.on_write_error, d.locking),
            (OnError::Ignore, OnError::Stop, false)
        );
        let d: DriveSpec =
            "file=/x.qcow2,format=qcow2,l2-cache-size=4M,refcount-cache-size=65536,lazy-refcounts=on"
                .parse()
                .unwrap();
        assert_eq!(d.format, Driver::Qcow2);
        assert_eq!(
            d.qcow2,
            Qcow2Settings {
                cache_size: None,
                l2_cache_size: Some(4 << 20),
                refcount_cache_size: Some(65536),
                lazy_refcounts: Some(true),
            }
        );
    }

    #[test]
    fn backing_options() {
        let d: DriveSpec = "file=/t,format=qcow2,backing.driver=qcow2,backing.file.filename=/b,\
             backing.node-name=bk,backing.l2-cache-size=1M,backing.backing="
            .parse()
            .unwrap();
        let Backing::Node(ChildRef::Inline(node)) = &d.backing else {
            panic!("{:?}", d.backing)
        };
        assert_eq!(node.driver, Driver::Qcow2);
        assert_eq!(node.node_name.as_deref(), Some("bk"));
        assert_eq!(node.qcow2.l2_cache_size, Some(1 << 20));
        assert_eq!(node.backing, Backing::None);
        let Source::Child(ChildRef::Inline(file)) = &node.source else {
            panic!("{:?}", node.source)
        };
        assert_eq!(file.source, Source::Path("/b".into()));
        let d: DriveSpec = "file=/t,format=qcow2,backing=".parse().unwrap();
        assert_eq!(d.backing, Backing::None);
        let d: DriveSpec = "file=/t,format=qcow2,backing=n1".parse().unwrap();
        assert_eq!(d.backing, Backing::Node(ChildRef::Node("n1".into())));
        let err = |s: &str| s.parse::<DriveSpec>().unwrap_err();
        assert_eq!(
            err("file=/t,format=qcow2,backing.driver=qcow2,backing.file.filename=/b,backing.foo=1"),
            "Could not open backing file: Block format 'qcow2' does not support the option 'foo'"
        );
        assert_eq!(
            err("file=/t,format=raw,backing.driver=qcow2,backing.file.filename=/b"),
            "Driver doesn't support backing files"
        );
        assert!(err("file=/t,format=qcow2,backing.file.filename=/b").contains("never guessed"));
    }

    #[test]
    fn bad_drives() {
        for bad in [
            "format=raw",
            "file=/x",
            "file=/x,format=vmdk",
            "file=/x,format=raw,l2-cache-size=1M",
            "file=/x,format=qcow2,cache-size=1Q",
            "file=/x,format=raw,cache=writethrough",
            "file=/x,format=raw,queues=0",
            "file=/x,format=raw,bogus=1",
            "file=/x,format=raw,detect-zeroes=unmap",
            "file=/x,format=raw,readonly",
            "file=/x,format=raw,if=ide",
            "file=/x,format=raw,file.locking=maybe",
        ] {
            assert!(bad.parse::<DriveSpec>().is_err(), "{bad}");
        }
        let err = |s: &str| s.parse::<DriveSpec>().unwrap_err();
        assert_eq!(
            err("file=/x,format=raw,werror=bogus"),
            "'bogus' invalid write error action"
        );
        assert_eq!(
            err("file=/x,format=raw,rerror=enospc"),
            "'enospc' invalid read error action"
        );
    }
}
