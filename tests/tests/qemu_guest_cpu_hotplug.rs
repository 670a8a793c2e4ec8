//! ACPI CPU hotplug of the test guest's `cpu-hotplug` scenario (tests/guest/src/scenarios/
//! cpu_hotplug.rs) under QEMU 7.2's `-M pc -smp 1,maxcpus=4`, the machine whose register
//! interface vmm-core follows; gateway_cpu_hotplug.rs runs the same scenario on Flotilla.
//!
//! What QEMU 7.2 does (seen here, with `-cpu host,-arch-capabilities`):
//! - query-hotpluggable-cpus lists every possible CPU, newest first: props socket-id 0,
//!   core-id 3..0, thread-id 0 (one socket of four cores: QEMU prefers cores since 6.2),
//!   "vcpus-count": 1, "type": "host-x86_64-cpu", and "qom-path" for the ones there
//!   (CPU 0: /machine/unattached/device[0]; added ones: /machine/peripheral/ID or
//!   /machine/peripheral-anon/device[N]). With maxcpus equal to the CPUs, only those.
//! - device_add answers {} at once; the CPU's insert event (CINS) and GPE 2 are set and the
//!   SCI raised; the guest finds it with command 0, its APIC ID (= core-id) with command 3,
//!   and starts it with INIT/SIPI/SIPI. query-cpus-fast lists it at once, with its own
//!   thread. cpu-add, cpu and query-cpus are CommandNotFound there (gone since QEMU 5/6).
//! - The register block starts in legacy mode: the guest's write of 0 to the selector
//!   switches it (without it no event is ever found).
//! - query-acpi-ospm-status (with `-m 128,slots=2,maxmem=1G`): the memory slots, then, only
//!   once the guest left the legacy mode, every possible CPU ({"slot": "N", "slot-type":
//!   "CPU", "source", "status"}, with "device" for a CPU device_add made with an id, none
//!   for the boot's or an anonymous one); the guest's _OST of a CPU (COST: selector,
//!   command 1 and the event, command 2 and the status) sets its source and status, and
//!   the status write sends ACPI_DEVICE_OST with the same info. Stopped (-S) before the
//!   switch: no CPU is listed, even one device_add made.

use flotilla_tests::cpu_hotplug::{self, CMDLINE, MEMORY};
use flotilla_tests::qemu::Qemu;
use serde_json::json;

#[test]
fn cpus_added_come_online_and_run_work() {
    let smp = format!("1,maxcpus={}", cpu_hotplug::MAX_CPUS);
    let mut qemu = Qemu::pc_guest(CMDLINE, &["-smp", &smp, "-m", MEMORY]);
    let mut qmp = qemu.client();
    qmp.ok("cont", json!({}));
    cpu_hotplug::scenario(&mut qemu.vm, &mut qmp);
    cpu_hotplug::no_errors(&qemu.vm);
}
