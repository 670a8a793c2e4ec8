//! Commands for devices the VM does not have answer as QEMU 7.2 does without them; and
//! inject-nmi reaches the guest.

use std::time::Duration;

use flotilla_tests::qmp::Gateway;
use serde_json::json;

#[test]
fn absent_devices_answer_like_qemu() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    assert_eq!(c.ok("query-vnc", json!({})), json!({"enabled": false}));
    assert_eq!(
        c.ok("query-spice", json!({})),
        json!({"enabled": false, "migrated": false, "mouse-mode": "client"})
    );
    let errors = [
        (
            "screendump",
            json!({"filename": "/tmp/x.ppm"}),
            "GenericError",
            "There is no console to take a screendump from",
        ),
        (
            "set_password",
            json!({"protocol": "vnc", "password": "x"}),
            "GenericError",
            "Could not set password",
        ),
        (
            "set_password",
            json!({"protocol": "spice", "password": "x"}),
            "DeviceNotActive",
            "SPICE is not in use",
        ),
        (
            "expire_password",
            json!({"protocol": "vnc", "time": "now"}),
            "GenericError",
            "Could not set password expire time",
        ),
        (
            "client_migrate_info",
            json!({"protocol": "spice", "hostname": "h"}),
            "DeviceNotActive",
            "SPICE is not in use",
        ),
        (
            "balloon",
            json!({"value": 1}),
            "DeviceNotActive",
            "No balloon device has been activated",
        ),
        (
            "query-balloon",
            json!({}),
            "DeviceNotActive",
            "No balloon device has been activated",
        ),
        (
            "query-rocker",
            json!({"name": "sw1"}),
            "GenericError",
            "rocker sw1 not found",
        ),
        (
            "query-rocker-ports",
            json!({"name": "sw1"}),
            "GenericError",
            "rocker sw1 not found",
        ),
        (
            "input-send-event",
            json!({"events": [{"type": "key", "data": {"down": true, "key": {"type": "qcode", "data": "a"}}}]}),
            "GenericError",
            "Input handler not found for event type key",
        ),
        (
            "query-hotpluggable-cpus",
            json!({}),
            "GenericError",
            "The feature 'query-hotpluggable-cpus' is not enabled",
        ),
    ];
    for (command, args, class, desc) in errors {
        assert_eq!(
            c.err(command, args),
            (class.to_string(), desc.to_string()),
            "{command}"
        );
    }
    for command in [
        "query-tpm",
        "query-tpm-models",
        "query-tpm-types",
        "query-mice",
        "query-memory-devices",
        "query-iothreads",
        // An ACPI PM device with no hotplug slots (QEMU with its ACPI device: []).
        "query-acpi-ospm-status",
    ] {
        assert_eq!(c.ok(command, json!({})), json!([]), "{command}");
    }
    assert_eq!(c.ok("rtc-reset-reinjection", json!({})), json!({}));
    assert_eq!(
        c.err("set_password", json!({"protocol": "rdp", "password": "x"}))
            .1,
        "Parameter 'protocol' does not accept value 'rdp'"
    );
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
