//! query-memory-devices and query-acpi-ospm-status, as QEMU 7.2 answers them on its pc
//! machine: the DIMMs device_add made (devices/dimm.rs), by address, and each ACPI hotplug
//! slot's last _OST report (devices/ospm.rs: the memory slots, then the vCPUs once the
//! guest left the legacy CPU hotplug mode).

use serde_json::Value;

use crate::qmp::args::NoArgs;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::QmpResult;

pub fn query_memory_devices(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(c.gw.memory_devices())
}

pub fn query_acpi_ospm_status(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(Value::Array(c.gw.acpi_ospm_status()?))
}
