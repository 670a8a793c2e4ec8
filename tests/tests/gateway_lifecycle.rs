//! The VM's life through the gateway: events around stop/cont/system_reset/
//! system_powerdown, -S, HMP, and every way of ending (quit, SIGTERM, guest power-off,
//! a vmm-core crash), after which no process or socket remains.

use std::time::Duration;

use flotilla_tests::qmp::{Gateway, QmpClient};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

const BOOT: Duration = Duration::from_secs(20);

fn status(c: &mut QmpClient) -> String {
    c.ok("query-status", json!({}))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn stop_cont_and_their_events() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    let mut watcher = gw.client();
    c.ok("stop", json!({}));
    // The event is out before the reply.
    assert!(
        c.events.iter().any(|e| e["event"] == "STOP"),
        "{:?}",
        c.events
    );
    c.event("STOP");
    assert_eq!(status(&mut c), "paused");
    assert_eq!(c.ok("query-status", json!({}))["running"], false);
    // stop when stopped: no second event.
    c.ok("stop", json!({}));
    c.ok("cont", json!({}));
    c.event("RESUME");
    assert_eq!(status(&mut c), "running");
    watcher.event("STOP");
    watcher.event("RESUME");
    assert_eq!(watcher.ok("query-status", json!({}))["status"], "running");
    assert!(
        c.events.iter().all(|e| e["event"] != "STOP"),
        "{:?}",
        c.events
    );
}

#[test]
fn system_reset_reboots_the_guest() {
    let mut gw = Gateway::start(&[]);
    gw.vm.expect_prefix("GUEST READY", BOOT);
    let mut c = gw.client();
    c.ok("system_reset", json!({}));
    let e = c.event("RESET");
    assert_eq!(
        e["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    assert!(e["timestamp"]["seconds"].as_u64().unwrap() > 0);
    gw.vm.expect_prefix("GUEST READY", BOOT);
    assert_eq!(status(&mut c), "running");
    // A reset while paused keeps the VM paused.
    c.ok("stop", json!({}));
    c.ok("system_reset", json!({}));
    c.event("RESET");
    assert_eq!(status(&mut c), "paused");
}

#[test]
fn guest_reset_is_reported_as_the_guests() {
    let gw = Gateway::start_with(1, "scenario=reboot", &[]);
    let mut c = gw.client();
    let e = c.event("RESET");
    assert_eq!(e["data"], json!({"guest": true, "reason": "guest-reset"}));
}

#[test]
fn system_powerdown_powers_the_idle_guest_off() {
    let mut gw = Gateway::start(&[]);
    gw.vm.expect_prefix("GUEST IDLE", BOOT);
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    c.ok("system_powerdown", json!({}));
    c.event("POWERDOWN");
    let e = c.event("SHUTDOWN");
    assert_eq!(
        e["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    gw.vm.expect_prefix("GUEST POWER BUTTON", BOOT);
    gw.expect_clean_exit(vmm, true);
}

#[test]
fn start_paused_until_cont() {
    let mut gw = Gateway::start(&["-S"]);
    let mut c = gw.client();
    assert_eq!(
        c.ok("query-status", json!({})),
        json!({"running": false, "singlestep": false, "status": "prelaunch"})
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !gw.vm.transcript().contains("GUEST READY"),
        "guest ran while prelaunch"
    );
    c.ok("cont", json!({}));
    c.event("RESUME");
    gw.vm.expect_prefix("GUEST READY", BOOT);
    assert_eq!(status(&mut c), "running");
}

#[test]
fn human_monitor_commands() {
    let gw = Gateway::start(&["--name", "hmp-vm"]);
    let mut c = gw.client();
    let hmp = |c: &mut QmpClient, line: &str| {
        c.ok("human-monitor-command", json!({"command-line": line}))
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(hmp(&mut c, "info status"), "VM status: running\r\n");
    assert_eq!(hmp(&mut c, "info kvm"), "kvm support: enabled\r\n");
    assert_eq!(hmp(&mut c, "info name"), "hmp-vm\r\n");
    assert!(hmp(&mut c, "info version").starts_with("7.2.0"));
    let cpus = hmp(&mut c, "info cpus");
    assert!(cpus.starts_with("* CPU #0: thread_id="), "{cpus}");
    assert!(cpus.contains("\r\n  CPU #1: thread_id="), "{cpus}");
    assert_eq!(hmp(&mut c, "stop"), "");
    c.event("STOP");
    assert_eq!(hmp(&mut c, "info status"), "VM status: paused\r\n");
    assert_eq!(hmp(&mut c, "cont"), "");
    c.event("RESUME");
    assert_eq!(hmp(&mut c, "bogus"), "unknown command: 'bogus'\r\n");
    assert_eq!(
        hmp(&mut c, "info bogus"),
        "unknown command: 'info bogus'\r\n"
    );
    assert_eq!(hmp(&mut c, ""), "");
    assert!(hmp(&mut c, "info").contains("info status"));
    assert_eq!(
        c.err(
            "human-monitor-command",
            json!({"command-line": "info status", "cpu-index": 7})
        )
        .1,
        "Parameter 'cpu-index' expects a CPU number"
    );
    assert!(hmp(&mut c, "info cpus").starts_with("* CPU #0"));
    let r = c.ok(
        "human-monitor-command",
        json!({"command-line": "info cpus", "cpu-index": 1}),
    );
    assert!(r.as_str().unwrap().contains("* CPU #1"), "{r}");
}

#[test]
fn quit_replies_then_shuts_down_and_cleans_up() {
    let mut gw = Gateway::start(&[]);
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    let mut other = gw.client();
    c.send_raw(br#"{"execute":"quit","id":"bye"}"#);
    // The reply comes first, then the event, as with QEMU.
    let first = c.read();
    assert_eq!(first, json!({"return": {}, "id": "bye"}));
    let e = c.event("SHUTDOWN");
    assert_eq!(
        e["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_eq!(other.event("SHUTDOWN")["data"]["reason"], "host-qmp-quit");
    gw.expect_clean_exit(vmm, true);
}

#[test]
fn hmp_quit_ends_the_vm_too() {
    let mut gw = Gateway::start(&[]);
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    assert_eq!(
        c.ok("human-monitor-command", json!({"command-line": "quit"})),
        json!("")
    );
    c.event("SHUTDOWN");
    gw.expect_clean_exit(vmm, true);
}

#[test]
fn sigterm_shuts_down_in_order() {
    let mut gw = Gateway::start(&[]);
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    gw.vm.signal(Signal::SIGTERM);
    assert_eq!(
        c.event("SHUTDOWN")["data"],
        json!({"guest": false, "reason": "host-signal"})
    );
    gw.expect_clean_exit(vmm, true);
    assert!(gw.vm.transcript().contains("terminating on signal 15"));
}

#[test]
fn sigint_too() {
    let mut gw = Gateway::start(&[]);
    let vmm = gw.vmm_pid();
    gw.vm.signal(Signal::SIGINT);
    gw.expect_clean_exit(vmm, true);
}

#[test]
fn guest_poweroff_ends_everything() {
    let mut gw = Gateway::start_with(2, "scenario=poweroff", &[]);
    // The guest may power off before we connect; the gateway ends by itself either way.
    let vmm_gone_check = gw.vm.pid();
    gw.vm.expect_prefix("GUEST POWEROFF", BOOT);
    let status = gw.vm.wait(BOOT);
    assert!(status.success(), "{}", gw.vm.transcript());
    assert!(!gw.qmp.exists());
    // No vmm-core left: none of the gateway's children survive it.
    let children = std::fs::read_to_string(format!(
        "/proc/{vmm_gone_check}/task/{vmm_gone_check}/children"
    ))
    .unwrap_or_default();
    assert!(children.trim().is_empty(), "children left: {children}");
}

#[test]
fn vmm_core_crash_is_reported_and_cleaned_up() {
    let mut gw = Gateway::start(&[]);
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    kill(Pid::from_raw(vmm), Signal::SIGKILL).unwrap();
    assert_eq!(
        c.event("SHUTDOWN")["data"],
        json!({"guest": false, "reason": "host-error"})
    );
    gw.expect_clean_exit(vmm, false);
    assert!(
        gw.vm.transcript().contains("vmm-core exited unexpectedly"),
        "{}",
        gw.vm.transcript()
    );
}

#[test]
fn vcpu_failure_stops_the_vm_in_internal_error() {
    let mut gw = Gateway::start_with(1, "scenario=triple-fault", &[]);
    gw.vm.expect_prefix("GUEST TRIPLE FAULT", BOOT);
    let mut c = gw.client();
    let deadline = std::time::Instant::now() + BOOT;
    while status(&mut c) != "internal-error" {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            gw.vm.transcript()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        c.err("cont", json!({})).1,
        "Resetting the Virtual Machine is required"
    );
    // A reset brings it back to prelaunch; cont boots again.
    c.ok("system_reset", json!({}));
    assert_eq!(status(&mut c), "prelaunch");
    c.ok("cont", json!({}));
    gw.vm.expect_prefix("GUEST TRIPLE FAULT", BOOT);
}

#[test]
fn startup_errors_are_one_line_and_leave_nothing() {
    use flotilla_tests::{bin, run_to_end, TempDir};
    let dir = TempDir::new("gw-bad");
    let sock = dir.path().join("q.sock");
    let mut cmd = std::process::Command::new(bin("qmp-gateway"));
    cmd.args(["--kernel", "/nonexistent/kernel", "--qmp"])
        .arg(&sock);
    let (status, _, err) = run_to_end(cmd, BOOT);
    assert!(!status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("kernel /nonexistent/kernel: No such file"),
        "{err}"
    );
    assert!(!sock.exists());
    let not_a_kernel = dir.path().join("k");
    std::fs::write(&not_a_kernel, "text").unwrap();
    let mut cmd = std::process::Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(&not_a_kernel)
        .arg("--qmp")
        .arg(&sock);
    let (status, _, err) = run_to_end(cmd, BOOT);
    assert!(!status.success());
    assert!(
        err.contains("neither an ELF file nor a Linux bzImage"),
        "{err}"
    );
    assert!(!sock.exists());
    let mut cmd = std::process::Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(&not_a_kernel)
        .args(["--uuid", "nope"]);
    let (status, _, err) = run_to_end(cmd, BOOT);
    assert!(!status.success() && err.contains("--uuid nope"), "{err}");
}

#[test]
fn a_live_qmp_socket_is_never_taken_over() {
    use flotilla_tests::{bin, run_to_end};
    let gw = Gateway::start(&[]);
    let mut cmd = std::process::Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(flotilla_tests::test_guest())
        .arg("--qmp")
        .arg(&gw.qmp);
    let (status, _, err) = run_to_end(cmd, BOOT);
    assert!(!status.success());
    assert!(err.contains("in use by another process"), "{err}");
    // The first gateway is untouched.
    assert_eq!(
        gw.client().ok("query-status", json!({}))["status"],
        "running"
    );
}
