//! The texts of HMP's `info` commands that print a QMP answer of the gateway's own
//! (vCPUs, KVM, migration settings, name, UUID, version, run state, chardevs), as
//! QEMU 7.2's.

use ipc::RunState;
use serde_json::Value;

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
