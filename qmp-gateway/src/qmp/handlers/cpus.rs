//! vCPU hotplug's commands: cpu-add and cpu (the spec's; QEMU 7.2 has neither: cpu-add
//! answers in QEMU 4.x's words, cpu did nothing there), query-hotpluggable-cpus (QEMU
//! 7.2 pc's list), and HMP's `cpu N`. device_add of a CPU is device_add's (devices/).

use serde::Deserialize;
use serde_json::json;

use crate::cpus::CpuAddError;
use crate::qmp::args::{serde_arguments, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::handlers::hmp::reply::try_help;
use crate::qmp::monitor_number::monitor_number;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{req, Ty};

#[derive(Debug, Deserialize)]
pub struct CpuAdd {
    pub id: Int,
}

serde_arguments!(CpuAdd, [req("id", Ty::Int)]);

pub fn cpu_add(c: &mut Ctx, a: CpuAdd) -> QmpResult {
    // The checker took only an int64.
    let id = a.id.as_i64().unwrap_or(i64::MAX);
    match c.gw.cpu_add(id) {
        Ok(()) => Ok(json!({})),
        Err(CpuAddError::Link(e)) => Err(e.into()),
        Err(e) => Err(QmpError::generic(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub struct Cpu {
    pub index: Int,
}

serde_arguments!(Cpu, [req("index", Ty::Int)]);

/// QMP's cpu: "Set the default CPU", which QEMU's qmp_cpu never did (it did nothing and
/// answered {}); the default CPU is the monitor's, and QMP has none.
pub fn cpu(_: &mut Ctx, _: Cpu) -> QmpResult {
    Ok(json!({}))
}

pub fn query_hotpluggable_cpus(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(c.gw.hotpluggable_cpus())
}

/// HMP `cpu N`: makes vCPU N the monitor's current one (`current`), printing nothing;
/// QEMU 7.2's words for the rest. N is read as a number (QEMU's monitor takes
/// expressions too).
pub fn hmp_cpu(c: &mut Ctx, arguments: &str, current: &mut u32) -> String {
    let fail = |why: &str| try_help(why, "cpu");
    let arg = arguments.trim_start();
    let (number, rest) = match arg.find(char::is_whitespace) {
        Some(end) => arg.split_at(end),
        None => (arg, ""),
    };
    let value = match monitor_number("cpu", number) {
        Ok(v) => v,
        Err(why) => return fail(&why),
    };
    if !rest.trim().is_empty() {
        return fail("cpu: extraneous characters at the end of line");
    }
    // An 'i' argument: the upper half must be clear.
    if (value >> 32) != 0 {
        return fail("'cpu' has failed: integer is for 32-bit values");
    }
    let index = value as u32;
    if c.gw.vcpus().iter().any(|v| v.index == index) {
        *current = index;
        String::new()
    } else {
        "invalid CPU index\n".into()
    }
}
