//! HMP's migration settings and state: `migrate_set_parameter` read as QEMU 7.2 reads
//! it, and `info migrate` (query-migrate's answer as QEMU 7.2 prints it, less QEMU's
//! "globals:" block: the -global properties of QEMU's migration object, which this VMM
//! does not have: docs/qmp-coverage.md).

use serde_json::{json, Map, Value};

use super::args;
use super::reply::{invalid_value, quiet, read_args, run_qmp};
use crate::qmp::context::Ctx;

/// How QEMU's monitor reads each parameter's value (its string input visitor's types).
#[derive(Clone, Copy)]
enum Kind {
    Uint(&'static str, u64),
    Bool,
    Str,
    /// Bytes by default.
    Size,
    /// MiB by default (max-bandwidth).
    SizeMib,
    Compression,
    /// Only QMP can set it.
    BitmapMapping,
}

const PARAMETERS: &[(&str, Kind)] = &[
    ("announce-initial", Kind::Size),
    ("announce-max", Kind::Size),
    ("announce-rounds", Kind::Size),
    ("announce-step", Kind::Size),
    ("compress-level", Kind::Uint("uint8_t", 0xff)),
    ("compress-threads", Kind::Uint("uint8_t", 0xff)),
    ("compress-wait-thread", Kind::Bool),
    ("decompress-threads", Kind::Uint("uint8_t", 0xff)),
    ("throttle-trigger-threshold", Kind::Uint("uint8_t", 0xff)),
    ("cpu-throttle-initial", Kind::Uint("uint8_t", 0xff)),
    ("cpu-throttle-increment", Kind::Uint("uint8_t", 0xff)),
    ("cpu-throttle-tailslow", Kind::Bool),
    ("tls-creds", Kind::Str),
    ("tls-hostname", Kind::Str),
    ("tls-authz", Kind::Str),
    ("max-bandwidth", Kind::SizeMib),
    ("downtime-limit", Kind::Size),
    ("x-checkpoint-delay", Kind::Uint("uint32_t", 0xffff_ffff)),
    ("block-incremental", Kind::Bool),
    ("multifd-channels", Kind::Uint("uint8_t", 0xff)),
    ("multifd-compression", Kind::Compression),
    ("multifd-zlib-level", Kind::Uint("uint8_t", 0xff)),
    ("multifd-zstd-level", Kind::Uint("uint8_t", 0xff)),
    ("xbzrle-cache-size", Kind::Size),
    ("max-cpu-throttle", Kind::Uint("uint8_t", 0xff)),
    ("max-postcopy-bandwidth", Kind::Size),
    ("block-bitmap-mapping", Kind::BitmapMapping),
];

/// C's strtoull in base 0 over the whole text (a minus wraps, as it does).
fn strtou64(text: &str) -> Option<u64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse().ok()?
    };
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

/// HMP `migrate_set_parameter NAME VALUE`: the value read by the parameter's type, then
/// migrate-set-parameters with it.
pub fn migrate_set_parameter(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    const NAME: &str = "migrate_set_parameter";
    let members = match read_args(NAME, "parameter:s,value:s", arguments) {
        Ok(m) => m,
        Err(usage) => return usage,
    };
    let name = members["parameter"].as_str().unwrap_or_default();
    let text = members["value"].as_str().unwrap_or_default();
    let Some(&(name, kind)) = PARAMETERS.iter().find(|(n, _)| *n == name) else {
        return invalid_value(name);
    };
    let expects = |what: &str| format!("Error: Parameter '{name}' expects {what}\n");
    let value = match kind {
        Kind::Uint(ty, max) => match strtou64(text) {
            Some(v) if v <= max => json!(v),
            Some(_) => return expects(ty),
            None => return expects("uint64"),
        },
        Kind::Bool => match crate::keyval::boolean(text) {
            Some(b) => json!(b),
            None => return expects("'on' or 'off'"),
        },
        Kind::Str => json!(text),
        Kind::Size => match args::size(text, 0) {
            Some((v, "")) => json!(v),
            _ => {
                return expects(
                    "a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E \
                     means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.",
                )
            }
        },
        Kind::SizeMib => match args::size(text, 20) {
            Some((v, _)) => json!(v),
            None => return format!("Error: Invalid size {text}\n"),
        },
        Kind::Compression => match text {
            "none" | "zlib" | "zstd" => json!(text),
            _ => return format!("Error: Parameter '{name}' does not accept value '{text}'\n"),
        },
        Kind::BitmapMapping => {
            return "Error: The block-bitmap-mapping parameter can only be set through QMP\n".into()
        }
    };
    let mut parameters = Map::new();
    parameters.insert(name.into(), value);
    quiet(run_qmp(c, "migrate-set-parameters", parameters))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_default()
}

/// C's "%0.2f" of a number member.
fn f2(v: &Value, key: &str) -> String {
    format!("{:.2}", v[key].as_f64().unwrap_or_default())
}

pub fn info_migrate(info: &Value, _: u32) -> String {
    let mut t = String::new();
    if let Some(reasons) = info["blocked-reasons"].as_array() {
        t += "Outgoing migration blocked:\n";
        for r in reasons {
            t += &format!("  {}\n", r.as_str().unwrap_or_default());
        }
    }
    if let Some(status) = info["status"].as_str() {
        t += &format!("Migration status: {status}");
        match info["error-desc"].as_str() {
            Some(why) if status == "failed" => t += &format!(" ({why})\n"),
            _ => t.push('\n'),
        }
        t += &format!("total time: {} ms\n", u(info, "total-time"));
        for (key, label) in [
            ("expected-downtime", "expected downtime"),
            ("downtime", "downtime"),
            ("setup-time", "setup"),
        ] {
            if info.get(key).is_some() {
                t += &format!("{label}: {} ms\n", u(info, key));
            }
        }
    }
    let ram = &info["ram"];
    if ram.is_object() {
        t += &format!("transferred ram: {} kbytes\n", u(ram, "transferred") >> 10);
        t += &format!("throughput: {} mbps\n", f2(ram, "mbps"));
        t += &format!("remaining ram: {} kbytes\n", u(ram, "remaining") >> 10);
        t += &format!("total ram: {} kbytes\n", u(ram, "total") >> 10);
        t += &format!("duplicate: {} pages\n", u(ram, "duplicate"));
        t += &format!("skipped: {} pages\n", u(ram, "skipped"));
        t += &format!("normal: {} pages\n", u(ram, "normal"));
        t += &format!("normal bytes: {} kbytes\n", u(ram, "normal-bytes") >> 10);
        t += &format!("dirty sync count: {}\n", u(ram, "dirty-sync-count"));
        t += &format!("page size: {} kbytes\n", u(ram, "page-size") >> 10);
        t += &format!("multifd bytes: {} kbytes\n", u(ram, "multifd-bytes") >> 10);
        t += &format!("pages-per-second: {}\n", u(ram, "pages-per-second"));
        // Printed only when not zero.
        for (key, line) in [
            ("dirty-pages-rate", "dirty pages rate: {} pages"),
            ("postcopy-requests", "postcopy request count: {}"),
            ("precopy-bytes", "precopy ram: {} kbytes"),
            ("downtime-bytes", "downtime ram: {} kbytes"),
            ("postcopy-bytes", "postcopy ram: {} kbytes"),
        ] {
            let value = u(ram, key);
            let shown = if line.ends_with("kbytes") {
                value >> 10
            } else {
                value
            };
            if value != 0 {
                t += &line.replace("{}", &shown.to_string());
                t.push('\n');
            }
        }
    }
    let disk = &info["disk"];
    if disk.is_object() {
        t += &format!(
            "transferred disk: {} kbytes\n",
            u(disk, "transferred") >> 10
        );
        t += &format!("remaining disk: {} kbytes\n", u(disk, "remaining") >> 10);
        t += &format!("total disk: {} kbytes\n", u(disk, "total") >> 10);
    }
    let cache = &info["xbzrle-cache"];
    if cache.is_object() {
        t += &format!("cache size: {} bytes\n", u(cache, "cache-size"));
        t += &format!("xbzrle transferred: {} kbytes\n", u(cache, "bytes") >> 10);
        t += &format!("xbzrle pages: {} pages\n", u(cache, "pages"));
        t += &format!("xbzrle cache miss: {} pages\n", u(cache, "cache-miss"));
        t += &format!("xbzrle cache miss rate: {}\n", f2(cache, "cache-miss-rate"));
        t += &format!("xbzrle encoding rate: {}\n", f2(cache, "encoding-rate"));
        t += &format!("xbzrle overflow: {}\n", u(cache, "overflow"));
    }
    let compression = &info["compression"];
    if compression.is_object() {
        t += &format!("compression pages: {} pages\n", u(compression, "pages"));
        t += &format!("compression busy: {}\n", u(compression, "busy"));
        t += &format!("compression busy rate: {}\n", f2(compression, "busy-rate"));
        t += &format!(
            "compressed size: {} kbytes\n",
            u(compression, "compressed-size") >> 10
        );
        t += &format!(
            "compression rate: {}\n",
            f2(compression, "compression-rate")
        );
    }
    if info.get("cpu-throttle-percentage").is_some() {
        t += &format!(
            "cpu throttle percentage: {}\n",
            u(info, "cpu-throttle-percentage")
        );
    }
    if info.get("postcopy-blocktime").is_some() {
        t += &format!("postcopy blocktime: {}\n", u(info, "postcopy-blocktime"));
    }
    if let Some(per_vcpu) = info["postcopy-vcpu-blocktime"].as_array() {
        // QEMU's string output visitor: a list of numbers joined by ','.
        let values: Vec<String> = per_vcpu.iter().map(Value::to_string).collect();
        t += &format!("postcopy vcpu blocktime: {}\n", values.join(","));
    }
    if let Some(addresses) = info["socket-address"].as_array() {
        t += "socket address: [\n";
        for a in addresses {
            t += &format!("\t{}\n", socket_uri(a));
        }
        t += "]\n";
    }
    t
}

/// QEMU's socket_uri: a SocketAddress as a URI.
fn socket_uri(a: &Value) -> String {
    let s = |key: &str| a[key].as_str().unwrap_or_default().to_string();
    match a["type"].as_str() {
        Some("inet") if s("host").contains(':') => format!("tcp:[{}]:{}", s("host"), s("port")),
        Some("inet") => format!("tcp:{}:{}", s("host"), s("port")),
        Some("unix") => format!("unix:{}", s("path")),
        Some("fd") => format!("fd:{}", s("str")),
        Some("vsock") => format!("vsock:{}:{}", s("cid"), s("port")),
        _ => "unknown:".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_migration_says_why() {
        let text = info_migrate(
            &json!({"status": "failed", "error-desc": "no peer", "total-time": 3}),
            0,
        );
        assert_eq!(
            text,
            "Migration status: failed (no peer)\ntotal time: 3 ms\n"
        );
        assert_eq!(info_migrate(&json!({}), 0), "");
    }
}
