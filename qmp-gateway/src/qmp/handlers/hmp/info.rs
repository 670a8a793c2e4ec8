//! The texts of HMP's `info` commands that print a QMP answer of the gateway's own
//! (vCPUs, KVM, migration settings, name, UUID, version, run state, chardevs,
//! iothreads, memory backends, hotpluggable CPUs) and `info network`, as QEMU 7.2's.

use ipc::RunState;
use serde_json::Value;

use super::reply::usage;
use crate::qmp::context::Ctx;

pub fn info_cpus(cpus: &Value, current: u32) -> String {
    let field = |cpu: &Value, key: &str| cpu[key].as_i64().unwrap_or_default();
    cpus.as_array()
        .into_iter()
        .flatten()
        .map(|cpu| {
            let index = field(cpu, "cpu-index");
            let mark = if index == i64::from(current) {
                '*'
            } else {
                ' '
            };
            let thread = field(cpu, "thread-id");
            format!("{mark} CPU #{index}: thread_id={thread}\n")
        })
        .collect()
}

pub fn info_kvm(kvm: &Value, _: u32) -> String {
    let state = if kvm["enabled"] == true {
        "enabled"
    } else {
        "disabled"
    };
    format!("kvm support: {state}\n")
}

fn on_off(v: &Value) -> &'static str {
    if v == true {
        "on"
    } else {
        "off"
    }
}

pub fn info_migrate_capabilities(capabilities: &Value, _: u32) -> String {
    capabilities
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let name = c["capability"].as_str().unwrap_or_default();
            format!("{name}: {}\n", on_off(&c["state"]))
        })
        .collect()
}

/// The parameters QEMU 7.2's HMP shows, in its order, with their units.
const HMP_PARAMETERS: &[(&str, &str)] = &[
    ("announce-initial", " ms"),
    ("announce-max", " ms"),
    ("announce-rounds", ""),
    ("announce-step", " ms"),
    ("compress-level", ""),
    ("compress-threads", ""),
    ("compress-wait-thread", ""),
    ("decompress-threads", ""),
    ("throttle-trigger-threshold", ""),
    ("cpu-throttle-initial", ""),
    ("cpu-throttle-increment", ""),
    ("cpu-throttle-tailslow", ""),
    ("max-cpu-throttle", ""),
    ("tls-creds", ""),
    ("tls-hostname", ""),
    ("max-bandwidth", " bytes/second"),
    ("downtime-limit", " ms"),
    ("x-checkpoint-delay", " ms"),
    ("block-incremental", ""),
    ("multifd-channels", ""),
    ("multifd-compression", ""),
    ("xbzrle-cache-size", " bytes"),
    ("max-postcopy-bandwidth", ""),
    ("tls-authz", ""),
];

pub fn info_migrate_parameters(parameters: &Value, _: u32) -> String {
    let mut text = String::new();
    for (name, unit) in HMP_PARAMETERS {
        let value = &parameters[name];
        let shown = match value {
            Value::Bool(_) => on_off(value).to_string(),
            // The TLS names, quoted.
            Value::String(s) if name.starts_with("tls-") => format!("'{s}'"),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!("{name}: {shown}{unit}\n"));
    }
    if let Some(nodes) = parameters["block-bitmap-mapping"].as_array() {
        text.push_str("block-bitmap-mapping:\n");
        let pair = |v: &Value, from: &str, to: &str| {
            let word = |key: &str| v[key].as_str().unwrap_or_default().to_string();
            format!("'{}' -> '{}'", word(from), word(to))
        };
        for node in nodes {
            text.push_str(&format!("  {}\n", pair(node, "node-name", "alias")));
            for bitmap in node["bitmaps"].as_array().into_iter().flatten() {
                text.push_str(&format!("    {}\n", pair(bitmap, "name", "alias")));
            }
        }
    }
    text
}

pub fn info_name(name: &Value, _: u32) -> String {
    name["name"]
        .as_str()
        .map(|n| format!("{n}\n"))
        .unwrap_or_default()
}

pub fn info_uuid(uuid: &Value, _: u32) -> String {
    format!("{}\n", uuid["UUID"].as_str().unwrap_or_default())
}

pub fn info_version(v: &Value, _: u32) -> String {
    let q = &v["qemu"];
    format!(
        "{}.{}.{}{}\n",
        q["major"],
        q["minor"],
        q["micro"],
        v["package"].as_str().unwrap_or_default()
    )
}

pub fn info_status(status: &Value, _: u32) -> String {
    let running = status["running"].as_bool().unwrap_or(false);
    let name = status["status"].as_str().unwrap_or_default();
    let mut s = format!("VM status: {}", if running { "running" } else { "paused" });
    if !running && name != RunState::Paused.qmp_name() {
        s.push_str(&format!(" ({name})"));
    }
    s.push('\n');
    s
}

/// HMP `info chardev`: each chardev's label and filename, in query-chardev's order.
pub fn info_chardev(chardevs: &Value, _: u32) -> String {
    chardevs
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let field = |key: &str| c[key].as_str().unwrap_or_default().to_string();
            format!("{}: filename={}\n", field("label"), field("filename"))
        })
        .collect()
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn true_false(v: &Value) -> &'static str {
    if v == true {
        "true"
    } else {
        "false"
    }
}

/// HMP `info iothreads`.
pub fn info_iothreads(threads: &Value, _: u32) -> String {
    items(threads)
        .map(|t| {
            let mut text = format!("{}:\n", t["id"].as_str().unwrap_or_default());
            for (key, label) in [
                ("thread-id", "thread_id"),
                ("poll-max-ns", "poll-max-ns"),
                ("poll-grow", "poll-grow"),
                ("poll-shrink", "poll-shrink"),
                ("aio-max-batch", "aio-max-batch"),
            ] {
                text += &format!("  {label}={}\n", t[key].as_i64().unwrap_or_default());
            }
            text
        })
        .collect()
}

/// QEMU's string output visitor on a list of numbers: runs of consecutive numbers as
/// "first-last", joined by ','.
fn number_ranges(numbers: &Value) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for n in items(numbers).filter_map(Value::as_u64) {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == n => *last = n,
            _ => runs.push((n, n)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .map(|&(a, b)| match a == b {
            true => a.to_string(),
            false => format!("{a}-{b}"),
        })
        .collect();
    shown.join(",")
}

/// HMP `info memdev`: each memory backend, then an empty line.
pub fn info_memdev(backends: &Value, _: u32) -> String {
    items(backends)
        .map(|m| {
            let mut text = format!(
                "memory backend: {}\n  size:  {}\n",
                m["id"].as_str().unwrap_or_default(),
                m["size"].as_u64().unwrap_or_default()
            );
            for key in ["merge", "dump", "prealloc", "share"] {
                text += &format!("  {key}: {}\n", true_false(&m[key]));
            }
            if m.get("reserve").is_some() {
                text += &format!("  reserve: {}\n", true_false(&m["reserve"]));
            }
            text += &format!(
                "  policy: {}\n  host nodes: {}\n",
                m["policy"].as_str().unwrap_or_default(),
                number_ranges(&m["host-nodes"])
            );
            text
        })
        .chain(["\n".to_string()])
        .collect()
}

/// HMP `info hotpluggable-cpus`.
pub fn info_hotpluggable_cpus(cpus: &Value, _: u32) -> String {
    let mut text = String::from("Hotpluggable CPUs:\n");
    for cpu in items(cpus) {
        text += &format!("  type: \"{}\"\n", cpu["type"].as_str().unwrap_or_default());
        text += &format!("  vcpus_count: \"{}\"\n", cpu["vcpus-count"]);
        if let Some(path) = cpu["qom-path"].as_str() {
            text += &format!("  qom_path: \"{path}\"\n");
        }
        text += "  CPUInstance Properties:\n";
        let props = &cpu["props"];
        for key in [
            "node-id",
            "socket-id",
            "die-id",
            "cluster-id",
            "core-id",
            "thread-id",
        ] {
            if let Some(n) = props[key].as_u64() {
                text += &format!("    {key}: \"{n}\"\n");
            }
        }
    }
    text
}

/// HMP `info network`: the NICs and netdevs as QEMU lists its net clients.
pub fn info_network(c: &mut Ctx, arguments: &str, _: &mut u32) -> String {
    if !arguments.trim_end().is_empty() {
        return usage(
            "network",
            "info network",
            "extraneous characters at the end of line",
        );
    }
    c.gw.net.info_network()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_lines_match_qemu() {
        let line = |running, status| info_status(&json!({"running": running, "status": status}), 0);
        assert_eq!(line(true, "running"), "VM status: running\n");
        assert_eq!(line(false, "paused"), "VM status: paused\n");
        assert_eq!(line(false, "prelaunch"), "VM status: paused (prelaunch)\n");
        assert_eq!(
            line(false, "internal-error"),
            "VM status: paused (internal-error)\n"
        );
    }

    #[test]
    fn host_nodes_read_as_qemus_ranges() {
        assert_eq!(number_ranges(&json!([])), "");
        assert_eq!(number_ranges(&json!([0, 1, 2, 5, 7, 8])), "0-2,5,7-8");
    }

    #[test]
    fn answers_read_as_in_qemus_hmp() {
        let cpus = json!([{"cpu-index": 0, "thread-id": 11}, {"cpu-index": 1, "thread-id": 12}]);
        assert_eq!(
            info_cpus(&cpus, 1),
            "  CPU #0: thread_id=11\n* CPU #1: thread_id=12\n"
        );
        assert_eq!(
            info_kvm(&json!({"enabled": true, "present": true}), 0),
            "kvm support: enabled\n"
        );
        assert_eq!(
            info_migrate_capabilities(
                &json!([{"capability": "xbzrle", "state": false}, {"capability": "events", "state": true}]),
                0
            ),
            "xbzrle: off\nevents: on\n"
        );
        let parameters = json!({
            "announce-initial": 50, "compress-wait-thread": true, "tls-creds": "tc",
            "multifd-compression": "zstd", "max-bandwidth": 1000,
            "block-bitmap-mapping": [{"node-name": "n", "alias": "a", "bitmaps": [
                {"name": "b", "alias": "c", "transform": {"persistent": true}}]}],
        });
        let text = info_migrate_parameters(&parameters, 0);
        for line in [
            "announce-initial: 50 ms\n",
            "compress-wait-thread: on\n",
            "tls-creds: 'tc'\n",
            "max-bandwidth: 1000 bytes/second\n",
            "multifd-compression: zstd\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.ends_with("block-bitmap-mapping:\n  'n' -> 'a'\n    'b' -> 'c'\n"));
        assert_eq!(info_name(&json!({}), 0), "");
        assert_eq!(info_name(&json!({"name": "vm"}), 0), "vm\n");
        assert_eq!(info_uuid(&json!({"UUID": "u"}), 0), "u\n");
        let v = crate::qmp::protocol::version();
        assert_eq!(
            info_version(&v, 0),
            format!("7.2.0{}\n", crate::qmp::protocol::PACKAGE)
        );
    }
}
