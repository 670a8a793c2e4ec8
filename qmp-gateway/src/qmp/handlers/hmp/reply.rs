//! What HMP's commands share: running a QMP command of the command table, and HMP's
//! words for an error (a QMP command's, or a line the command cannot read).

use serde_json::{Map, Value};

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
    format!("{name}: {why}\nTry \"help {typed}\" for more information\n")
}

/// How HMP prints a QMP command's error.
pub fn error(e: &QmpError) -> String {
    format!("Error: {}\n", e.desc)
}

/// QEMU's words when an HMP command finds a name that is none of an enum's values.
pub fn invalid_value(value: &str) -> String {
    format!("Error: invalid parameter value: {value}\n")
}
