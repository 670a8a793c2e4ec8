//! trace-event-get-state and trace-event-set-state (the rules are trace.rs's), and HMP's
//! `trace-event NAME on|off [VCPU]` and `info trace-events [NAME [VCPU]]`, read and
//! answered as QEMU 7.2's monitor does.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::qmp::args::{serde_arguments, Int};
use crate::qmp::context::Ctx;
use crate::qmp::handlers::hmp::reply::try_help;
use crate::qmp::monitor_number::monitor_number;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};
use crate::trace::{self, TraceStateError};

#[derive(Debug, Deserialize)]
pub struct TraceEventGetState {
    pub name: String,
    pub vcpu: Option<Int>,
}

serde_arguments!(
    TraceEventGetState,
    [req("name", Ty::Str), opt("vcpu", Ty::Int)]
);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TraceEventSetState {
    pub name: String,
    pub enable: bool,
    pub ignore_unavailable: Option<bool>,
    pub vcpu: Option<Int>,
}

serde_arguments!(
    TraceEventSetState,
    [
        req("name", Ty::Str),
        req("enable", Ty::Bool),
        opt("ignore-unavailable", Ty::Bool),
        opt("vcpu", Ty::Int)
    ]
);

fn present_vcpus(c: &Ctx) -> Vec<u32> {
    c.gw.vcpus().iter().map(|v| v.index).collect()
}

fn qmp_error(e: TraceStateError) -> QmpError {
    QmpError::generic(e.to_string())
}

pub fn trace_event_get_state(c: &mut Ctx, a: TraceEventGetState) -> QmpResult {
    // The checker took only an int64.
    let vcpu = a.vcpu.and_then(Int::as_i64);
    let states = trace::get_state(&a.name, vcpu, &present_vcpus(c)).map_err(qmp_error)?;
    Ok(Value::Array(
        states
            .into_iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "vcpu": false,
                    "state": if e.enabled { "enabled" } else { "disabled" },
                })
            })
            .collect(),
    ))
}

/// `ignore-unavailable` changes nothing: none of our events is unavailable.
pub fn trace_event_set_state(c: &mut Ctx, a: TraceEventSetState) -> QmpResult {
    let vcpu = a.vcpu.and_then(Int::as_i64);
    trace::set_state(&a.name, a.enable, vcpu, &present_vcpus(c)).map_err(qmp_error)?;
    Ok(json!({}))
}

/// An HMP argument line read as QEMU's monitor reads `name:s,...,vcpu:i?`: `command` is
/// the command's name in messages, `help` what `Try "help ..."` names.
struct HmpArgs<'a> {
    words: std::str::SplitWhitespace<'a>,
    command: &'static str,
    help: &'static str,
}

impl HmpArgs<'_> {
    fn fail(&self, why: &str) -> String {
        try_help(why, self.help)
    }

    /// The optional 32-bit integer at the end, then nothing more.
    fn vcpu_then_end(&mut self) -> Result<Option<i64>, String> {
        let vcpu = match self.words.next() {
            None => None,
            Some(word) => {
                let value = monitor_number(self.command, word).map_err(|e| self.fail(&e))?;
                if value >> 32 != 0 {
                    let why = format!(
                        "'{}' has failed: integer is for 32-bit values",
                        self.command
                    );
                    return Err(self.fail(&why));
                }
                Some(i64::from(value as u32 as i32))
            }
        };
        if self.words.next().is_some() {
            let why = format!("{}: extraneous characters at the end of line", self.command);
            return Err(self.fail(&why));
        }
        Ok(vcpu)
    }
}

/// HMP `trace-event NAME on|off [VCPU]`: nothing printed when it worked.
pub fn hmp_trace_event(c: &mut Ctx, arguments: &str) -> String {
    let mut args = HmpArgs {
        words: arguments.split_whitespace(),
        command: "trace-event",
        help: "trace-event",
    };
    let Some(name) = args.words.next() else {
        return args.fail("trace-event: string expected");
    };
    let enable = match args.words.next() {
        Some("on") => true,
        Some("off") => false,
        _ => return args.fail("Expected 'on' or 'off'"),
    };
    let vcpu = match args.vcpu_then_end() {
        Ok(v) => v,
        Err(text) => return text,
    };
    if vcpu.is_some_and(|v| v < 0) {
        return "argument vcpu must be positive".into();
    }
    match trace::set_state(name, enable, vcpu, &present_vcpus(c)) {
        Ok(()) => String::new(),
        Err(e) => format!("{e}\n"),
    }
}

/// HMP `info trace-events [NAME [VCPU]]` (NAME `*` when not given): `NAME : state 0|1`.
pub fn hmp_info_trace_events(c: &mut Ctx, arguments: &str) -> String {
    let mut args = HmpArgs {
        words: arguments.split_whitespace(),
        command: "trace-events",
        help: "info trace-events",
    };
    let name = args.words.next().unwrap_or("*");
    let vcpu = match args.vcpu_then_end() {
        Ok(v) => v,
        Err(text) => return text,
    };
    match trace::get_state(name, vcpu, &present_vcpus(c)) {
        Ok(states) => states
            .iter()
            .map(|e| format!("{} : state {}\n", e.name, u8::from(e.enabled)))
            .collect(),
        Err(e) => format!("{e}\n"),
    }
}
