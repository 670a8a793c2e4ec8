//! The CPU hotplug scenario, run the same way on QEMU 7.2 (`-M pc -smp 1,maxcpus=4`) and on
//! Flotilla (`--cpus 1 --max-cpus 4`): the test guest's `cpu-hotplug` scenario
//! (tests/guest/README.md), CPUs added with device_add as query-hotpluggable-cpus describes
//! them, the guest's lines (the CPU came online and ran work), query-cpus-fast,
//! query-hotpluggable-cpus and query-acpi-ospm-status after each add, and the
//! ACPI_DEVICE_OST of the guest's _OST for each added CPU. The answers asserted are QEMU
//! 7.2's, as seen.

use std::time::Duration;

use serde_json::{json, Value};

use crate::qmp::QmpClient;
use crate::Vm;

/// The guest's command line: the scenario, every AP running the work loop again every
/// half second.
pub const CMDLINE: &str = "scenario=cpu-hotplug cpu-work-ms=500";
/// Possible CPUs (QEMU's maxcpus, the gateway's --max-cpus); one is there at boot.
pub const MAX_CPUS: usize = 4;
/// The memory option of both VMMs (QEMU's -m, the gateway's --memory): two DIMM slots,
/// which query-acpi-ospm-status lists before the CPUs (and which make QEMU's pc a NUMA
/// node: the CPUs' props have "node-id": 0).
pub const MEMORY: &str = "128,slots=2,maxmem=1G";
const DIMM_SLOTS: usize = 2;
/// The guest's _OST for an added CPU: source 1 (the Device Check), status 0 (success).
const ADDED_OST: (u64, u64) = (1, 0);
/// What the guest finds: one CPU, four in the MADT, the register block at QEMU pc's port
/// and GPE 2 (whose `_E02` runs CSCN).
pub const READY: &str = "GUEST CPU HOTPLUG READY cpus=1 possible=4 port=0xaf00 gpe=2";
/// The guest's first line takes seconds on QEMU (SeaBIOS runs emulated on kvm-pvm hosts).
pub const BOOT: Duration = Duration::from_secs(60);
/// One add: the event, INIT/SIPI/SIPI, the work (tens of milliseconds here).
pub const STEP: Duration = Duration::from_secs(30);

/// The value of `key=` in a guest line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Waits for `GUEST CPU HOTPLUG READY` and checks it.
pub fn ready(vm: &mut Vm) {
    let line = vm.expect_prefix("GUEST CPU HOTPLUG READY", BOOT);
    assert_eq!(line, READY, "{}", vm.transcript());
}

/// The guest's ADDED line for `apic` (with the CPUs online then), and its first WORK line.
pub fn expect_added(vm: &mut Vm, apic: u64, cpus: usize) {
    let added = vm.expect_prefix("GUEST CPU ADDED", STEP);
    assert_eq!(
        added,
        format!("GUEST CPU ADDED apic={apic} cpus={cpus}"),
        "{}",
        vm.transcript()
    );
    // The others' rounds may come first; the new CPU's first run follows its ADDED.
    let work = format!("GUEST CPU WORK apic={apic} ok");
    vm.expect_line(&work, STEP, |l| l == work);
}

/// Waits for a periodic work round of the CPU with `apic`: it still runs.
pub fn expect_round(vm: &mut Vm, apic: u64) -> u64 {
    let prefix = format!("GUEST CPU WORK apic={apic} ok round=");
    let line = vm.expect_prefix(&prefix, STEP);
    field(&line, "round")
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// The possible CPUs query-hotpluggable-cpus lists that are not there yet, by core-id.
pub fn free_slots(qmp: &mut QmpClient) -> Vec<Value> {
    let list = qmp.ok("query-hotpluggable-cpus", json!({}));
    let mut free: Vec<Value> = list
        .as_array()
        .expect("a list")
        .iter()
        .filter(|c| c.get("qom-path").is_none())
        .cloned()
        .collect();
    free.sort_by_key(|c| c["props"]["core-id"].as_i64());
    free
}

/// device_add of the first free CPU (`id` if given) with the type and props
/// query-hotpluggable-cpus gave; returns its core-id.
pub fn add_first_free(qmp: &mut QmpClient, id: Option<&str>) -> u64 {
    let free = free_slots(qmp);
    let slot = free.first().expect("a free CPU slot");
    let mut args = json!({"driver": slot["type"]});
    for (k, v) in slot["props"].as_object().expect("props") {
        args[k] = v.clone();
    }
    if let Some(id) = id {
        args["id"] = json!(id);
    }
    assert_eq!(qmp.ok("device_add", args), json!({}));
    slot["props"]["core-id"].as_u64().expect("core-id")
}

/// One ACPIOSTInfo (QMP's shape: "device" only for a device with an id).
fn ost_info(
    slot_type: &str,
    slot: usize,
    device: Option<&str>,
    (source, status): (u64, u64),
) -> Value {
    let mut info = json!({"slot": slot.to_string(), "slot-type": slot_type,
                          "source": source, "status": status});
    if let Some(id) = device {
        info["device"] = json!(id);
    }
    info
}

/// query-acpi-ospm-status with the guest out of the legacy CPU hotplug mode: the (empty)
/// memory slots, then every possible CPU, with `cpus`' (index, id, _OST) for the ones the
/// guest reported on (source 0 and status 0 for the others, with no id: the boot's CPU).
pub fn expect_ospm(qmp: &mut QmpClient, cpus: &[(usize, Option<&str>)]) {
    let dimms = (0..DIMM_SLOTS).map(|slot| ost_info("DIMM", slot, None, (0, 0)));
    let all_cpus = (0..MAX_CPUS).map(|index| match cpus.iter().find(|c| c.0 == index) {
        Some((_, device)) => ost_info("CPU", index, *device, ADDED_OST),
        None => ost_info("CPU", index, None, (0, 0)),
    });
    let want: Vec<Value> = dimms.chain(all_cpus).collect();
    assert_eq!(
        qmp.ok("query-acpi-ospm-status", json!({})),
        Value::Array(want)
    );
}

/// The ACPI_DEVICE_OST of the guest's _OST for the CPU added at `index` (with `device`).
pub fn expect_ost_event(qmp: &mut QmpClient, index: usize, device: Option<&str>) {
    let event = (qmp.event_within("ACPI_DEVICE_OST", STEP))
        .unwrap_or_else(|| panic!("no ACPI_DEVICE_OST for CPU {index} within {STEP:?}"));
    assert_eq!(
        event["data"],
        json!({"info": ost_info("CPU", index, device, ADDED_OST)}),
        "{event}"
    );
}

/// query-cpus-fast's entries: (cpu-index, qom-path, thread-id, props).
pub fn cpus_fast(qmp: &mut QmpClient) -> Vec<(u64, String, i64, Value)> {
    let list = qmp.ok("query-cpus-fast", json!({}));
    list.as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            (
                c["cpu-index"].as_u64().expect("cpu-index"),
                c["qom-path"].as_str().expect("qom-path").to_string(),
                c["thread-id"].as_i64().expect("thread-id"),
                c["props"].clone(),
            )
        })
        .collect()
}

/// The shared scenario, from a running guest (of a VM with [`MEMORY`]): READY, a CPU
/// added with an id and one without, each coming online and running work, and what the
/// queries and events say after each. Returns the thread ids query-cpus-fast gave the
/// added CPUs.
pub fn scenario(vm: &mut Vm, qmp: &mut QmpClient) -> Vec<i64> {
    ready(vm);
    // The guest left the legacy mode before READY: every possible CPU is listed, after
    // the memory slots.
    expect_ospm(qmp, &[]);
    // QEMU 7.2 -smp 1,maxcpus=4 (one socket of four cores, one thread each), newest first:
    // [{"props": {"core-id": 3, "thread-id": 0, "socket-id": 0}, "vcpus-count": 1,
    //   "type": "host-x86_64-cpu"}, ... core-id 2, core-id 1 alike ...,
    //  {"props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "vcpus-count": 1,
    //   "qom-path": "/machine/unattached/device[0]", "type": "host-x86_64-cpu"}]
    let list = qmp.ok("query-hotpluggable-cpus", json!({}));
    let cores: Vec<i64> = (list.as_array().expect("a list").iter())
        .map(|c| c["props"]["core-id"].as_i64().expect("core-id"))
        .collect();
    assert_eq!(cores, [3, 2, 1, 0], "{list}");
    for c in list.as_array().expect("a list") {
        assert_eq!(c["type"], "host-x86_64-cpu", "{c}");
        assert_eq!(c["vcpus-count"], 1, "{c}");
        assert_eq!(c["props"]["socket-id"], 0, "{c}");
        assert_eq!(c["props"]["thread-id"], 0, "{c}");
    }
    assert_eq!(
        list[3]["qom-path"], "/machine/unattached/device[0]",
        "{list}"
    );

    let core = add_first_free(qmp, Some("cpu1"));
    assert_eq!(core, 1);
    expect_added(vm, 1, 2);
    expect_ost_event(qmp, 1, Some("cpu1"));
    expect_ospm(qmp, &[(1, Some("cpu1"))]);
    let cpus = cpus_fast(qmp);
    assert_eq!(cpus.len(), 2, "{cpus:?}");
    assert_eq!(
        (cpus[1].0, cpus[1].1.as_str(), &cpus[1].3),
        (
            1,
            "/machine/peripheral/cpu1",
            &json!({"core-id": 1, "thread-id": 0, "socket-id": 0, "node-id": 0})
        ),
        "{cpus:?}"
    );
    let first = cpus[1].2;
    assert_ne!(first, cpus[0].2, "a thread of its own");
    let listed = qmp.ok("query-hotpluggable-cpus", json!({}));
    assert_eq!(
        listed[2]["qom-path"], "/machine/peripheral/cpu1",
        "{listed}"
    );

    let core = add_first_free(qmp, None);
    assert_eq!(core, 2);
    expect_added(vm, 2, 3);
    expect_ost_event(qmp, 2, None);
    expect_ospm(qmp, &[(1, Some("cpu1")), (2, None)]);
    let cpus = cpus_fast(qmp);
    assert_eq!(
        cpus.iter().map(|c| c.0).collect::<Vec<_>>(),
        [0, 1, 2],
        "{cpus:?}"
    );
    assert!(
        cpus[2].1.starts_with("/machine/peripheral-anon/device["),
        "{cpus:?}"
    );
    // Both keep running their rounds.
    expect_round(vm, 1);
    expect_round(vm, 2);
    vec![first, cpus[2].2]
}

/// No guest line said something went wrong.
pub fn no_errors(vm: &Vm) {
    let transcript = vm.transcript();
    assert!(
        !transcript.contains("GUEST ERROR") && !transcript.contains("GUEST PANIC"),
        "{transcript}"
    );
}
