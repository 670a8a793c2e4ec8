//! human-monitor-command: the HMP commands that map onto QMP commands of the command
//! table, run through it and answered with QEMU's HMP text. Unknown commands are
//! answered as QEMU answers them: a successful return carrying "unknown command: '...'".

use ipc::RunState;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::qmp::args::{serde_arguments, Int};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HumanMonitorCommand {
    pub command_line: String,
    pub cpu_index: Option<Int>,
}

serde_arguments!(
    HumanMonitorCommand,
    [req("command-line", Ty::Str), opt("cpu-index", Ty::Int)]
);

/// An HMP command: the QMP command it runs (from the command table, with no
/// arguments), and how its answer reads in QEMU's HMP.
pub struct HmpCommand {
    /// Its words ("info status"), then any short form ("s" for "stop").
    pub names: &'static [&'static str],
    /// The QMP command it runs.
    pub qmp: &'static str,
    /// The text of the answer (`cpu`: the current CPU's index).
    text: fn(answer: &Value, cpu: u32) -> String,
    /// What `info` says of an info command.
    help: Option<&'static str>,
}

const fn info(
    name: &'static [&'static str],
    qmp: &'static str,
    text: fn(&Value, u32) -> String,
    help: &'static str,
) -> HmpCommand {
    HmpCommand {
        names: name,
        qmp,
        text,
        help: Some(help),
    }
}

/// A command whose success prints nothing.
const fn action(names: &'static [&'static str], qmp: &'static str) -> HmpCommand {
    HmpCommand {
        names,
        qmp,
        text: |_, _| String::new(),
        help: None,
    }
}

/// The HMP commands that map onto QMP commands this gateway serves (`info` lists its
/// subcommands in this order).
pub const HMP: &[HmpCommand] = &[
    info(
        &["info balloon"],
        "query-balloon",
        super::balloon::info_balloon,
        "show balloon information",
    ),
    info(
        &["info cpus"],
        "query-cpus-fast",
        info_cpus,
        "show infos for each CPU",
    ),
    info(
        &["info dump"],
        "query-dump",
        super::dump::info_dump,
        "Display the latest dump status",
    ),
    info(&["info kvm"], "query-kvm", info_kvm, "show KVM information"),
    info(
        &["info mice"],
        "query-mice",
        super::input::info_mice,
        "show which guest mouse is receiving events",
    ),
    info(
        &["info migrate_capabilities"],
        "query-migrate-capabilities",
        info_migrate_capabilities,
        "show current migration capabilities",
    ),
    info(
        &["info migrate_parameters"],
        "query-migrate-parameters",
        info_migrate_parameters,
        "show current migration parameters",
    ),
    info(
        &["info name"],
        "query-name",
        info_name,
        "show the current VM name",
    ),
    info(
        &["info pci"],
        "query-pci",
        |buses, _| super::pci::info_pci(buses),
        "show PCI info",
    ),
    info(
        &["info status"],
        "query-status",
        info_status,
        "show the current VM status (running|paused)",
    ),
    info(
        &["info uuid"],
        "query-uuid",
        info_uuid,
        "show the current VM UUID",
    ),
    info(
        &["info version"],
        "query-version",
        info_version,
        "show the version of QEMU",
    ),
    action(&["stop", "s"], "stop"),
    action(&["cont", "c"], "cont"),
    action(&["system_reset"], "system_reset"),
    action(&["system_powerdown"], "system_powerdown"),
    action(&["quit", "q"], "quit"),
];

pub fn human_monitor_command(c: &mut Ctx, a: HumanMonitorCommand) -> QmpResult {
    let present: Vec<u32> = c.gw.vcpus().iter().map(|v| v.index).collect();
    // An index beyond int64 counts as none given; an added vCPU may leave a gap.
    let current = match a.cpu_index.and_then(Int::as_i64) {
        None => 0,
        Some(i) if u32::try_from(i).is_ok_and(|i| present.contains(&i)) => i as u32,
        Some(_) => {
            return Err(QmpError::generic(
                "Parameter 'cpu-index' expects a CPU number",
            ))
        }
    };
    // `balloon` takes its argument (MiB): handlers/balloon.rs reads it as QEMU does.
    if let Some(("balloon", arguments)) =
        a.command_line.trim_start().split_once(char::is_whitespace)
    {
        return Ok(hmp_text(super::balloon::hmp_balloon(c, arguments)));
    }
    if a.command_line.trim() == "balloon" {
        return Ok(hmp_text(super::balloon::hmp_balloon(c, "")));
    }
    // `cpu N`: handlers/cpus.rs.
    match a.command_line.trim_start().split_once(char::is_whitespace) {
        Some(("cpu", arguments)) => return Ok(hmp_text(super::cpus::hmp_cpu(c, arguments))),
        None if a.command_line.trim() == "cpu" => return Ok(hmp_text(super::cpus::hmp_cpu(c, ""))),
        _ => {}
    }
    // `sendkey`, `mouse_move` and `mouse_button` take arguments: handlers/input.rs.
    let line = a.command_line.trim_start();
    let (word, arguments) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    if let Some(text) = super::input::hmp(c, word, arguments) {
        return Ok(hmp_text(text));
    }
    // `dump-guest-memory`, `memsave` and `pmemsave` take arguments: handlers/dump.rs.
    if let Some(text) = super::dump::hmp(c, word, arguments, current) {
        return Ok(hmp_text(text));
    }
    // `trace-event` and `info trace-events` take arguments: handlers/trace.rs.
    let split = |line: &'_ str| -> (String, String) {
        let line = line.trim_start();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        (word.to_string(), rest.to_string())
    };
    let (first, rest) = split(&a.command_line);
    if first == "trace-event" {
        return Ok(hmp_text(super::trace::hmp_trace_event(c, &rest)));
    }
    if first == "info" && split(&rest).0 == "trace-events" {
        let arguments = split(&rest).1;
        return Ok(hmp_text(super::trace::hmp_info_trace_events(c, &arguments)));
    }
    let mut words = a.command_line.split_whitespace();
    // Words after the command's own are ignored, as QEMU ignores them.
    let name = match (words.next(), words.next()) {
        (None, _) => return Ok(json!("")),
        (Some("info"), None) => return Ok(hmp_text(info_help())),
        (Some("info"), Some(what)) => format!("info {what}"),
        (Some(command), _) => command.to_string(),
    };
    let Some(hmp) = HMP.iter().find(|h| h.names.contains(&name.as_str())) else {
        return Ok(hmp_text(format!("unknown command: '{name}'\n")));
    };
    let text = match run(c, hmp.qmp) {
        Ok(answer) => (hmp.text)(&answer, current),
        Err(e) => format!("Error: {}\n", e.desc),
    };
    Ok(hmp_text(text))
}

/// HMP's lines end in CRLF on QMP.
fn hmp_text(text: String) -> Value {
    json!(text.replace('\n', "\r\n"))
}

/// Runs the QMP command `name` from the command table, without arguments.
fn run(c: &mut Ctx, name: &str) -> QmpResult {
    let command = c
        .commands
        .iter()
        .find(|command| command.name == name)
        .ok_or_else(|| QmpError::not_found(format!("The command {name} has not been found")))?;
    command.handler.run(c, Map::new())
}

/// `info` alone: the info commands, one line each.
fn info_help() -> String {
    HMP.iter()
        .filter_map(|h| Some(format!("{}  -- {}\n", h.names[0], h.help?)))
        .collect()
}

fn info_cpus(cpus: &Value, current: u32) -> String {
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

fn info_kvm(kvm: &Value, _: u32) -> String {
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

fn info_migrate_capabilities(capabilities: &Value, _: u32) -> String {
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

fn info_migrate_parameters(parameters: &Value, _: u32) -> String {
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

fn info_name(name: &Value, _: u32) -> String {
    name["name"]
        .as_str()
        .map(|n| format!("{n}\n"))
        .unwrap_or_default()
}

fn info_uuid(uuid: &Value, _: u32) -> String {
    format!("{}\n", uuid["UUID"].as_str().unwrap_or_default())
}

fn info_version(v: &Value, _: u32) -> String {
    let q = &v["qemu"];
    format!(
        "{}.{}.{}{}\n",
        q["major"],
        q["minor"],
        q["micro"],
        v["package"].as_str().unwrap_or_default()
    )
}

fn info_status(status: &Value, _: u32) -> String {
    let running = status["running"].as_bool().unwrap_or(false);
    let name = status["status"].as_str().unwrap_or_default();
    let mut s = format!("VM status: {}", if running { "running" } else { "paused" });
    if !running && name != RunState::Paused.qmp_name() {
        s.push_str(&format!(" ({name})"));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn info_lists_its_commands_as_qemu_does() {
        assert_eq!(
            info_help(),
            "info balloon  -- show balloon information\n\
             info cpus  -- show infos for each CPU\n\
             info dump  -- Display the latest dump status\n\
             info kvm  -- show KVM information\n\
             info mice  -- show which guest mouse is receiving events\n\
             info migrate_capabilities  -- show current migration capabilities\n\
             info migrate_parameters  -- show current migration parameters\n\
             info name  -- show the current VM name\n\
             info pci  -- show PCI info\n\
             info status  -- show the current VM status (running|paused)\n\
             info uuid  -- show the current VM UUID\n\
             info version  -- show the version of QEMU\n"
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
