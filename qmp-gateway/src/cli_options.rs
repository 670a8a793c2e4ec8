//! The command line's key=value options as query-command-line-options describes them:
//! one table, under QEMU's option names, of the keys our parsers take (the unit tests
//! feed each parser every key listed here and a key that is not, so the two cannot part).
//!
//! As QEMU 7.2: an option whose values are free-form objects (device, netdev, object)
//! lists no parameters, and `id` is no parameter (QemuOpts keeps it apart). --blockdev is
//! not listed at all: QEMU's -blockdev is no QemuOpts option (its keys are
//! BlockdevOptions', which query-qmp-schema describes), so QEMU answers "invalid option
//! name: blockdev", and so do we. Keys taken as
//! a family (`stats-intervals.N`, `backing.*` on --drive) are not listed either, as QEMU
//! lists none of its own families.

use serde_json::{json, Value};

/// QEMU's CommandLineParameterType.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    String,
    Boolean,
    Number,
    Size,
}

impl ParamType {
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Boolean => "boolean",
            ParamType::Number => "number",
            ParamType::Size => "size",
        }
    }
}

/// One key of an option.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub name: &'static str,
    pub ty: ParamType,
}

/// One command-line option: QEMU's name for it and the keys we take.
#[derive(Clone, Copy, Debug)]
pub struct CliOption {
    pub name: &'static str,
    pub params: &'static [Param],
}

const fn p(name: &'static str, ty: ParamType) -> Param {
    Param { name, ty }
}

use ParamType::{Boolean as B, Number as N, Size as Z, String as S};

/// --drive (block/drive.rs's DriveSpec).
const DRIVE: &[Param] = &[
    p("file", S),
    p("format", S),
    p("addr", S),
    p("node-name", S),
    p("if", S),
    p("readonly", B),
    p("read-only", B),
    p("cache", S),
    p("cache.direct", B),
    p("cache.no-flush", B),
    p("discard", S),
    p("detect-zeroes", S),
    p("serial", S),
    p("l2-cache-size", Z),
    p("refcount-cache-size", Z),
    p("cache-size", Z),
    p("lazy-refcounts", B),
    p("werror", S),
    p("rerror", S),
    p("file.locking", S),
    p("locking", S),
    p("queues", N),
    p("num-queues", N),
    p("backing", S),
];

/// --memory (ipc's MemoryConfig), QEMU's -m; in QEMU's order (so the answers are equal).
const MEMORY: &[Param] = &[p("maxmem", Z), p("slots", N), p("size", Z)];

/// --chardev (chardev/spec.rs), every backend's keys together as QEMU lists them.
const CHARDEV: &[Param] = &[
    p("path", S),
    p("input-path", S),
    p("append", B),
    p("size", Z),
    p("host", S),
    p("port", S),
    p("server", B),
    p("wait", B),
    p("nodelay", B),
    p("telnet", B),
    p("reconnect", N),
    p("localaddr", S),
    p("localport", S),
    p("fd", S),
];

/// --mon (monitor/spec.rs), in QEMU's order.
const MON: &[Param] = &[p("pretty", B), p("chardev", S), p("mode", S)];

/// --trace (trace.rs), in QEMU's order.
const TRACE: &[Param] = &[p("file", S), p("events", S), p("enable", S)];

/// Every key=value option of the gateway's command line.
pub const OPTIONS: &[CliOption] = &[
    CliOption {
        name: "drive",
        params: DRIVE,
    },
    CliOption {
        name: "memory",
        params: MEMORY,
    },
    CliOption {
        name: "chardev",
        params: CHARDEV,
    },
    CliOption {
        name: "trace",
        params: TRACE,
    },
    CliOption {
        name: "mon",
        params: MON,
    },
    CliOption {
        name: "netdev",
        params: &[],
    },
    CliOption {
        name: "device",
        params: &[],
    },
    CliOption {
        name: "object",
        params: &[],
    },
];

/// An option name query-command-line-options does not know.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid option name: {0}")]
pub struct UnknownOption(pub String);

/// QEMU's CommandLineOptionInfo list: every option, or only `option`.
pub fn describe(option: Option<&str>) -> Result<Value, UnknownOption> {
    let chosen: Vec<&CliOption> = OPTIONS
        .iter()
        .filter(|o| option.is_none_or(|name| o.name == name))
        .collect();
    if let (Some(name), true) = (option, chosen.is_empty()) {
        return Err(UnknownOption(name.to_string()));
    }
    Ok(chosen
        .into_iter()
        .map(|o| {
            let params: Vec<Value> = o
                .params
                .iter()
                .map(|p| json!({"name": p.name, "type": p.ty.name()}))
                .collect();
            json!({"option": o.name, "parameters": params})
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(option: &str) -> &'static [Param] {
        OPTIONS
            .iter()
            .find(|o| o.name == option)
            .map(|o| o.params)
            .unwrap_or_else(|| panic!("{option} is not in the table"))
    }

    /// A value of the type QEMU gives the key.
    fn sample(ty: ParamType) -> &'static str {
        match ty {
            ParamType::String => "x",
            ParamType::Boolean => "on",
            ParamType::Number => "1",
            ParamType::Size => "1M",
        }
    }

    /// Each listed key of `option` is known to `parse` after one of `bases` (each a
    /// valid spec alone), and a key the table lacks (a made-up one, and each of QEMU
    /// 7.2's keys for the option in `qemu_keys` that the table leaves out: the keys a
    /// parser would most likely grow) is refused after every base as `unknown` words it.
    fn check(
        option: &str,
        bases: &[&str],
        qemu_keys: &[&str],
        parse: impl Fn(&str) -> Result<(), String>,
        unknown: impl Fn(&str) -> String,
    ) {
        for base in bases {
            parse(base).unwrap_or_else(|e| panic!("{option} base {base:?}: {e}"));
        }
        for param in params(option) {
            let spec = |base: &str| format!("{base},{}={}", param.name, sample(param.ty));
            let known = bases.iter().any(|base| match parse(&spec(base)) {
                Ok(()) => true,
                Err(e) => !e.contains(&unknown(param.name)),
            });
            assert!(
                known,
                "{option}: the parser refuses the listed key {}",
                param.name
            );
        }
        let listed = |k: &str| params(option).iter().any(|p| p.name == k);
        let unlisted = qemu_keys.iter().filter(|k| !listed(k));
        for key in std::iter::once(&"bogus-key").chain(unlisted) {
            for base in bases {
                let spec = format!("{base},{key}=1");
                let e = parse(&spec).expect_err(&spec);
                assert!(
                    e.contains(&unknown(key)),
                    "{spec}: the parser takes {key}, which the table lacks ({e})"
                );
            }
        }
    }

    /// QEMU 7.2's -drive keys (its query-command-line-options answer).
    const QEMU_DRIVE: &[&str] = &[
        "copy-on-read",
        "werror",
        "rerror",
        "read-only",
        "file",
        "if",
        "media",
        "index",
        "unit",
        "bus",
        "stats-account-failed",
        "stats-account-invalid",
        "detect-zeroes",
        "throttling.group",
        "throttling.iops-size",
        "throttling.bps-total",
        "throttling.iops-total",
        "format",
        "cache.writeback",
        "aio",
        "snapshot",
        "force-share",
        "discard",
        "auto-read-only",
        "cache.no-flush",
        "cache.direct",
        "driver",
        "node-name",
    ];

    /// QEMU 7.2's -chardev keys.
    const QEMU_CHARDEV: &[&str] = &[
        "abstract",
        "tight",
        "clipboard",
        "mouse",
        "logappend",
        "logfile",
        "append",
        "chardev",
        "size",
        "debug",
        "name",
        "signal",
        "mux",
        "rows",
        "cols",
        "height",
        "width",
        "websocket",
        "tls-authz",
        "tls-creds",
        "tn3270",
        "telnet",
        "reconnect",
        "nodelay",
        "delay",
        "server",
        "wait",
        "ipv6",
        "ipv4",
        "to",
        "localport",
        "localaddr",
        "fd",
        "port",
        "host",
        "path",
        "backend",
    ];

    #[test]
    fn drive_keys_are_the_parsers() {
        check(
            "drive",
            &["file=/x,format=raw", "file=/x,format=qcow2"],
            QEMU_DRIVE,
            |s| s.parse::<crate::block::drive::DriveSpec>().map(drop),
            |k| format!("unknown drive option '{k}'"),
        );
    }

    #[test]
    fn memory_keys_are_the_parsers() {
        check(
            "memory",
            &["256"],
            &["size", "slots", "maxmem"],
            |s| s.parse::<ipc::host::MemoryConfig>().map(drop),
            |k| format!("Invalid parameter '{k}'"),
        );
    }

    #[test]
    fn chardev_keys_are_the_parsers() {
        check(
            "chardev",
            &[
                "null,id=a",
                "file,id=a,path=/x",
                "ringbuf,id=a",
                "socket,id=a,path=/s",
                "socket,id=a,host=127.0.0.1,port=1",
                "udp,id=a,port=1",
            ],
            QEMU_CHARDEV,
            |s| crate::chardev::spec::Backend::from_cli(s).map(drop),
            |k| format!("Invalid parameter '{k}'"),
        );
    }

    #[test]
    fn mon_keys_are_the_parsers() {
        check(
            "mon",
            &["chardev=c", "chardev=c,mode=control"],
            &["pretty", "chardev", "mode"],
            |s| crate::monitor::spec::MonSpec::from_cli(s).map(drop),
            |k| format!("Invalid parameter '{k}'"),
        );
    }

    #[test]
    fn trace_keys_are_the_parsers() {
        check(
            "trace",
            &["enable=x"],
            &["enable", "events", "file"],
            |s| {
                crate::trace::TraceOptions::parse(&[s.to_string()])
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
            |k| format!("Invalid parameter '{k}'"),
        );
    }

    #[test]
    fn one_option_or_an_unknown_name() {
        let all = describe(None).unwrap();
        assert_eq!(all.as_array().unwrap().len(), OPTIONS.len());
        assert_eq!(
            describe(Some("memory")).unwrap(),
            json!([{"option": "memory", "parameters": [
                {"name": "maxmem", "type": "size"},
                {"name": "slots", "type": "number"},
                {"name": "size", "type": "size"},
            ]}])
        );
        assert_eq!(
            describe(Some("device")).unwrap(),
            json!([{"option": "device", "parameters": []}])
        );
        assert_eq!(
            describe(Some("nope")).unwrap_err().to_string(),
            "invalid option name: nope"
        );
        // As QEMU 7.2 (its answer seen live).
        assert_eq!(
            describe(Some("blockdev")).unwrap_err().to_string(),
            "invalid option name: blockdev"
        );
    }
}
