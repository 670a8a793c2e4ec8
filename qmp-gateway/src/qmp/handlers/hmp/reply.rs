//! What HMP's commands share: running a QMP command of the command table, and HMP's
//! words for an error (a QMP command's, or a line the command cannot read).

use serde_json::{Map, Value};

use super::args;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};

/// Runs the QMP command `name` of the command table with `arguments`.
pub fn run_qmp(c: &mut Ctx, name: &str, arguments: Map<String, Value>) -> QmpResult {
    let command = c
        .commands
        .iter()
        .find(|command| command.name == name)
        .ok_or_else(|| QmpError::not_found(format!("The command {name} has not been found")))?;
    command.handler.run(c, arguments)
}

/// HMP's usage error: `name` (the command's name in QEMU's table, "stop|s" or "status"
/// for info status) could not read its arguments (`why`); `typed`, what was typed of its
/// name, is the help to try.
pub fn usage(name: &str, typed: &str, why: &str) -> String {
    try_help(&format!("{name}: {why}"), typed)
}

/// What QEMU's monitor prints when a command cannot use its line: `message` (one line,
/// with or without its end), then where to look (`topic`: "help TOPIC").
pub fn try_help(message: &str, topic: &str) -> String {
    let message = message.strip_suffix('\n').unwrap_or(message);
    format!("{message}\nTry \"help {topic}\" for more information\n")
}

/// `name`'s arguments read from `text` by `spec` (args.rs), or what QEMU prints when
/// they cannot be.
pub fn read_args(name: &str, spec: &str, text: &str) -> Result<Map<String, Value>, String> {
    args::read(name, spec, text).map_err(|why| try_help(&why, name))
}

/// The vCPUs there, by index, lowest first.
pub fn present_vcpus(c: &Ctx) -> Vec<u32> {
    let mut present: Vec<u32> = c.gw.vcpus().iter().map(|v| v.index).collect();
    present.sort_unstable();
    present
}

/// The monitor's CPU as QEMU's mon_get_cpu finds it: `cpu` if it is there, else the
/// first of `present` (a monitor whose CPU went away takes it); None without vCPUs.
pub fn current_cpu(present: &[u32], cpu: &mut u32) -> Option<u32> {
    if !present.contains(cpu) {
        *cpu = *present.first()?;
    }
    Some(*cpu)
}

/// How HMP prints a QMP command's error.
pub fn error(e: &QmpError) -> String {
    format!("Error: {}\n", e.desc)
}

/// What HMP prints for a command that prints nothing when it works: nothing, or the error.
pub fn quiet<T>(result: Result<T, QmpError>) -> String {
    match result {
        Ok(_) => String::new(),
        Err(e) => error(&e),
    }
}

/// QEMU's words when an HMP command finds a name that is none of an enum's values.
pub fn invalid_value(value: &str) -> String {
    format!("Error: invalid parameter value: {value}\n")
}
