//! human-monitor-command: the HMP commands that map onto what the gateway serves, with
//! QEMU's output text. Unknown commands are answered as QEMU answers them: a successful
//! return carrying "unknown command: '...'".

use ipc::{RunState, VmmRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use super::machine::status_info;
use crate::gateway::ExitReason;
use crate::qmp::args::{serde_arguments, Int};
use crate::qmp::command::Ctx;
use crate::qmp::protocol::{self, QmpError, QmpResult};
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

const INFO_HELP: &[(&str, &str)] = &[
    ("cpus", "show infos for each CPU"),
    ("kvm", "show KVM information"),
    ("name", "show the current VM name"),
    ("status", "show the current VM status (running|paused)"),
    ("uuid", "show the current VM UUID"),
    ("version", "show the version of QEMU"),
];

pub fn human_monitor_command(c: &mut Ctx, a: HumanMonitorCommand) -> QmpResult {
    let vcpus = c.gw.vcpus();
    // An index beyond int64 counts as none given.
    let current = match a.cpu_index.and_then(Int::as_i64) {
        None => 0,
        Some(i) if (0..vcpus.len() as i64).contains(&i) => i as u32,
        Some(_) => {
            return Err(QmpError::generic(
                "Parameter 'cpu-index' expects a CPU number",
            ))
        }
    };
    let mut words = a.command_line.split_whitespace();
    let vmm = |c: &mut Ctx, r: VmmRequest| match c.vmm(r) {
        Ok(_) => String::new(),
        Err(e) => format!("Error: {}\n", e.desc),
    };
    let text = match words.next() {
        None => String::new(),
        Some("info") => match words.next() {
            None => INFO_HELP
                .iter()
                .map(|(name, what)| format!("info {name}  -- {what}\n"))
                .collect(),
            Some("status") => info_status(&status_info(c.gw)),
            Some("version") => {
                let v = protocol::version();
                format!(
                    "{}.{}.{}{}\n",
                    v["qemu"]["major"],
                    v["qemu"]["minor"],
                    v["qemu"]["micro"],
                    protocol::PACKAGE
                )
            }
            Some("kvm") => "kvm support: enabled\n".into(),
            Some("name") => {
                c.gw.identity
                    .name
                    .as_ref()
                    .map(|n| format!("{n}\n"))
                    .unwrap_or_default()
            }
            Some("uuid") => format!("{}\n", c.gw.identity.uuid),
            Some("cpus") => vcpus
                .iter()
                .map(|v| {
                    let mark = if v.index == current { '*' } else { ' ' };
                    format!("{mark} CPU #{}: thread_id={}\n", v.index, v.thread_id)
                })
                .collect(),
            Some(other) => format!("unknown command: 'info {other}'\n"),
        },
        Some("stop" | "s") => vmm(c, VmmRequest::Stop),
        Some("cont" | "c") => vmm(c, VmmRequest::Cont),
        Some("system_reset") => vmm(c, VmmRequest::SystemReset),
        Some("system_powerdown") => vmm(c, VmmRequest::SystemPowerdown),
        Some("quit" | "q") => {
            c.exit_after_reply = Some(ExitReason::Quit);
            String::new()
        }
        Some(other) => format!("unknown command: '{other}'\n"),
    };
    Ok(json!(text.replace('\n', "\r\n")))
}

fn info_status(status: &Value) -> String {
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
        let line = |running, status| info_status(&json!({"running": running, "status": status}));
        assert_eq!(line(true, "running"), "VM status: running\n");
        assert_eq!(line(false, "paused"), "VM status: paused\n");
        assert_eq!(line(false, "prelaunch"), "VM status: paused (prelaunch)\n");
        assert_eq!(
            line(false, "internal-error"),
            "VM status: paused (internal-error)\n"
        );
    }
}
