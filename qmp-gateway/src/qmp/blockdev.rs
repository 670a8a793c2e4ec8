//! blockdev-add's arguments: QEMU's BlockdevOptions for the drivers Flotilla serves
//! (file, host_device, raw, qcow2), read from JSON into the block layer's node
//! description, with QEMU's messages for what is missing, mistyped or unexpected. Inline
//! children (`"file": {...}`, `"backing": {...}`) nest; a string names an existing node;
//! a qcow2 node's `"backing": null` means no backing file.

use ipc::DetectZeroes;
use serde_json::{Map, Value};

use super::args::Arguments;
use super::protocol::QmpError;
use super::qapi::{opt, Member, Ty};
use crate::block::options::{Backing, ChildRef, Driver, NodeOptions, Qcow2Settings, Source};
use crate::keyval;

/// blockdev-add's arguments: the node tree to add.
pub struct BlockdevAdd(pub NodeOptions);

impl Arguments for BlockdevAdd {
    /// QEMU 2.x's `options` wrapper, or (today's QEMU) the options themselves; `decode`
    /// checks them as QEMU's BlockdevOptions.
    const MEMBERS: &'static [Member] = &[
        opt("options", Ty::Any),
        opt("driver", Ty::Any),
        opt("node-name", Ty::Any),
        opt("discard", Ty::Any),
        opt("cache", Ty::Any),
        opt("read-only", Ty::Any),
        opt("auto-read-only", Ty::Any),
        opt("force-share", Ty::Any),
        opt("detect-zeroes", Ty::Any),
        opt("filename", Ty::Any),
        opt("aio", Ty::Any),
        opt("aio-max-batch", Ty::Any),
        opt("locking", Ty::Any),
        opt("drop-cache", Ty::Any),
        opt("x-check-cache-dropped", Ty::Any),
        opt("pr-manager", Ty::Any),
        opt("file", Ty::Any),
        opt("offset", Ty::Any),
        opt("size", Ty::Any),
        opt("backing", Ty::Any),
        opt("lazy-refcounts", Ty::Any),
        opt("pass-discard-request", Ty::Any),
        opt("pass-discard-snapshot", Ty::Any),
        opt("pass-discard-other", Ty::Any),
        opt("overlap-check", Ty::Any),
        opt("cache-size", Ty::Any),
        opt("l2-cache-size", Ty::Any),
        opt("l2-cache-entry-size", Ty::Any),
        opt("refcount-cache-size", Ty::Any),
        opt("cache-clean-interval", Ty::Any),
        opt("encrypt", Ty::Any),
        opt("data-file", Ty::Any),
    ];

    fn decode(args: Map<String, Value>) -> Result<Self, QmpError> {
        // QEMU 2.x wrapped the options in "options"; later QEMU takes them as they are.
        let obj = match args.get("options") {
            Some(Value::Object(o)) if args.len() == 1 => o,
            Some(_) if args.len() == 1 => {
                return Err(QmpError::generic(
                    "Invalid parameter type for 'options', expected: object",
                ))
            }
            _ => &args,
        };
        Ok(BlockdevAdd(parse(obj, "")?))
    }

    #[cfg(test)]
    fn serde_fields() -> Option<&'static [&'static str]> {
        None
    }
}

/// QEMU 7.2's block drivers that Flotilla does not serve (a clear error rather than
/// "does not accept value").
const OTHER_QEMU_DRIVERS: &[&str] = &[
    "blkdebug",
    "blklogwrites",
    "blkreplay",
    "blkverify",
    "bochs",
    "cloop",
    "compress",
    "copy-before-write",
    "copy-on-read",
    "dmg",
    "snapshot-access",
    "ftp",
    "ftps",
    "gluster",
    "host_cdrom",
    "http",
    "https",
    "io_uring",
    "iscsi",
    "luks",
    "nbd",
    "nfs",
    "null-aio",
    "null-co",
    "nvme",
    "nvme-io_uring",
    "parallels",
    "preallocate",
    "qcow",
    "qed",
    "quorum",
    "rbd",
    "replication",
    "ssh",
    "throttle",
    "vdi",
    "vhdx",
    "virtio-blk-vfio-pci",
    "virtio-blk-vhost-user",
    "virtio-blk-vhost-vdpa",
    "vmdk",
    "vpc",
    "vvfat",
];

const COMMON: &[&str] = &[
    "driver",
    "node-name",
    "discard",
    "cache",
    "read-only",
    "auto-read-only",
    "force-share",
    "detect-zeroes",
];
const FILE_KEYS: &[&str] = &[
    "filename",
    "aio",
    "aio-max-batch",
    "locking",
    "drop-cache",
    "x-check-cache-dropped",
    "pr-manager",
];
const RAW_KEYS: &[&str] = &["file", "offset", "size"];
/// QEMU 7.2's BlockdevOptionsQcow2 members Flotilla implements...
const QCOW2_KEYS: &[&str] = &[
    "file",
    "backing",
    "lazy-refcounts",
    "cache-size",
    "l2-cache-size",
    "refcount-cache-size",
];
/// ... and the ones it refuses (a clear error rather than a setting silently ignored).
const QCOW2_NOT_IMPLEMENTED: &[&str] = &[
    "pass-discard-request",
    "pass-discard-snapshot",
    "pass-discard-other",
    "overlap-check",
    "l2-cache-entry-size",
    "cache-clean-interval",
    "encrypt",
    "data-file",
];

struct Reader<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
    /// From the command line's key=value form: every value is a string, read as the
    /// member's type as QEMU's keyval visitor reads it.
    keyval: bool,
}

impl Reader<'_> {
    fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn wrong(&self, key: &str, expected: &str) -> QmpError {
        QmpError::generic(format!(
            "Invalid parameter type for '{}', expected: {expected}",
            self.path(key)
        ))
    }

    fn str(&self, key: &str) -> Result<Option<&str>, QmpError> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong(key, "string")),
        }
    }

    /// QEMU's keyval words: "Parameter 'x' expects <what>".
    fn expects(&self, key: &str, what: &str) -> QmpError {
        QmpError::generic(format!("Parameter '{}' expects {what}", self.path(key)))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, QmpError> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if self.keyval => keyval::boolean(s)
                .map(Some)
                .ok_or_else(|| self.expects(key, "'on' or 'off'")),
            Some(_) => Err(self.wrong(key, "boolean")),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>, QmpError> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if self.keyval => keyval::integer(s)
                .map(Some)
                .ok_or_else(|| self.expects(key, "integer")),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "integer")),
        }
    }

    /// QAPI's `size`: a non-negative integer below 2^64.
    fn size(&self, key: &str) -> Result<Option<u64>, QmpError> {
        const BELOW_2_64: &str = "a non-negative number below 2^64";
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if self.keyval => match keyval::unsigned(s) {
                Some(Ok(n)) => Ok(Some(n)),
                Some(Err(())) => Err(self.expects(key, BELOW_2_64)),
                None => Err(self.expects(key, "integer")),
            },
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(v), _) => Ok(Some(v)),
                (None, Some(_)) => Err(self.expects(key, BELOW_2_64)),
                _ => Err(self.wrong(key, "integer")),
            },
            Some(_) => Err(self.wrong(key, "integer")),
        }
    }

    /// A child reference: an existing node's name, or an inline definition.
    fn child(&self, key: &str, value: &Value) -> Result<ChildRef, QmpError> {
        match value {
            Value::String(name) => Ok(ChildRef::Node(name.clone())),
            Value::Object(child) => Ok(ChildRef::Inline(Box::new(read(
                child,
                &self.path(&format!("{key}.")),
                self.keyval,
            )?))),
            _ => Err(self.wrong(key, "BlockdevRef")),
        }
    }

    fn choice<'v>(&self, key: &str, values: &[&'v str]) -> Result<Option<&'v str>, QmpError> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => values
                .iter()
                .find(|v| **v == s)
                .map(|v| Some(*v))
                .ok_or_else(|| {
                    QmpError::generic(format!(
                        "Parameter '{}' does not accept value '{s}'",
                        self.path(key)
                    ))
                }),
        }
    }
}

/// Reads blockdev-add's arguments (or an inline child at `prefix`, e.g. "file.").
pub fn parse(obj: &Map<String, Value>, prefix: &str) -> Result<NodeOptions, QmpError> {
    read(obj, prefix, false)
}

/// A `--blockdev` option, as QEMU's -blockdev takes it: JSON (what libvirt writes) or
/// QEMU's key=value form, whose first part may be the driver alone.
pub fn parse_cli(option: &str) -> Result<NodeOptions, String> {
    if option.trim_start().starts_with('{') {
        let obj: Map<String, Value> = serde_json::from_str(option).map_err(|e| e.to_string())?;
        return parse(&obj, "").map_err(|e| e.desc);
    }
    let obj = keyval::parse(option, Some("driver")).map_err(|e| e.to_string())?;
    read(&obj, "", true).map_err(|e| e.desc)
}

fn read(obj: &Map<String, Value>, prefix: &str, keyval: bool) -> Result<NodeOptions, QmpError> {
    let r = Reader {
        obj,
        prefix: prefix.to_string(),
        keyval,
    };
    let driver_name = r
        .str("driver")?
        .ok_or_else(|| QmpError::generic(format!("Parameter '{}' is missing", r.path("driver"))))?;
    let driver = match driver_name {
        "file" => Driver::File,
        "host_device" => Driver::HostDevice,
        "raw" => Driver::Raw,
        "qcow2" => Driver::Qcow2,
        other if OTHER_QEMU_DRIVERS.contains(&other) => {
            return Err(QmpError::generic(format!(
                "Driver '{other}' is not supported: Flotilla serves the file, host_device, raw and qcow2 drivers"
            )))
        }
        other => {
            return Err(QmpError::generic(format!(
                "Parameter '{}' does not accept value '{other}'",
                r.path("driver")
            )))
        }
    };
    let (own, not_implemented): (&[&str], &[&str]) = match driver {
        Driver::File | Driver::HostDevice => (FILE_KEYS, &[]),
        Driver::Raw => (RAW_KEYS, &[]),
        Driver::Qcow2 => (QCOW2_KEYS, QCOW2_NOT_IMPLEMENTED),
    };
    if let Some(extra) = obj.keys().find(|k| {
        !COMMON.contains(&k.as_str())
            && !own.contains(&k.as_str())
            && !not_implemented.contains(&k.as_str())
    }) {
        return Err(QmpError::generic(format!(
            "Parameter '{}' is unexpected",
            r.path(extra)
        )));
    }
    if let Some(key) = obj.keys().find(|k| not_implemented.contains(&k.as_str())) {
        return Err(QmpError::generic(format!(
            "Parameter '{}' is not supported: Flotilla's qcow2 driver does not implement it",
            r.path(key)
        )));
    }
    let (mut direct, mut no_flush) = (None, None);
    match obj.get("cache") {
        None => {}
        Some(Value::Object(cache)) => {
            let c = Reader {
                obj: cache,
                prefix: r.path("cache."),
                keyval,
            };
            if let Some(extra) = cache.keys().find(|k| *k != "direct" && *k != "no-flush") {
                return Err(QmpError::generic(format!(
                    "Parameter '{}' is unexpected",
                    c.path(extra)
                )));
            }
            direct = c.bool("direct")?;
            no_flush = c.bool("no-flush")?;
        }
        Some(_) => return Err(r.wrong("cache", "object")),
    }
    let discard_unmap = r
        .choice("discard", &["ignore", "unmap"])?
        .map(|d| d == "unmap");
    let detect_zeroes = r
        .choice("detect-zeroes", &["off", "on", "unmap"])?
        .map(|d| match d {
            "on" => DetectZeroes::On,
            "unmap" => DetectZeroes::Unmap,
            _ => DetectZeroes::Off,
        });
    r.bool("auto-read-only")?;
    r.bool("force-share")?;
    let mut locking = None;
    let mut backing = Backing::FromImage;
    let mut qcow2 = Qcow2Settings::default();
    let source = if driver.is_protocol() {
        r.choice("aio", &["threads", "native", "io_uring"])?;
        locking = r
            .choice("locking", &["off", "on", "auto"])?
            .map(|l| l != "off");
        r.int("aio-max-batch")?;
        r.bool("drop-cache")?;
        r.bool("x-check-cache-dropped")?;
        r.str("pr-manager")?;
        let filename = r.str("filename")?.ok_or_else(|| {
            QmpError::generic(format!("Parameter '{}' is missing", r.path("filename")))
        })?;
        Source::Path(filename.to_string())
    } else if driver == Driver::Qcow2 {
        qcow2 = Qcow2Settings {
            lazy_refcounts: r.bool("lazy-refcounts")?,
            cache_size: r.size("cache-size")?,
            l2_cache_size: r.size("l2-cache-size")?,
            refcount_cache_size: r.size("refcount-cache-size")?,
        };
        backing = match obj.get("backing") {
            None => Backing::FromImage,
            Some(Value::Null) => Backing::None,
            // The command line has no null: QEMU still takes "" for it.
            Some(Value::String(s)) if keyval && s.is_empty() => Backing::None,
            Some(v @ (Value::String(_) | Value::Object(_))) => {
                Backing::Node(r.child("backing", v)?)
            }
            Some(_) => return Err(r.wrong("backing", "BlockdevRefOrNull")),
        };
        let file = obj.get("file").ok_or_else(|| {
            QmpError::generic(format!("Parameter '{}' is missing", r.path("file")))
        })?;
        Source::Child(r.child("file", file)?)
    } else {
        for key in ["offset", "size"] {
            if r.int(key)?.is_some() {
                return Err(QmpError::generic(format!(
                    "Parameter '{}' is not supported: Flotilla's raw driver serves whole images",
                    r.path(key)
                )));
            }
        }
        match obj.get("file") {
            None => {
                return Err(QmpError::generic(
                    "A block device must be specified for \"file\"",
                ))
            }
            Some(file) => Source::Child(r.child("file", file)?),
        }
    };
    Ok(NodeOptions {
        driver,
        node_name: r.str("node-name")?.map(str::to_string),
        read_only: r.bool("read-only")?,
        direct,
        no_flush,
        discard_unmap,
        detect_zeroes,
        locking,
        source,
        backing,
        qcow2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_json(v: Value) -> Result<NodeOptions, String> {
        parse(v.as_object().unwrap(), "").map_err(|e| e.desc)
    }

    /// -blockdev as QEMU 7.2 reads it (its words checked with qemu-system-x86_64).
    #[test]
    fn command_line_forms() {
        let keyval = parse_cli(
            "qcow2,node-name=q,file.driver=file,file.filename=/i,,x,read-only=on,\
             cache-size=0x10000,lazy-refcounts=off,backing=,cache.direct=yes",
        )
        .unwrap();
        let json = parse_cli(
            r#"{"driver":"qcow2","node-name":"q","read-only":true,"cache-size":65536,
                "lazy-refcounts":false,"backing":null,"cache":{"direct":true},
                "file":{"driver":"file","filename":"/i,x"}}"#,
        )
        .unwrap();
        assert_eq!(keyval, json);
        assert!(matches!(keyval.backing, Backing::None));
        let e = |s: &str| parse_cli(s).unwrap_err();
        let file = "file,node-name=f,filename=/i";
        assert_eq!(
            e(&format!("{file},read-only=maybe")),
            "Parameter 'read-only' expects 'on' or 'off'"
        );
        assert_eq!(
            e(&format!("{file},aio-max-batch=1x")),
            "Parameter 'aio-max-batch' expects integer"
        );
        let qcow2 = "qcow2,node-name=q,file=f";
        assert_eq!(
            e(&format!("{qcow2},cache-size=-1")),
            "Parameter 'cache-size' expects a non-negative number below 2^64"
        );
        assert_eq!(
            e(&format!("{qcow2},cache-size=1M")),
            "Parameter 'cache-size' expects integer"
        );
        assert_eq!(
            e("raw,file.driver=file,file.filename=/i,file.locking=perhaps"),
            "Parameter 'file.locking' does not accept value 'perhaps'"
        );
        assert_eq!(
            e("file=x,file.driver=file"),
            "Parameters 'file.*' used inconsistently"
        );
        assert_eq!(
            e("file,filename"),
            "Expected '=' after parameter 'filename'"
        );
        assert!(e(r#"{"driver":"#).contains("EOF"), "{}", e(r#"{"driver":"#));
    }

    #[test]
    fn raw_over_an_inline_file() {
        let o = parse_json(json!({
            "driver": "raw", "node-name": "r2", "read-only": true,
            "cache": {"direct": true, "no-flush": false}, "discard": "unmap",
            "detect-zeroes": "unmap",
            "file": {"driver": "file", "filename": "/tmp/x.raw", "aio": "io_uring"}
        }))
        .unwrap();
        assert_eq!(o.driver, Driver::Raw);
        assert_eq!(o.node_name.as_deref(), Some("r2"));
        assert_eq!(
            (o.read_only, o.direct, o.no_flush),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(o.detect_zeroes, Some(DetectZeroes::Unmap));
        let Source::Child(ChildRef::Inline(child)) = o.source else {
            panic!("inline child expected");
        };
        assert_eq!(child.source, Source::Path("/tmp/x.raw".into()));
        assert_eq!(child.read_only, None);
    }

    #[test]
    fn qcow2_options_as_qemu_72_reads_them() {
        let o = parse_json(json!({
            "driver": "qcow2", "node-name": "q", "l2-cache-size": 1048576,
            "cache-size": 2097152, "lazy-refcounts": true,
            "file": {"driver": "file", "filename": "/t.qcow2", "locking": "off"},
            "backing": {"driver": "raw", "file": "f"}
        }))
        .unwrap();
        assert_eq!(o.driver, Driver::Qcow2);
        assert_eq!(o.qcow2.l2_cache_size, Some(1 << 20));
        assert_eq!(o.qcow2.cache_size, Some(2 << 20));
        assert_eq!(o.qcow2.lazy_refcounts, Some(true));
        let Backing::Node(ChildRef::Inline(b)) = o.backing else {
            panic!("inline backing expected");
        };
        assert_eq!(b.source, Source::Child(ChildRef::Node("f".into())));
        let Source::Child(ChildRef::Inline(file)) = o.source else {
            panic!("inline file expected");
        };
        assert_eq!(file.locking, Some(false));
        let o = parse_json(json!({"driver": "qcow2", "file": "f", "backing": null})).unwrap();
        assert_eq!(o.backing, Backing::None);
        let o = parse_json(json!({"driver": "qcow2", "file": "f", "backing": "b"})).unwrap();
        assert_eq!(o.backing, Backing::Node(ChildRef::Node("b".into())));
        // QEMU 7.2's texts for the same arguments (seen live).
        for (args, text) in [
            (
                json!({"driver": "qcow2", "node-name": "c"}),
                "Parameter 'file' is missing",
            ),
            (
                json!({"driver": "qcow2", "file": "f", "bogus": 1}),
                "Parameter 'bogus' is unexpected",
            ),
            (
                json!({"driver": "qcow2", "file": "f", "l2-cache-size": "x"}),
                "Invalid parameter type for 'l2-cache-size', expected: integer",
            ),
            (
                json!({"driver": "qcow2", "file": "f", "l2-cache-size": -1}),
                "Parameter 'l2-cache-size' expects a non-negative number below 2^64",
            ),
            (
                json!({"driver": "qcow2", "file": "f", "lazy-refcounts": 1}),
                "Invalid parameter type for 'lazy-refcounts', expected: boolean",
            ),
            (
                json!({"driver": "qcow2", "file": "f", "backing": 5}),
                "Invalid parameter type for 'backing', expected: BlockdevRefOrNull",
            ),
            (
                json!({"driver": "raw", "file": "f", "backing": null}),
                "Parameter 'backing' is unexpected",
            ),
        ] {
            assert_eq!(parse_json(args).unwrap_err(), text);
        }
        assert!(
            parse_json(json!({"driver": "qcow2", "file": "f", "data-file": "d"}))
                .unwrap_err()
                .starts_with("Parameter 'data-file' is not supported")
        );
    }

    #[test]
    fn qemu_messages() {
        assert_eq!(
            parse_json(json!({"driver": "bogus"})).unwrap_err(),
            "Parameter 'driver' does not accept value 'bogus'"
        );
        assert!(parse_json(json!({"driver": "vmdk", "file": "f"}))
            .unwrap_err()
            .starts_with("Driver 'vmdk' is not supported"));
        assert_eq!(
            parse_json(json!({"node-name": "x"})).unwrap_err(),
            "Parameter 'driver' is missing"
        );
        assert_eq!(
            parse_json(json!({"driver": "file"})).unwrap_err(),
            "Parameter 'filename' is missing"
        );
        assert_eq!(
            parse_json(
                json!({"driver": "raw", "file": {"driver": "file", "filename": "a", "bad": 1}})
            )
            .unwrap_err(),
            "Parameter 'file.bad' is unexpected"
        );
        assert_eq!(
            parse_json(json!({"driver": "file", "filename": 3})).unwrap_err(),
            "Invalid parameter type for 'filename', expected: string"
        );
        assert_eq!(
            parse_json(json!({"driver": "file", "filename": "a", "discard": "maybe"})).unwrap_err(),
            "Parameter 'discard' does not accept value 'maybe'"
        );
        assert_eq!(
            parse_json(json!({"driver": "raw"})).unwrap_err(),
            "A block device must be specified for \"file\""
        );
        assert_eq!(
            parse_json(json!({"driver": "file", "filename": "a", "cache": {"writeback": true}}))
                .unwrap_err(),
            "Parameter 'cache.writeback' is unexpected"
        );
    }
}
