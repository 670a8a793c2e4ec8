//! The balloon through the gateway: vmm-core's virtio-balloon under the test guest's
//! `balloon` scenario, the same scenario, commands and checks as on QEMU 7.2
//! (qemu_guest_balloon.rs, tests/src/balloon.rs), and the answers compared with a live
//! QEMU's; the host really gets the memory back (guest RAM's memfd shrinks as the balloon
//! inflates); bad PFNs from the guest are ignored (logged once, the rest of the request
//! taken, vmm-core running on); the refusals without a device, of the command line, and
//! HMP's as QEMU's; the balloon's slot is taken for device_add.

use std::net::UdpSocket;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::balloon::{self, Observed, Phase, CMDLINE, RAM};
use flotilla_tests::qemu::{qemu_refusal, Qemu};
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{bin, run_to_end, test_guest};
use serde_json::{json, Value};

const BALLOON: &str = "virtio-balloon-pci,id=balloon0";
const MIB: u64 = 1 << 20;

/// Bytes of guest RAM the host holds: the allocated blocks of vmm-core's guest-RAM memfd
/// (found among its fds by name).
fn guest_ram_held(vmm_pid: i32) -> u64 {
    let dir = format!("/proc/{vmm_pid}/fd");
    for fd in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let path = fd.unwrap().path();
        let Ok(target) = std::fs::read_link(&path) else {
            continue;
        };
        if target
            .to_string_lossy()
            .starts_with("/memfd:flotilla-guest-ram")
        {
            return std::fs::metadata(&path).unwrap().blocks() * 512;
        }
    }
    panic!("no guest-RAM memfd among vmm-core's fds ({dir})");
}

/// The same scenario on QEMU 7.2.
fn on_qemu() -> Observed {
    let mut qemu = Qemu::guest(CMDLINE, &["-device", BALLOON]);
    let mut qmp = qemu.client();
    qmp.ok("cont", json!({}));
    balloon::scenario(&mut qemu.vm, &mut qmp, |_| {})
}

/// A datagram netdev `n0` on two free loopback ports (nothing needs to answer).
fn netdev() -> String {
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return format!(
                "socket,id=n0,udp=127.0.0.1:{port},localaddr=127.0.0.1:{}",
                port + 1
            );
        }
    }
}

/// query-pci's entry for the balloon.
fn balloon_function(qmp: &mut QmpClient) -> Value {
    let buses = qmp.ok("query-pci", json!({}));
    buses[0]["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|f| f["qdev_id"] == "balloon0"))
        .cloned()
        .unwrap_or_else(|| panic!("no balloon0 in {buses}"))
}

#[test]
fn the_balloon_inflates_and_deflates_as_on_qemu() {
    let mut gw = Gateway::start_with(1, CMDLINE, &["--device", BALLOON]);
    let vmm_pid = gw.vmm_pid();
    let mut qmp = gw.client();
    let mut held = Vec::new();
    let seen = balloon::scenario(&mut gw.vm, &mut qmp, |phase| {
        held.push((phase, guest_ram_held(vmm_pid)))
    });
    // The host holds the guest's pool (written whole) at first, 32 MiB less while they
    // are in the balloon, and the pages again once the guest wrote them back.
    let [(Phase::Ready, ready), (Phase::Inflated, inflated), (Phase::Deflated, deflated)] =
        held[..]
    else {
        panic!("{held:?}");
    };
    assert!(ready > 100 * MIB, "the pool is held: {held:?}");
    assert!(
        inflated + 32 * MIB <= ready + MIB,
        "32 MiB given back to the host: {held:?}"
    );
    assert!(deflated + MIB >= ready, "and taken again: {held:?}");
    // The two PFNs that are not RAM: ignored, said once, vmm-core running on.
    let transcript = gw.vm.transcript();
    let warnings = transcript.matches("is not guest RAM").count();
    assert_eq!(warnings, 1, "{transcript}");
    assert!(transcript.contains("PFN 0xffffffff is not guest RAM"));
    assert_eq!(qmp.ok("query-status", json!({}))["status"], "running");
    // The device as query-pci shows it: QEMU's class (0x00ff, unclassified), our
    // modern-only id (0x1045; QEMU's transitional device is 0x1002).
    let function = balloon_function(&mut qmp);
    assert_eq!(function["class_info"], json!({"class": 255}), "{function}");
    assert_eq!(function["id"]["device"], 0x1045, "{function}");
    // The same exchanges as QEMU's, answer for answer; events of the same shape, each
    // step ending at the same value (how many there are depends on timing).
    let theirs = on_qemu();
    assert_eq!(seen.answers.len(), theirs.answers.len());
    for (ours, qemu) in seen.answers.iter().zip(&theirs.answers) {
        assert_eq!(ours, qemu, "ours, then QEMU's");
    }
    assert_eq!(seen.events.len(), theirs.events.len());
    for (ours, qemu) in seen.events.iter().zip(&theirs.events) {
        assert_eq!(ours.last(), qemu.last(), "{ours:?} / {qemu:?}");
    }
}

#[test]
fn without_a_balloon_and_hmp_refusals_as_qemu() {
    // No device: QEMU 7.2's texts (checked live in qemu_guest_balloon.rs, and again here).
    let gw = Gateway::start_with(1, "scenario=idle", &[]);
    let ours = balloon::without_balloon(&mut gw.client());
    let qemu = Qemu::try_start(&[]).expect("QEMU starts");
    assert_eq!(ours, balloon::without_balloon(&mut qemu.client()));
    drop(qemu);
    drop(gw);

    // With the device (no driver): HMP's argument errors and its int64 arithmetic.
    let netdev = netdev();
    let gw = Gateway::start_with(
        1,
        "scenario=idle",
        &["--device", BALLOON, "--netdev", &netdev],
    );
    let qemu = Qemu::try_start(&["-device", BALLOON]).expect("QEMU starts");
    let (mut ours, mut theirs) = (gw.client(), qemu.client());
    for line in [
        "balloon",
        "balloon -1",
        "balloon abc",
        "balloon 64M",
        "balloon 64 extra",
        "balloon 9999999999999999999999",
        "balloon 99999999999999",
        "balloon 8796093022208",
        "balloon 0",
        "balloon 0x40",
        "balloon 010",
        "info balloon",
    ] {
        let arguments = json!({"command-line": line});
        assert_eq!(
            ours.execute("human-monitor-command", arguments.clone()),
            theirs.execute("human-monitor-command", arguments),
            "{line}"
        );
    }
    for arguments in [
        json!({"value": 0}),
        json!({"value": -5}),
        json!({"value": 9_223_372_036_854_775_808u64}),
        json!({"value": "1"}),
        json!({}),
    ] {
        assert_eq!(
            ours.execute("balloon", arguments.clone()),
            theirs.execute("balloon", arguments.clone()),
            "{arguments}"
        );
    }
    // The balloon holds its slot on bus 0 (the first: there is nothing else): device_add
    // finds it taken, in QEMU 7.2's words (seen on its pc machine).
    let slot = balloon_function(&mut ours)["slot"].clone();
    assert_eq!(slot, 1);
    let (_, desc) = ours.err(
        "device_add",
        json!({"driver": "virtio-net-pci", "netdev": "n0", "addr": "1"}),
    );
    assert_eq!(
        desc,
        "PCI: slot 1 function 0 not available for virtio-net-pci, in use by \
         virtio-balloon-pci,id=balloon0"
    );
    // Before a driver wrote actual, all of RAM.
    assert_eq!(ours.ok("query-balloon", json!({})), json!({"actual": RAM}));
    assert_eq!(
        ours.ok("query-balloon", json!({})),
        theirs.ok("query-balloon", json!({}))
    );
}

#[test]
fn the_command_line_takes_one_balloon() {
    for (args, qemu_args) in [
        (
            vec!["--device", BALLOON, "--device", "virtio-balloon-pci"],
            vec!["-device", BALLOON, "-device", "virtio-balloon-pci"],
        ),
        (
            vec!["--device", "virtio-balloon-pci,foo=1"],
            vec!["-device", "virtio-balloon-pci,foo=1"],
        ),
        (
            vec!["--device", "virtio-balloon-pci,id=1b"],
            vec!["-device", "virtio-balloon-pci,id=1b"],
        ),
    ] {
        let mut cmd = Command::new(bin("qmp-gateway"));
        cmd.arg("--kernel").arg(test_guest()).args(&args);
        let (status, _out, err) = run_to_end(cmd, Duration::from_secs(30));
        assert!(!status.success(), "{args:?} started");
        let want = qemu_refusal(&qemu_args);
        assert!(err.contains(&want), "{args:?}: {err} (QEMU: {want})");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A live upgrade of vmm-core while pages are in the balloon: the new vmm-core's device
/// takes the state (target, actual, rings), answers query-balloon as the old one did,
/// and serves the guest's next requests (it deflates, and the pages it gets back were
/// dropped by the host); the guest RAM handed over stays as small as it was.
#[test]
fn a_vmm_upgrade_keeps_the_balloon() {
    let mut gw = Gateway::start_with(1, CMDLINE, &["--device", BALLOON]);
    let mut qmp = gw.client();
    let step = Duration::from_secs(30);
    let free = |line: &str| {
        line.rsplit("free_mib=")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let ready = gw.vm.expect_prefix("GUEST BALLOON READY", step);
    qmp.ok("balloon", json!({"value": RAM - 32 * MIB as i64}));
    let inflated = gw.vm.expect_prefix("GUEST BALLOON actual=8192", step);
    let actual = json!({"actual": RAM - 32 * MIB as i64});
    assert_eq!(qmp.ok("query-balloon", json!({})), actual);
    let held = guest_ram_held(gw.vmm_pid());
    let done = qmp.ok("__io.flotilla_vmm-upgrade", json!({}));
    let pid = done["pid"].as_u64().expect("pid") as i32;
    assert_eq!(gw.vmm_pid(), pid);
    assert_eq!(qmp.ok("query-balloon", json!({})), actual);
    assert!(
        guest_ram_held(pid) <= held + MIB,
        "the balloon's pages stay given back"
    );
    // The new device raises the interrupt and serves the deflate.
    qmp.ok("balloon", json!({"value": RAM}));
    let deflated = gw.vm.expect_prefix("GUEST BALLOON DEFLATED", step);
    assert!(deflated.ends_with("pages=8192 zeroed=8192"), "{deflated}");
    let back = gw.vm.expect_prefix("GUEST BALLOON actual=0", step);
    assert_eq!(free(&back), free(&ready), "{inflated}");
    assert_eq!(qmp.ok("query-balloon", json!({})), json!({"actual": RAM}));
}

/// A migration with pages in the balloon: the destination's device has the target and the
/// actual, its guest RAM holds none of the ballooned pages (the source sent them as
/// zeroes, which a destination does not write), and it serves the guest's deflate.
#[test]
fn a_migration_carries_the_balloon_and_not_its_pages() {
    use flotilla_tests::migration::{destination, expect_completed, free_port, wait_for_status};
    let step = Duration::from_secs(30);
    let mut source = Gateway::start_with(1, CMDLINE, &["--device", BALLOON]);
    let mut s = source.client();
    source.vm.expect_prefix("GUEST BALLOON READY", step);
    s.ok("balloon", json!({"value": RAM - 32 * MIB as i64}));
    source.vm.expect_prefix("GUEST BALLOON actual=8192", step);
    let held = guest_ram_held(source.vmm_pid());
    let port = free_port();
    let incoming = format!("tcp:127.0.0.1:{port}");
    let mut dest = destination(1, CMDLINE, &incoming, &["--device", BALLOON]);
    let mut d = dest.client();
    s.ok("migrate", json!({"uri": incoming}));
    expect_completed(&mut s, &source.vm);
    wait_for_status(&mut d, "running");
    let actual = json!({"actual": RAM - 32 * MIB as i64});
    assert_eq!(d.ok("query-balloon", json!({})), actual);
    let there = guest_ram_held(dest.vmm_pid());
    assert!(
        there <= held + MIB,
        "the destination holds {there} bytes of guest RAM, the source {held}"
    );
    d.ok("balloon", json!({"value": RAM}));
    let deflated = dest.vm.expect_prefix("GUEST BALLOON DEFLATED", step);
    assert!(deflated.ends_with("pages=8192 zeroed=8192"), "{deflated}");
    dest.vm.expect_prefix("GUEST BALLOON actual=0", step);
    assert_eq!(d.ok("query-balloon", json!({})), json!({"actual": RAM}));
}
