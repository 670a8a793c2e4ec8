//! Commands for devices the VM does not have: their answers (which qmp_oracle compares
//! with QEMU 7.2's, in a VM that has not run) stay the same once the guest runs, and
//! change nothing in it; and inject-nmi reaches the guest.

use std::time::Duration;

use flotilla_tests::qmp::{Gateway, QmpClient};
use serde_json::{json, Value};

#[test]
fn absent_devices_answer_the_same_paused_or_running() {
    let mut gw = Gateway::start(&["-S"]);
    let mut c = gw.client();
    let commands = [
        ("query-vnc", json!({})),
        ("query-spice", json!({})),
        ("screendump", json!({"filename": "/nonexistent/x.ppm"})),
        ("set_password", json!({"protocol": "vnc", "password": "x"})),
        (
            "set_password",
            json!({"protocol": "spice", "password": "x"}),
        ),
        ("expire_password", json!({"protocol": "vnc", "time": "now"})),
        (
            "client_migrate_info",
            json!({"protocol": "spice", "hostname": "h"}),
        ),
        ("balloon", json!({"value": 1 << 20})),
        ("query-balloon", json!({})),
        ("query-rocker", json!({"name": "sw1"})),
        ("query-rocker-ports", json!({"name": "sw1"})),
        ("query-hotpluggable-cpus", json!({})),
        ("query-tpm", json!({})),
        ("query-tpm-models", json!({})),
        ("query-tpm-types", json!({})),
        ("query-memory-devices", json!({})),
        ("query-iothreads", json!({})),
        ("query-acpi-ospm-status", json!({})),
        ("rtc-reset-reinjection", json!({})),
    ];
    let answers = |c: &mut QmpClient| -> Vec<Value> {
        commands
            .iter()
            .map(|(command, args)| c.execute(command, args.clone()))
            .collect()
    };
    let paused = answers(&mut c);
    c.ok("cont", json!({}));
    c.event("RESUME");
    gw.vm.expect_prefix("GUEST IDLE", Duration::from_secs(20));
    let running = answers(&mut c);
    for (((command, args), p), r) in commands.iter().zip(&paused).zip(&running) {
        assert_eq!(p, r, "{command} {args}: paused, then running");
    }
    // None of them touched the VM's run state.
    assert_eq!(c.ok("query-status", json!({}))["status"], "running");
}

#[test]
fn inject_nmi_reaches_every_vcpu() {
    let mut gw = Gateway::start(&[]);
    gw.vm.expect_prefix("GUEST IDLE", Duration::from_secs(20));
    let mut c = gw.client();
    assert_eq!(c.ok("inject-nmi", json!({})), json!({}));
    // The test guest reports an NMI as exception 2, once per CPU.
    for _ in 0..2 {
        gw.vm
            .expect_line("an NMI report", Duration::from_secs(20), |l| {
                l.starts_with("GUEST PANIC exception=2 ")
            });
    }
}

/// The commands docs/qmp-coverage.md marks "not built" (QEMU has them only when built with
/// a feature Flotilla lacks: query-vnc needs VNC) answer CommandNotFound, in the words QEMU
/// 7.2 answers a command it does not have: here asked of QEMU by a name it lacks.
#[test]
fn commands_of_features_not_built_are_not_found_as_in_qemu() {
    let doc = std::fs::read_to_string(flotilla_tests::repo_root().join("docs/qmp-coverage.md"))
        .expect("docs/qmp-coverage.md");
    let names: Vec<String> = (doc.lines())
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[2] == "not built").then(|| cells[1].to_string())
        })
        .collect();
    assert_eq!(names, ["query-vnc"], "the doc's \"not built\" rows");
    let qemu = flotilla_tests::qemu::Qemu::pc_guest("", &[]);
    let mut theirs = QmpClient::negotiated(&qemu.qmp);
    let gw = Gateway::start(&["-S"]);
    let mut ours = gw.client();
    for name in names {
        let lacking = format!("{name}-not-in-qemu");
        let expected = theirs.execute(&lacking, json!({}));
        let expected = serde_json::to_string(&expected)
            .expect("json")
            .replace(&lacking, &name);
        let got = serde_json::to_string(&ours.execute(&name, json!({}))).expect("json");
        assert_eq!(
            got, expected,
            "{name}: ours, then QEMU's for a command it lacks"
        );
    }
}
