//! Live migration between two gateways on this machine: the test guest moves from a
//! source to a destination started with --incoming, and carries on there.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::migration::{count, expect_mig, free_port, wait_for_status, Reflector};
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{bin, test_guest, TempDir};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(20);
const MIGRATION: Duration = Duration::from_secs(60);
/// Between two progress lines of the migrate-dirty scenario.
const PROGRESS: Duration = Duration::from_secs(15);

/// A destination for a source started with `start_with(cpus, cmdline, extra)`.
fn destination(cpus: usize, cmdline: &str, incoming: &str, extra: &[&str]) -> Gateway {
    let dir = TempDir::new("destination");
    let qmp = dir.path().join("qmp.sock");
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--memory", "128", "--cpus", &cpus.to_string()])
        .args(["--cmdline", cmdline])
        .arg("--qmp")
        .arg(&qmp)
        .args(["--incoming", incoming])
        .args(extra);
    Gateway::spawn(cmd, dir, qmp)
}

fn status(c: &mut QmpClient) -> String {
    c.ok("query-status", json!({}))["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Polls query-migrate until its status is one of `ends`; returns the last answer.
fn wait_migration(c: &mut QmpClient, ends: &[&str]) -> Value {
    let deadline = Instant::now() + MIGRATION;
    loop {
        let info = c.ok("query-migrate", json!({}));
        if let Some(s) = info["status"].as_str() {
            if ends.contains(&s) {
                return info;
            }
        }
        assert!(Instant::now() < deadline, "migration did not end: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_idle_guest_moves_and_answers_its_power_button_there() {
    let mut src = Gateway::start_with(2, "", &[]);
    src.vm.expect_prefix("GUEST IDLE", BOOT);
    let port = free_port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let mut dst = destination(2, "", &uri, &[]);
    let mut d = dst.client();
    assert_eq!(status(&mut d), "inmigrate");
    let mut s = src.client();
    s.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    s.ok("migrate", json!({"uri": uri}));
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(
        info["status"],
        "completed",
        "{info}\n{}",
        src.vm.transcript()
    );
    assert_eq!(status(&mut s), "postmigrate");
    let dinfo = wait_migration(&mut d, &["completed", "failed"]);
    assert_eq!(dinfo["status"], "completed", "{dinfo}");
    assert_eq!(status(&mut d), "running");
    eprintln!("source: {info}");
    // The guest now lives at the destination: its power button works there.
    d.ok("system_powerdown", json!({}));
    dst.vm.expect_prefix("GUEST POWER BUTTON", BOOT);
    dst.expect_clean_exit(0, true);
}

/// The options of a gateway whose guest dirties memory, writes its disk and echoes
/// frames through `reflector`.
fn dirty_guest_options(image: &std::path::Path, reflector: &Reflector) -> Vec<String> {
    vec![
        "--drive".into(),
        format!("file={},format=raw,id=d0", image.display()),
        "--netdev".into(),
        format!(
            "socket,id=n0,udp=127.0.0.1:{},localaddr=127.0.0.1:0",
            reflector.port
        ),
        "--device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ]
}

const DIRTY: &str = "scenario=migrate-dirty dirty-mib=32 mig-blk=1 mig-net=1";

#[test]
fn a_guest_that_dirties_memory_and_does_io_moves_intact() {
    let dir = TempDir::new("migration-dirty");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(8 << 20))
        .expect("image");
    let reflector = Reflector::start(None);
    let opts = dirty_guest_options(&image, &reflector);
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let mut src = Gateway::start_with(2, DIRTY, &opts);
    expect_mig(&mut src.vm, "GUEST MIG ready", BOOT);
    expect_mig(&mut src.vm, "GUEST MIG blk", PROGRESS);
    expect_mig(&mut src.vm, "GUEST MIG net", PROGRESS);
    let last_round = count(
        &expect_mig(&mut src.vm, "GUEST MIG round", PROGRESS),
        "round",
    );

    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let mut dst = destination(2, DIRTY, &uri, &opts);
    let mut d = dst.client();
    let mut s = src.client();
    s.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
    s.ok("migrate", json!({"uri": uri}));
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(
        info["status"],
        "completed",
        "{info}\n{}",
        src.vm.transcript()
    );
    eprintln!("source: {info}");
    assert!(
        info["ram"]["dirty-sync-count"].as_u64() >= Some(2),
        "{info}"
    );
    assert!(info["ram"]["normal"].as_u64() >= Some(32 * 256), "{info}");
    assert_eq!(status(&mut s), "postmigrate");
    wait_for_status(&mut d, "running");
    // The events said so, in QEMU's order.
    let statuses: Vec<String> =
        std::iter::from_fn(|| s.event_within("MIGRATION", Duration::from_millis(100)))
            .map(|e| e["data"]["status"].as_str().unwrap_or_default().to_string())
            .collect();
    assert_eq!(
        statuses,
        ["setup", "active", "device", "completed"],
        "{statuses:?}"
    );

    // At the destination the guest goes on: rounds past the source's, its disk and its
    // NIC, and every page it checks holds what it wrote last (an error line fails).
    let round_there = count(
        &expect_mig(&mut dst.vm, "GUEST MIG round", PROGRESS),
        "round",
    );
    assert!(
        round_there > last_round,
        "round {round_there} after {last_round}"
    );
    for _ in 0..3 {
        expect_mig(&mut dst.vm, "GUEST MIG round", PROGRESS);
    }
    expect_mig(&mut dst.vm, "GUEST MIG blk", PROGRESS);
    expect_mig(&mut dst.vm, "GUEST MIG net", PROGRESS);
    assert!(
        !dst.vm.transcript().contains("GUEST READY"),
        "the guest booted again at the destination:\n{}",
        dst.vm.transcript()
    );
    assert_eq!(reflector.senders(), 2, "both NICs should have sent frames");
}
