//! What this emulator is, as a management tool probes it: its target (query-target) and
//! its one machine type (query-machines).
//!
//! The machine is named "pc": libvirt lays out a machine's PCI controllers by its name,
//! and takes "pc" (as "pc-i440fx-*") for a PC whose root bus 0 is "pci.0", which is what
//! ours is and what the devices spec reader calls it. A chipset-versioned name
//! ("pc-i440fx-7.2") would claim QEMU's i440FX/PIIX3 hardware, which we do not have (our
//! host bridge is 1b36:0008), so "pc" is the name itself, not an alias.

use serde_json::{json, Value};

use super::objects::MACHINE_RAM_ID;
use crate::devices::cpu::CPU_TYPE;
use crate::qmp::args::NoArgs;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::QmpResult;

/// The machine type's name (query-machines, and `-machine` on a command line).
pub const MACHINE_NAME: &str = "pc";

pub fn query_target(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(json!({"arch": "x86_64"}))
}

/// The machine as MachineInfo.
pub fn machine_info() -> Value {
    json!({
        "name": MACHINE_NAME,
        "is-default": true,
        "cpu-max": ipc::machine::MAX_VCPUS,
        // cpu-add and device_add of CPUs (handlers/cpus.rs, devices/cpu.rs).
        "hotpluggable-cpus": true,
        // One node: no -numa.
        "numa-mem-supported": false,
        "deprecated": false,
        "default-cpu-type": CPU_TYPE,
        "default-ram-id": MACHINE_RAM_ID,
    })
}

pub fn query_machines(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(json!([machine_info()]))
}
