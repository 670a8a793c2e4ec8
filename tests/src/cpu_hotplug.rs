//! The CPU hotplug scenario, run the same way on QEMU 7.2 (`-M pc -smp 1,maxcpus=4`) and on
//! Flotilla (`--cpus 1 --max-cpus 4`): the test guest's `cpu-hotplug` scenario
//! (tests/guest/README.md), CPUs added with device_add as query-hotpluggable-cpus describes
//! them, the guest's lines (the CPU came online and ran work), query-cpus-fast and
//! query-hotpluggable-cpus after each add. What each VMM answered is kept, for a test to
//! compare one with the other.

use std::time::Duration;

use serde_json::{json, Value};

use crate::qmp::QmpClient;
use crate::Vm;

/// The guest's command line: the scenario, every AP running the work loop again every
/// half second.
pub const CMDLINE: &str = "scenario=cpu-hotplug cpu-work-ms=500";
/// Possible CPUs (QEMU's maxcpus, the gateway's --max-cpus); one is there at boot.
pub const MAX_CPUS: usize = 4;
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

/// The shared scenario, from a running guest: READY, a CPU added with an id and one
/// without, each coming online and running work, and what the queries say after each.
/// Returns the thread ids query-cpus-fast gave the added CPUs.
pub fn scenario(vm: &mut Vm, qmp: &mut QmpClient) -> Vec<i64> {
    ready(vm);
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
    let cpus = cpus_fast(qmp);
    assert_eq!(cpus.len(), 2, "{cpus:?}");
    assert_eq!(
        (cpus[1].0, cpus[1].1.as_str(), &cpus[1].3),
        (
            1,
            "/machine/peripheral/cpu1",
            &json!({"core-id": 1, "thread-id": 0, "socket-id": 0})
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
