//! `--drive file=PATH,format=raw|qcow2,id=ID[,...]`: an image the guest sees as a
//! virtio-blk disk, in QEMU's -drive syntax (the subset that applies). The format must
//! be named: unlike QEMU, Flotilla never probes a disk's format (a guest could make its
//! raw disk look like a qcow2 header naming any host file as its backing file).

use std::str::FromStr;

use ipc::{DetectZeroes, OnError};

use super::options::{Driver, Qcow2Settings};

#[derive(Clone, Debug, PartialEq, Eq)]
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

impl FromStr for DriveSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<DriveSpec, String> {
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
        };
        let mut format = None;
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected key=value"))?;
            match key {
                "file" => d.file = value.to_string(),
                "format" => format = Some(value.to_string()),
                "id" => d.id = Some(value.to_string()),
                "node-name" => d.node_name = Some(value.to_string()),
                "if" if value == "virtio" => {}
                "if" => return Err(format!("if={value}: only virtio disks exist here")),
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
                _ => return Err(format!("unknown drive option '{key}'")),
            }
        }
        if d.file.is_empty() {
            return Err("file=PATH is required".into());
        }
        d.format = match format.as_deref() {
            Some("raw") => Driver::Raw,
            Some("qcow2") => Driver::Qcow2,
            Some(f) => return Err(format!("format={f}: raw and qcow2 images are served")),
            None => {
                return Err(
                    "format=raw or format=qcow2 is required (image formats are never guessed)"
                        .into(),
                )
            }
        };
        if d.format == Driver::Raw && d.qcow2 != Qcow2Settings::default() {
            return Err(
                "l2-cache-size, refcount-cache-size, cache-size and lazy-refcounts \
                 are qcow2 options"
                    .into(),
            );
        }
        if d.detect_zeroes == DetectZeroes::Unmap && !d.discard_unmap {
            return Err(
                "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"
                    .into(),
            );
        }
        Ok(d)
    }
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
