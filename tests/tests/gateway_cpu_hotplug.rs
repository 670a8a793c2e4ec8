//! vCPU hotplug through the gateway (`--cpus 1 --max-cpus 4`), the same scenario as
//! qemu_guest_cpu_hotplug.rs runs on QEMU 7.2 pc (tests/src/cpu_hotplug.rs): device_add of
//! CPUs as query-hotpluggable-cpus describes them, then cpu-add, each coming online in the
//! test guest (ACPI CPU hotplug, INIT/SIPI) and running work; their threads are vmm-core's;
//! a reset, a live upgrade of vmm-core and a migration keep them (a destination without
//! them is refused); query-acpi-ospm-status and ACPI_DEVICE_OST show the guest's _OST for
//! each (and a live upgrade keeps them). device_add's refusals, query-hotpluggable-cpus and
//! query-acpi-ospm-status before the guest left the legacy CPU hotplug mode are compared
//! with a live QEMU 7.2 pc (-smp 1,maxcpus=4, -S).

use std::time::Duration;

use flotilla_tests::cpu_hotplug::{self, expect_added, expect_ospm, expect_round, CMDLINE};
use flotilla_tests::migration::{destination, free_port, status, wait_for_status, wait_migration};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{error_of, Gateway, QmpClient};
use serde_json::{json, Value};

const MAX: &str = "4";

fn start(extra: &[&str]) -> Gateway {
    let mut args = vec!["--max-cpus", MAX];
    args.extend_from_slice(extra);
    Gateway::start_with(1, CMDLINE, &args)
}

/// The host thread ids of `pid`'s threads and their names.
fn threads(pid: i32) -> Vec<(i64, String)> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    dir.filter_map(|e| {
        let tid: i64 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
        Some((tid, comm.trim().to_string()))
    })
    .collect()
}

/// query-cpus-fast's (cpu-index, qom-path) pairs, in its order.
fn listed(c: &mut QmpClient) -> Vec<(u64, String)> {
    cpu_hotplug::cpus_fast(c)
        .into_iter()
        .map(|(index, path, _, _)| (index, path))
        .collect()
}

#[test]
fn added_cpus_come_online_run_work_and_survive_a_reset_and_an_upgrade() {
    let mut gw = start(&["--memory", cpu_hotplug::MEMORY]);
    let mut c = gw.client();
    let added_threads = cpu_hotplug::scenario(&mut gw.vm, &mut c);
    // Their threads are vmm-core's own, named after their vCPU.
    let vmm = gw.vmm_pid();
    let tasks = threads(vmm);
    for (tid, name) in added_threads.iter().zip(["vcpu1", "vcpu2"]) {
        assert!(
            tasks.contains(&(*tid, name.to_string())),
            "{tid} ({name}) not among vmm-core's threads {tasks:?}"
        );
    }

    // cpu-add, the spec's: QEMU 4.x's words for what it refuses.
    for (id, err) in [
        (3i64, ""),
        (3, "Unable to add CPU: 3, it already exists"),
        (0, "Unable to add CPU: 0, it already exists"),
        (4, "Unable to add CPU: 4, max allowed: 3"),
        (1 << 40, "Unable to add CPU: 1099511627776, max allowed: 3"),
        (-1, "Invalid CPU id: -1"),
    ] {
        let reply = c.execute("cpu-add", json!({"id": id}));
        match err {
            "" => assert_eq!(reply["return"], json!({}), "{reply}"),
            err => assert_eq!(error_of(&reply), ("GenericError".into(), err.into())),
        }
    }
    expect_added(&mut gw.vm, 3, 4);
    // cpu-add's CPU has no id.
    cpu_hotplug::expect_ost_event(&mut c, 3, None);
    let reported = [(1, Some("cpu1")), (2, None), (3, None)];
    expect_ospm(&mut c, &reported);
    assert_eq!(
        listed(&mut c),
        [
            (0, "/machine/unattached/device[0]".to_string()),
            (1, "/machine/peripheral/cpu1".into()),
            (2, "/machine/peripheral-anon/device[0]".into()),
            (3, "/machine/unattached/device[3]".into()),
        ]
    );
    // The old query-cpus samples every vCPU (the added ones halted between rounds).
    let cpus = c.ok("query-cpus", json!({}));
    let indexes: Vec<i64> = (cpus.as_array().expect("a list").iter())
        .map(|c| c["CPU"].as_i64().expect("CPU"))
        .collect();
    assert_eq!(indexes, [0, 1, 2, 3], "{cpus}");
    // cpu (QMP) does nothing; HMP cpu knows the vCPUs there are.
    assert_eq!(c.ok("cpu", json!({"index": 3})), json!({}));
    let hmp = |c: &mut QmpClient, line: &str| {
        c.ok("human-monitor-command", json!({"command-line": line}))
    };
    assert_eq!(hmp(&mut c, "cpu 3"), json!(""));
    assert_eq!(hmp(&mut c, "cpu 4"), json!("invalid CPU index\r\n"));
    let info = hmp(&mut c, "info cpus");
    assert!(
        info.as_str()
            .is_some_and(|t| t.contains("  CPU #3: thread_id=")),
        "{info}"
    );
    // No CPU leaves (QEMU's words for a machine that does not take the request).
    assert_eq!(
        c.err("device_del", json!({"id": "cpu1"})),
        (
            "GenericError".into(),
            "acpi: device unplug request for not supported device type: host-x86_64-cpu".into()
        )
    );
    for apic in 1..=3 {
        expect_round(&mut gw.vm, apic);
    }

    // A live upgrade: the new vmm-core has the added vCPUs, running as they were.
    let before = listed(&mut c);
    let done = c.ok("__io.flotilla_vmm-upgrade", json!({}));
    let new_vmm = done["pid"].as_i64().expect("pid") as i32;
    assert_ne!(new_vmm, vmm);
    assert_eq!(listed(&mut c), before, "the same vCPUs, in the same order");
    expect_ospm(&mut c, &reported);
    let tasks = threads(new_vmm);
    for (index, _, tid, _) in cpu_hotplug::cpus_fast(&mut c) {
        assert!(
            tasks.contains(&(tid, format!("vcpu{index}"))),
            "vCPU {index}'s thread {tid} is not the new vmm-core's: {tasks:?}"
        );
    }
    let mut last = [0; 4];
    for apic in 1..=3 {
        last[apic as usize] = expect_round(&mut gw.vm, apic);
    }
    for apic in 1..=3 {
        let round = expect_round(&mut gw.vm, apic);
        assert!(round > last[apic as usize], "apic={apic} round {round}");
    }

    // A reset: the added vCPUs stay, enabled in the MADT, started at boot.
    c.ok("system_reset", json!({}));
    let ready = gw
        .vm
        .expect_prefix("GUEST CPU HOTPLUG READY", cpu_hotplug::BOOT);
    assert_eq!(
        ready,
        "GUEST CPU HOTPLUG READY cpus=4 possible=4 port=0xaf00 gpe=2"
    );
    assert_eq!(listed(&mut c), before);
    cpu_hotplug::no_errors(&gw.vm);
}

/// The same device_add of a CPU, and the queries, on QEMU 7.2 pc and on the gateway, both
/// stopped (-S): every answer the same, but the thread ids.
#[test]
fn device_add_of_a_cpu_answers_as_qemu() {
    let qemu = Qemu::pc_guest(CMDLINE, &["-smp", "1,maxcpus=4"]);
    let mut q = qemu.client();
    let gw = start(&["-S"]);
    let mut g = gw.client();
    let cpu = |more: Value| {
        let mut args = json!({"driver": "host-x86_64-cpu"});
        for (k, v) in more.as_object().expect("an object") {
            args[k] = v.clone();
        }
        args
    };
    let at = |core: u32| json!({"socket-id": 0, "core-id": core, "thread-id": 0});
    let exchanges: Vec<(&str, Value)> = vec![
        ("query-hotpluggable-cpus", json!({})),
        // The guest has not left the legacy CPU hotplug mode: no CPU is listed.
        ("query-acpi-ospm-status", json!({})),
        ("device_add", cpu(at(0))),
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 5, "thread-id": 0})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": 1, "core-id": 1, "thread-id": 0})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": -1, "core-id": 1, "thread-id": 0})),
        ),
        ("device_add", cpu(json!({"socket-id": 0, "core-id": 1}))),
        ("device_add", cpu(json!({"socket-id": 0}))),
        ("device_add", cpu(json!({}))),
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 1, "thread-id": 1})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "die-id": 1})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "node-id": 1})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": "x", "core-id": 1, "thread-id": 0})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": 0.5, "core-id": 1, "thread-id": 0})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": true, "core-id": 1, "thread-id": 0})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": 2147483648u64, "core-id": 1, "thread-id": 0})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": null, "core-id": 1, "thread-id": 0})),
        ),
        ("device_add", cpu(json!({"apic-id": 7}))),
        ("device_add", cpu(json!({"apic-id": -1}))),
        ("device_add", cpu(json!({"apic-id": "x"}))),
        ("device_add", cpu(json!({"apic-id": 3, "core-id": 2}))),
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "foo": 1})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "bus": "pci.0"})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "bus": "pci.7"})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "id": "1bad"})),
        ),
        (
            "device_add",
            json!({"driver": "qemu64-x86_64-cpu", "socket-id": 0, "core-id": 1, "thread-id": 0}),
        ),
        (
            "device_add",
            json!({"driver": "max-x86_64-cpu", "socket-id": 0, "core-id": 1, "thread-id": 0}),
        ),
        (
            "device_add",
            json!({"driver": "x86_64-cpu", "socket-id": 0, "core-id": 1, "thread-id": 0}),
        ),
        (
            "device_add",
            json!({"driver": "host", "socket-id": 0, "core-id": 1, "thread-id": 0}),
        ),
        // Added, with an id; then again, and its id again.
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 1, "thread-id": 0, "id": "cpu1"})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": "0", "core-id": "0x1", "thread-id": "0", "id": "cpu1b"})),
        ),
        (
            "device_add",
            cpu(json!({"socket-id": 0, "core-id": 2, "thread-id": 0, "id": "cpu1"})),
        ),
        // Anonymous, by APIC ID (its path's number counts QEMU's anonymous devices).
        ("device_add", cpu(json!({"apic-id": 3, "node-id": 0}))),
        ("query-hotpluggable-cpus", json!({})),
        ("query-acpi-ospm-status", json!({})),
        ("device_del", json!({"id": "cpu1"})),
    ];
    let same = |g: &mut QmpClient, q: &mut QmpClient, exchanges: Vec<(&str, Value)>| {
        for (command, args) in exchanges {
            let ours = g.execute(command, args.clone());
            let theirs = q.execute(command, args.clone());
            assert_eq!(ours, theirs, "{command} {args}");
        }
    };
    same(&mut g, &mut q, exchanges);
    // The anonymous one by its path; then every CPU there: nothing more can be added.
    let listed = q.ok("query-hotpluggable-cpus", json!({}));
    let anon = listed[0]["qom-path"].clone();
    assert!(
        anon.as_str()
            .is_some_and(|p| p.starts_with("/machine/peripheral-anon/device[")),
        "{listed}"
    );
    same(
        &mut g,
        &mut q,
        vec![
            ("device_del", json!({"id": anon})),
            ("device_add", cpu(at(2))),
            ("device_add", cpu(at(2))),
            ("query-hotpluggable-cpus", json!({})),
            (
                "human-monitor-command",
                json!({"command-line": "info hotpluggable-cpus"}),
            ),
        ],
    );
    // query-cpus-fast but the thread ids (QEMU lists them as added, and so do we).
    let without_threads = |c: &mut QmpClient| {
        let mut cpus = c.ok("query-cpus-fast", json!({}));
        for cpu in cpus.as_array_mut().expect("a list") {
            cpu["thread-id"] = json!(0);
        }
        cpus
    };
    assert_eq!(without_threads(&mut g), without_threads(&mut q));
    let order = |c: &mut QmpClient| {
        (cpu_hotplug::cpus_fast(c).into_iter())
            .map(|cpu| cpu.0)
            .collect::<Vec<_>>()
    };
    // In the order they came, as QEMU lists them: also after a live upgrade, whose
    // vmm-core lists them by index.
    assert_eq!(order(&mut g), [0, 1, 3, 2]);
    g.ok("__io.flotilla_vmm-upgrade", json!({}));
    assert_eq!(without_threads(&mut g), without_threads(&mut q));
}

/// A destination without the source's added vCPU is refused (the shape counts the vCPUs
/// there); one given it before the migration (cpu-add while it waits) takes the VM, and
/// the vCPU runs work there.
#[test]
fn a_migration_needs_the_added_cpus_at_the_destination() {
    let mut src = start(&[]);
    let mut s = src.client();
    cpu_hotplug::ready(&mut src.vm);
    s.ok("cpu-add", json!({"id": 1}));
    expect_added(&mut src.vm, 1, 2);
    let refused = format!("tcp:127.0.0.1:{}", free_port());
    let mut without = destination(1, CMDLINE, &refused, &["--max-cpus", MAX]);
    let _w = without.client();
    s.ok("migrate", json!({"uri": refused}));
    let info = wait_migration(&mut s, &["failed", "completed"]);
    assert_eq!(
        info["error-desc"],
        "the destination refused the migration: the source has 2 vCPUs, this VM 1",
        "{info}"
    );
    assert_eq!(status(&mut s), "running");
    without.vm.wait(Duration::from_secs(30));

    let mut with = destination(1, CMDLINE, "defer", &["--max-cpus", MAX]);
    let mut d = with.client();
    d.ok("cpu-add", json!({"id": 1}));
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    d.ok("migrate-incoming", json!({"uri": uri}));
    s.ok("migrate", json!({"uri": uri}));
    let info = wait_migration(&mut s, &["failed", "completed"]);
    assert_eq!(info["status"], "completed", "{info}");
    wait_for_status(&mut d, "running");
    let cpus = cpu_hotplug::cpus_fast(&mut d);
    assert_eq!(cpus.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 1]);
    // The vCPU runs on at the destination (its periodic rounds, counted on from the
    // source's).
    let first = expect_round(&mut with.vm, 1);
    assert!(expect_round(&mut with.vm, 1) > first);
    cpu_hotplug::no_errors(&with.vm);
}
