//! balloon and query-balloon, as QEMU 7.2 answers them: vmm-core serves the device (the
//! target goes to it, the actual comes from it); without one, both are DeviceNotActive
//! before anything else is looked at. The rules for the value are in crate::balloon; HMP's
//! `balloon` and `info balloon` run these (hmp.rs).

use ipc::{ErrorClass, VmmReply, VmmRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::balloon::{target_pages, NOT_ACTIVE};
use crate::qmp::args::{serde_arguments, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::handlers::hmp::reply::{quiet, try_help};
use crate::qmp::monitor_number::monitor_number;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{req, Ty};

#[derive(Debug, Deserialize)]
pub struct Balloon {
    pub value: Int,
}

serde_arguments!(Balloon, [req("value", Ty::Int)]);

/// Guest RAM's size, if the VM has a balloon (QEMU's have_balloon).
fn balloon_ram(c: &Ctx) -> Result<u64, QmpError> {
    let launch = c.gw.vmm_child.launch.lock();
    match launch.as_ref() {
        Some(vm) if vm.config.balloon.is_some() => Ok(vm.config.memory_mib << 20),
        _ => Err(QmpError {
            class: ErrorClass::DeviceNotActive,
            desc: NOT_ACTIVE.into(),
        }),
    }
}

pub fn balloon(c: &mut Ctx, a: Balloon) -> QmpResult {
    set_target(c, a.value.as_i64().unwrap_or(i64::MAX))
}

/// The target for QMP balloon's (or HMP balloon's) `value` in bytes.
pub fn set_target(c: &mut Ctx, value: i64) -> QmpResult {
    let ram = balloon_ram(c)?;
    let pages = target_pages(ram, value).map_err(QmpError::generic)?;
    c.vmm(VmmRequest::BalloonTarget { pages })?;
    Ok(json!({}))
}

pub fn query_balloon(c: &mut Ctx, _: NoArgs) -> QmpResult {
    balloon_ram(c)?;
    match c.vmm(VmmRequest::QueryBalloon)? {
        VmmReply::Balloon { actual_bytes } => Ok(json!({"actual": actual_bytes})),
        other => Err(QmpError::generic(format!(
            "vmm-core answered query-balloon with {other:?}"
        ))),
    }
}

/// HMP `info balloon`: the actual in MiB, rounded down.
pub fn info_balloon(info: &Value, _: u32) -> String {
    format!(
        "balloon: actual={}\n",
        info["actual"].as_u64().unwrap_or(0) >> 20
    )
}

/// HMP `balloon N` (N in MiB): the text it prints. QEMU's monitor reads N as an
/// expression; integers are taken here (decimal, 0x hex, 0 octal), and its messages for
/// what does not read as one.
pub fn hmp_balloon(c: &mut Ctx, arguments: &str) -> String {
    let fail = |why: &str| try_help(why, "balloon");
    let arg = arguments.trim_start();
    let (number, rest) = match arg.find(char::is_whitespace) {
        Some(end) => arg.split_at(end),
        None => (arg, ""),
    };
    // Kept as an int64, as QEMU does.
    let value = match monitor_number("balloon", number).map(|v| v as i64) {
        Ok(v) => v,
        Err(why) => return fail(&why),
    };
    if !rest.trim().is_empty() {
        return fail("balloon: extraneous characters at the end of line");
    }
    if value < 0 {
        return fail("enter a positive value");
    }
    // QEMU multiplies in int64 and lets it wrap: too many MiB end up refused as 0 or less.
    quiet(set_target(c, value.wrapping_mul(1 << 20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_balloon_is_in_whole_mib() {
        assert_eq!(
            info_balloon(&json!({"actual": (96u64 << 20) + 4096}), 0),
            "balloon: actual=96\n"
        );
    }
}
