//! query-memory-devices and query-acpi-ospm-status, as QEMU 7.2 answers them on its pc
//! machine: the DIMMs device_add made (devices/dimm.rs), by address, and each memory slot's
//! last _OST report (vmm-core's memory hotplug registers), with its DIMM's id. Without
//! memory slots both lists are empty, as QEMU's are when it has no CPU hotplug to report
//! either (its pc machine lists CPUs only after the guest's AML left the legacy CPU
//! hotplug mode).

use serde_json::Value;

use crate::qmp::args::NoArgs;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::QmpResult;

pub fn query_memory_devices(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(c.gw.memory_devices())
}

pub fn query_acpi_ospm_status(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(Value::Array(c.gw.memory_ospm_status()?))
}
