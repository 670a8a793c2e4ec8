//! The CPU models a management tool may choose from (query-cpu-definitions): only
//! "host", what vmm-core's vCPUs are (KVM's supported CPUID, devices/cpu.rs); QEMU's
//! named models and "max" are not taken by -cpu or device_add, so they are not listed.

use serde_json::json;

use crate::devices::cpu::CPU_TYPE;
use crate::qmp::args::NoArgs;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::QmpResult;

/// The one model's name.
pub const HOST_MODEL: &str = "host";

pub fn query_cpu_definitions(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(json!([{
        "name": HOST_MODEL,
        "typename": CPU_TYPE,
        // Every feature of the model is the host's: none can be missing.
        "unavailable-features": [],
        // Its features depend on the host (as QEMU's host model): neither static nor
        // safe to migrate to another host.
        "static": false,
        "migration-safe": false,
        "deprecated": false,
    }]))
}
