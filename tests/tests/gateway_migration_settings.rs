//! The migration settings against the gateway alone, where QEMU 7.2 cannot be the
//! oracle: the spec's older commands it no longer has (migrate-set-cache-size,
//! query-migrate-cache-size, migrate_set_speed, migrate_set_downtime), and the
//! capabilities it takes that our migration does not honour. The rest is compared with
//! QEMU in qmp_oracle.rs.

use flotilla_tests::qmp::{Gateway, QmpClient};
use qmp_gateway::migration::settings::{Capability, SUPPORTED_CAPABILITIES};
use serde_json::{json, Value};

fn parameter(c: &mut QmpClient, name: &str) -> Value {
    c.ok("query-migrate-parameters", json!({}))[name].clone()
}

fn generic(desc: &str) -> (String, String) {
    ("GenericError".into(), desc.into())
}

#[test]
fn the_specs_older_commands_set_the_parameters() {
    let gw = Gateway::start(&["-S"]);
    let mut c = gw.client();
    let xbzrle =
        "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size";
    assert_eq!(c.ok("query-migrate-cache-size", json!({})), json!(64 << 20));
    c.ok("migrate-set-cache-size", json!({"value": 512 << 20}));
    assert_eq!(
        c.ok("query-migrate-cache-size", json!({})),
        json!(512 << 20)
    );
    assert_eq!(parameter(&mut c, "xbzrle-cache-size"), json!(512 << 20));
    // Checked as xbzrle-cache-size is: nothing is rounded, nothing changes.
    for bad in [json!(1000), json!(0), json!(2048), json!(-4096)] {
        assert_eq!(
            c.err("migrate-set-cache-size", json!({"value": bad})),
            generic(xbzrle)
        );
    }
    assert_eq!(
        c.ok("query-migrate-cache-size", json!({})),
        json!(512 << 20)
    );
    c.ok("migrate-set-parameters", json!({"xbzrle-cache-size": 4096}));
    assert_eq!(c.ok("query-migrate-cache-size", json!({})), json!(4096));

    c.ok("migrate_set_speed", json!({"value": 1024}));
    assert_eq!(parameter(&mut c, "max-bandwidth"), json!(1024));
    let hmp = c.ok(
        "human-monitor-command",
        json!({"command-line": "info migrate_parameters"}),
    );
    assert!(
        hmp.as_str()
            .is_some_and(|t| t.contains("max-bandwidth: 1024 bytes/second\r\n")),
        "{hmp}"
    );
    // An int64 into the uint64 parameter, as QEMU did.
    c.ok("migrate_set_speed", json!({"value": -1}));
    assert_eq!(parameter(&mut c, "max-bandwidth"), json!(u64::MAX));

    for (seconds, ms) in [(json!(0.1), 100), (json!(2), 2000), (json!(0.0005), 0)] {
        c.ok("migrate_set_downtime", json!({"value": seconds}));
        assert_eq!(parameter(&mut c, "downtime-limit"), json!(ms), "{seconds}");
    }
    c.ok("migrate_set_downtime", json!({"value": 2000}));
    assert_eq!(parameter(&mut c, "downtime-limit"), json!(2_000_000));
    for bad in [json!(2000.5), json!(-0.5)] {
        assert_eq!(
            c.err("migrate_set_downtime", json!({"value": bad})),
            generic(
                "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000 seconds"
            )
        );
    }
    assert_eq!(parameter(&mut c, "downtime-limit"), json!(2_000_000));
    assert_eq!(
        c.err("migrate_set_downtime", json!({"value": "1"})),
        generic("Invalid parameter type for 'value', expected: number")
    );
    assert_eq!(
        c.err("migrate_set_speed", json!({"value": 1.5})),
        generic("Invalid parameter type for 'value', expected: integer")
    );
}

#[test]
fn capabilities_our_migration_does_not_honour_are_refused_and_nothing_changes() {
    let gw = Gateway::start(&["-S"]);
    let mut c = gw.client();
    let caps = |list: &[(&str, bool)]| {
        let list: Vec<Value> = list
            .iter()
            .map(|(name, state)| json!({"capability": name, "state": state}))
            .collect();
        json!({"capabilities": list})
    };
    let state = |c: &mut QmpClient, name: &str| {
        let all = c.ok("query-migrate-capabilities", json!({}));
        all.as_array()
            .and_then(|all| all.iter().find(|s| s["capability"] == name))
            .map(|s| s["state"].clone())
            .unwrap_or_else(|| panic!("{name} not in {all}"))
    };
    for capability in Capability::ALL {
        let name = capability.name();
        if SUPPORTED_CAPABILITIES.contains(capability) {
            continue;
        }
        assert_eq!(
            c.err("migrate-set-capabilities", caps(&[(name, true)])),
            generic(&format!("Migration capability '{name}' is not supported")),
        );
        // With one we honour, in the same command: neither is taken.
        assert_eq!(
            c.err(
                "migrate-set-capabilities",
                caps(&[("events", true), (name, true)])
            ),
            generic(&format!("Migration capability '{name}' is not supported")),
        );
        assert_eq!(state(&mut c, "events"), json!(false), "{name}");
        assert_eq!(state(&mut c, name), json!(false));
        // Off is always taken, and so is on then off in one command.
        c.ok("migrate-set-capabilities", caps(&[(name, false)]));
        c.ok(
            "migrate-set-capabilities",
            caps(&[(name, true), (name, false)]),
        );
    }
    c.ok("migrate-set-capabilities", caps(&[("events", true)]));
    assert_eq!(state(&mut c, "events"), json!(true));
    let hmp = c.ok(
        "human-monitor-command",
        json!({"command-line": "info migrate_capabilities"}),
    );
    assert!(
        hmp.as_str()
            .is_some_and(|t| t.contains("\r\nevents: on\r\n") && t.starts_with("xbzrle: off\r\n")),
        "{hmp}"
    );
}
