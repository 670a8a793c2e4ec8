//! The VM's life through the gateway: events around stop/cont/system_reset/
//! system_powerdown, -S, HMP, and every way of ending (quit, SIGTERM, guest power-off,
//! a vmm-core crash), after which no process or socket remains; the device state saved
//! to a file and loaded back (xen-save-devices-state, xen-load-devices-state).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::procs::{descendants, ProcId};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{wait_for_socket, Gateway, QmpClient};
use flotilla_tests::{bin, run_to_end, test_guest, TempDir, Vm};
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
    // Not one guest instruction ran: the boot CPU is still at the kernel's entry point
    // and the other at the reset vector, where the loader and the reset put them.
    let entry = elf_entry(&test_guest());
    assert_eq!(
        cpu_pcs(&mut c),
        [entry, RESET_VECTOR_IP],
        "guest ran while prelaunch"
    );
    assert!(
        !gw.vm.transcript().contains("GUEST READY"),
        "guest ran while prelaunch"
    );
    c.ok("cont", json!({}));
    c.event("RESUME");
    gw.vm.expect_prefix("GUEST READY", BOOT);
    assert_eq!(status(&mut c), "running");
    // The check above can see a guest that ran: both CPUs have moved on now.
    let pcs = cpu_pcs(&mut c);
    assert!(pcs[0] != entry && pcs[1] != RESET_VECTOR_IP, "{pcs:?}");
}

/// Where an application processor waits for its startup IPI: IP 0xfff0 of the reset
/// state (CS base 0xffff0000).
const RESET_VECTOR_IP: u64 = 0xfff0;

/// The entry point of an ELF64 file (e_entry, at byte 24).
fn elf_entry(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{}", path.display());
    u64::from_le_bytes(bytes[24..32].try_into().unwrap())
}

/// Each vCPU's program counter, in CPU order (query-cpus, which samples the vCPUs).
fn cpu_pcs(c: &mut QmpClient) -> Vec<u64> {
    c.ok("query-cpus", json!({}))
        .as_array()
        .expect("query-cpus returns a list")
        .iter()
        .map(|cpu| cpu["pc"].as_u64().expect("pc"))
        .collect()
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

/// The header's incompatible features of qcow2 `image` (bit 0: dirty, refcounts not
/// written back).
fn qcow2_incompatible_features(image: &Path) -> u64 {
    let header = std::fs::read(image).expect("the image");
    u64::from_be_bytes(header[72..80].try_into().expect("a qcow2 header"))
}

/// SIGTERM while the guest writes its disk (a qcow2 image with lazy refcounts, so the
/// dirty bit is set while it is served, and a persistent bitmap, in use meanwhile): the
/// gateway ends every process, and the block daemon has left the image clean before it
/// went, as QEMU leaves it (refcounts written, dirty bit clear, the bitmap stored).
#[test]
fn sigterm_while_the_guest_writes_leaves_its_qcow2_clean() {
    let dir = TempDir::new("gw-sigterm-qcow2");
    let image = dir.path().join("d0.qcow2");
    let path = image.display().to_string();
    flotilla_tests::blk::qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        &path,
        "16M",
    ]);
    let mut gw = flotilla_tests::blk::verifying_gateway(
        0x0c1e_5e77,
        &format!("file={path},format=qcow2,id=d0"),
    );
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    c.ok(
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "b0", "persistent": true}),
    );
    c.ok("cont", json!({}));
    // The first round allocated the image's clusters; the next one writes them again.
    gw.vm.expect_prefix("GUEST BLK ROUND 1 OK", BOOT);
    assert_eq!(
        qcow2_incompatible_features(&image) & 1,
        1,
        "dirty while served"
    );
    gw.vm.signal(Signal::SIGTERM);
    gw.expect_clean_exit(vmm, true);
    assert_eq!(
        qcow2_incompatible_features(&image),
        0,
        "the dirty bit is left"
    );
    let check = flotilla_tests::blk::qemu_img_ok(&["check", &path]);
    assert!(check.contains("No errors were found"), "{check}");
    let info: serde_json::Value = serde_json::from_str(&flotilla_tests::blk::qemu_img_ok(&[
        "info",
        "--output=json",
        &path,
    ]))
    .expect("qemu-img's JSON");
    assert_eq!(
        info["format-specific"]["data"]["bitmaps"],
        json!([{"name": "b0", "granularity": 65536, "flags": ["auto"]}]),
        "{info:#}"
    );
}

#[test]
fn sigint_too() {
    let mut gw = Gateway::start(&[]);
    let vmm = gw.vmm_pid();
    gw.vm.signal(Signal::SIGINT);
    gw.expect_clean_exit(vmm, true);
}

/// Every process the gateway started, while it lives: vmm-core, the block daemon and the
/// net daemon (and anything they started), waiting until all three are there.
fn gateway_processes(gw: &Gateway) -> Vec<ProcId> {
    let deadline = Instant::now() + BOOT;
    loop {
        let found = descendants(gw.vm.pid());
        let names: BTreeSet<String> = found
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{}/comm", p.pid)).ok())
            .map(|n| n.trim().to_string())
            .collect();
        if ["vmm-core", "block-daemon", "net-daemon"]
            .iter()
            .all(|n| names.contains(*n))
        {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's processes: {names:?}\n{}",
            gw.vm.transcript()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn guest_poweroff_ends_everything() {
    let dir = TempDir::new("gw-poweroff");
    let image = dir.path().join("d0.img");
    flotilla_tests::blk::empty_image(&image, 1 << 20);
    let drive = format!("file={},format=raw,id=d0", image.display());
    // Held at prelaunch until every process the gateway starts is recorded (by pid and
    // start time, so that a reused pid is not taken for one of them).
    let mut gw = Gateway::start_with(
        2,
        "scenario=poweroff",
        &[
            "-S",
            "--drive",
            &drive,
            "--netdev",
            "socket,id=n0,udp=127.0.0.1:47651,localaddr=127.0.0.1:47650",
            "--device",
            "virtio-net-pci,netdev=n0,id=nic0",
        ],
    );
    let started = gateway_processes(&gw);
    gw.client().ok("cont", json!({}));
    gw.vm.expect_prefix("GUEST POWEROFF", BOOT);
    let status = gw.vm.wait(BOOT);
    assert!(status.success(), "{}", gw.vm.transcript());
    assert!(!gw.qmp.exists());
    // The gateway waited for each of them: none outlives it, nor is left for init to
    // reap (a zombie whose parent is gone).
    let left: Vec<String> = started
        .iter()
        .filter(|p| p.exists())
        .map(ToString::to_string)
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
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

/// qmp-gateway with the idle test guest on `qmp`, its runtime directories under
/// `runtime` (XDG_RUNTIME_DIR), its console on a Unix socket `console`.
fn gateway_in_runtime(runtime: &Path, qmp: &Path, console: &Path) -> Vm {
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.env("XDG_RUNTIME_DIR", runtime)
        .arg("--kernel")
        .arg(test_guest())
        .args(["--memory", "128", "--cpus", "1", "--serial"])
        .arg(format!("unix:{}", console.display()))
        .arg("--qmp")
        .arg(qmp);
    let vm = Vm::spawn(cmd);
    wait_for_socket(qmp, &vm);
    // A dead gateway's socket may still be there until this one replaces it.
    let deadline = Instant::now() + BOOT;
    while std::os::unix::net::UnixStream::connect(qmp).is_err() {
        assert!(
            Instant::now() < deadline,
            "nobody listens on {}:\n{}",
            qmp.display(),
            vm.transcript()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    vm
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Issue 11: SIGKILL of the gateway left its QMP and console sockets and its runtime
/// directories behind. The next gateway started with the same paths takes the sockets
/// nobody listens on and removes the runtime directories whose gateway is gone, and
/// nothing else.
#[test]
fn a_sigkilled_gateways_leftovers_are_cleaned_by_the_next_one() {
    let runtime = TempDir::new("xdg");
    let dir = TempDir::new("gw-killed");
    let (qmp, console) = (dir.path().join("qmp.sock"), dir.path().join("console.sock"));
    // Not a gateway's: a directory that is not ours, and one of a gateway still alive.
    let foreign = runtime.path().join("flotilla-1-0");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("keep"), b"").unwrap();

    let mut first = gateway_in_runtime(runtime.path(), &qmp, &console);
    QmpClient::negotiated(&qmp).ok("query-status", json!({}));
    let theirs: BTreeSet<String> = entries(runtime.path())
        .into_iter()
        .filter(|e| e.starts_with(&format!("flotilla-{}-", first.pid())))
        .collect();
    assert_eq!(theirs.len(), 2, "{:?}", entries(runtime.path()));
    first.signal(Signal::SIGKILL);
    first.wait(BOOT);
    assert!(qmp.exists() && console.exists());
    assert!(theirs.iter().all(|d| runtime.path().join(d).exists()));

    let live_dir = TempDir::new("gw-live");
    let mut live = gateway_in_runtime(
        runtime.path(),
        &live_dir.path().join("qmp.sock"),
        &live_dir.path().join("console.sock"),
    );
    QmpClient::negotiated(&live_dir.path().join("qmp.sock")).ok("query-status", json!({}));
    let live_dirs: BTreeSet<String> = entries(runtime.path())
        .into_iter()
        .filter(|e| e.starts_with(&format!("flotilla-{}-", live.pid())))
        .collect();
    assert_eq!(live_dirs.len(), 2);

    let mut second = gateway_in_runtime(runtime.path(), &qmp, &console);
    let mut c = QmpClient::negotiated(&qmp);
    assert_eq!(c.ok("query-status", json!({}))["status"], "running");
    let now = entries(runtime.path());
    for gone in &theirs {
        assert!(!now.contains(gone), "{gone} left behind: {now:?}");
    }
    for kept in live_dirs.iter().chain([&"flotilla-1-0".to_string()]) {
        assert!(now.contains(kept), "{kept} was removed: {now:?}");
    }
    assert!(foreign.join("keep").exists());
    // The console socket is the new gateway's.
    std::os::unix::net::UnixStream::connect(&console).expect("the new console socket");
    second.terminate(BOOT);
    live.terminate(BOOT);
    assert_eq!(
        entries(runtime.path()),
        BTreeSet::from(["flotilla-1-0".to_string()])
    );
}

/// The one error line a bad command line gets, how long it took, and what the
/// runtime directory held afterwards.
fn refused_start(runtime: &Path, args: &[&str]) -> (String, Duration, BTreeSet<String>) {
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.env("XDG_RUNTIME_DIR", runtime)
        .arg("--kernel")
        .arg(test_guest())
        .args(args);
    let started = Instant::now();
    let (status, out, err) = run_to_end(cmd, BOOT);
    let took = started.elapsed();
    assert!(!status.success(), "{args:?} started");
    assert_eq!(out, "", "{args:?}");
    (err, took, entries(runtime))
}

/// Issue 11: a bad drive or a duplicate id took 5 s and printed "vmm-core did not exit;
/// killing it", because vmm-core (and the daemons of the drives before it) started
/// before the rest was checked. Now the whole command line is checked first: one line,
/// at once, and nothing was started.
#[test]
fn bad_command_lines_fail_at_once_with_one_line() {
    let runtime = TempDir::new("xdg-bad");
    let dir = TempDir::new("gw-bad-cmdline");
    let image = |name: &str| {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        p.display().to_string()
    };
    let (a, b) = (image("a.img"), image("b.img"));
    let missing = dir.path().join("missing.img").display().to_string();
    let drive = |file: &str, rest: &str| format!("file={file},format=raw,{rest}");
    let udp = |id: &str, port: u16| {
        format!(
            "socket,id={id},udp=127.0.0.1:{},localaddr=127.0.0.1:{port}",
            port + 1
        )
    };
    // A port taken by someone else.
    let taken = std::net::UdpSocket::bind("127.0.0.1:47420").unwrap();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--drive".into(), drive(&missing, "id=d0")],
            format!("drive d0: Could not open '{missing}': No such file or directory"),
        ),
        (
            vec![
                "--drive".into(),
                drive(&a, "id=d0"),
                "--drive".into(),
                drive(&b, "id=d0"),
            ],
            "drive id d0 is used twice".into(),
        ),
        (
            vec![
                "--drive".into(),
                drive(&a, "id=d0"),
                "--drive".into(),
                drive(&missing, "id=d1"),
            ],
            format!("drive d1: Could not open '{missing}': No such file or directory"),
        ),
        (
            vec![
                "--drive".into(),
                drive(&a, "id=d0,node-name=n"),
                "--drive".into(),
                drive(&b, "id=d1,node-name=n"),
            ],
            "drive d1: Duplicate nodes with node-name='n'".into(),
        ),
        (
            vec!["--drive".into(), drive(&a, "id=d0,node-name=1n")],
            "drive d0: Invalid node-name: '1n'".into(),
        ),
        (
            vec![
                "--drive".into(),
                drive(&a, "id=d0"),
                "--netdev".into(),
                udp("n0", 47410),
                "--netdev".into(),
                udp("n0", 47412),
            ],
            "netdev id n0 is used twice".into(),
        ),
        (
            vec![
                "--netdev".into(),
                udp("n0", 47410),
                "--netdev".into(),
                udp("n1", 47412),
                "--device".into(),
                "virtio-net-pci,netdev=n0,id=nic".into(),
                "--device".into(),
                "virtio-net-pci,netdev=n1,id=nic".into(),
            ],
            "--device: Duplicate ID 'nic' for device".into(),
        ),
        (
            vec![
                "--drive".into(),
                drive(&a, "id=d0"),
                "--device".into(),
                "virtio-net-pci,netdev=zz".into(),
            ],
            "Property 'virtio-net-device.netdev' can't find value 'zz'".into(),
        ),
        (
            vec![
                "--netdev".into(),
                udp("n0", 47410),
                "--device".into(),
                "virtio-net-pci,netdev=n0".into(),
                "--device".into(),
                "virtio-net-pci,netdev=n0".into(),
            ],
            "Property 'virtio-net-device.netdev' can't take value 'n0', it's in use".into(),
        ),
        (
            vec![
                "--drive".into(),
                drive(&a, "id=d0"),
                "--netdev".into(),
                udp("n0", 47420),
            ],
            "netdev n0: can't bind 127.0.0.1:47420 / connect to 127.0.0.1:47421: Address \
             already in use (os error 98)"
                .into(),
        ),
        (
            vec!["--cpus".into(), "2".into(), "--max-cpus".into(), "1".into()],
            "--max-cpus 1 is below --cpus 2".into(),
        ),
    ];
    for (args, want) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (err, took, left) = refused_start(runtime.path(), &args);
        assert_eq!(err, format!("qmp-gateway: error: {want}"), "{args:?}");
        assert!(took < Duration::from_secs(2), "{args:?} took {took:?}");
        assert!(left.is_empty(), "{args:?} started something: {left:?}");
    }
    drop(taken);
}

/// vCPU threads of a stopped VM wait without burning host CPU (two parked vCPUs once
/// woke each other forever, two host CPUs busy while the VM was stopped).
#[test]
fn a_stopped_vm_leaves_the_host_cpus_alone() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    let tids: Vec<i64> = c
        .ok("query-cpus-fast", json!({}))
        .as_array()
        .expect("cpus")
        .iter()
        .map(|v| v["thread-id"].as_i64().expect("thread-id"))
        .collect();
    assert_eq!(tids.len(), 2);
    let ticks = || -> u64 {
        tids.iter()
            .map(|t| {
                let stat = std::fs::read_to_string(format!("/proc/{t}/stat")).expect("stat");
                let fields: Vec<u64> = stat
                    .rsplit_once(')')
                    .expect("comm")
                    .1
                    .split_whitespace()
                    .skip(11)
                    .take(2)
                    .map(|f| f.parse().expect("ticks"))
                    .collect();
                fields.iter().sum::<u64>()
            })
            .sum()
    };
    c.ok("stop", json!({}));
    let before = ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = ticks() - before;
    // A busy thread accounts 100 ticks a second; parked ones none.
    assert!(used < 10, "the stopped vCPUs used {used} ticks in a second");
}

/// xen-save-devices-state and xen-load-devices-state: QEMU 7.2's answers to bad
/// arguments, to a load while the VM runs and to files that cannot be opened (compared
/// with a live QEMU); files that are not a device state of this VM's shape refused; and
/// round trips: the state saved at prelaunch, loaded into the booted VM, takes its vCPUs
/// back to where the loader put them, the state saved when it was idle brings them back,
/// and the guest runs on from there (its power button still works).
#[test]
fn device_state_save_and_load() {
    let mut gw = Gateway::start(&["-S"]);
    let mut c = gw.client();
    let dir = TempDir::new("device-state");
    let path = |name: &str| dir.path().join(name).display().to_string();
    c.ok(
        "xen-save-devices-state",
        json!({"filename": path("prelaunch")}),
    );
    assert_eq!(status(&mut c), "prelaunch");
    c.ok("cont", json!({}));
    c.event("RESUME");
    gw.vm.expect_prefix("GUEST IDLE", BOOT);

    let qemu = Qemu::try_start(&[]).expect("QEMU starts");
    let mut q = qemu.client();
    // QEMU's own file (a QEMU_VM_FILE_MAGIC stream), for the refusals below.
    q.ok("xen-save-devices-state", json!({"filename": path("qemu")}));
    q.ok("cont", json!({}));
    let missing = path("missing/state");
    let bad = [
        ("xen-save-devices-state", json!({})),
        ("xen-save-devices-state", json!({"filename": 1})),
        (
            "xen-save-devices-state",
            json!({"filename": path("s"), "live": "yes"}),
        ),
        (
            "xen-save-devices-state",
            json!({"filename": path("s"), "extra": 1}),
        ),
        ("xen-save-devices-state", json!({"filename": missing})),
        ("xen-save-devices-state", json!({"filename": path("")})),
        ("xen-save-devices-state", json!({"filename": ""})),
        ("xen-load-devices-state", json!({})),
        ("xen-load-devices-state", json!({"filename": 1})),
        (
            "xen-load-devices-state",
            json!({"filename": path("prelaunch"), "live": true}),
        ),
        // Both run: refused before anything is opened.
        ("xen-load-devices-state", json!({"filename": missing})),
        (
            "xen-load-devices-state",
            json!({"filename": path("prelaunch")}),
        ),
    ];
    for (command, args) in &bad {
        let want = q.err(command, args.clone());
        assert_eq!(c.err(command, args.clone()), want, "{command} {args}");
    }
    q.ok("stop", json!({}));
    c.ok("stop", json!({}));
    c.event("STOP");
    let args = json!({"filename": missing});
    let want = q.err("xen-load-devices-state", args.clone());
    assert_eq!(c.err("xen-load-devices-state", args), want);
    drop(q);
    drop(qemu);

    // Files that are not a device state, or one of a VM of another shape: refused, and
    // the VM is left as it was (the round trips below).
    std::fs::write(path("garbage"), [0x51u8; 100]).unwrap();
    std::fs::write(path("empty"), []).unwrap();
    for name in ["garbage", "empty", "qemu"] {
        let file = path(name);
        assert_eq!(
            c.err("xen-load-devices-state", json!({"filename": file})),
            (
                "GenericError".to_string(),
                format!(
                    "Cannot load the device state from {file}: it is not a Flotilla device \
                     state (one written by xen-save-devices-state)"
                )
            )
        );
    }
    let other = Gateway::start(&["-S", "--memory", "64"]);
    other
        .client()
        .ok("xen-save-devices-state", json!({"filename": path("other")}));
    drop(other);
    // The same shape, vCPUs with a feature off (--cpu; one KVM lets the VMM clear on
    // VMX/SVM and kvm-pvm alike): their CPUID would change under the guest, so the
    // state is refused (as a migration's destination refuses it).
    let other = Gateway::start(&["-S", "--cpu", "host,lahf-lm=off"]);
    other
        .client()
        .ok("xen-save-devices-state", json!({"filename": path("cpu")}));
    drop(other);
    let (_, desc) = c.err("xen-load-devices-state", json!({"filename": path("cpu")}));
    let want = format!(
        "Cannot load the device state from {}: the source VM differs from this one: the \
         vCPUs' CPUID differs: leaf 0x80000001.0 is ",
        path("cpu")
    );
    assert!(desc.starts_with(&want), "{desc}");
    // The same memory and vCPUs, another PCI device: refused once the vCPUs went in.
    let other = Gateway::start(&["-S", "--device", "virtio-balloon-pci,id=b"]);
    other.client().ok(
        "xen-save-devices-state",
        json!({"filename": path("balloon")}),
    );
    drop(other);
    let (_, desc) = c.err("xen-load-devices-state", json!({"filename": path("other")}));
    assert_eq!(
        desc,
        format!(
            "Cannot load the device state from {}: the source VM differs from this one: \
             64 MiB of memory there, 128 MiB here",
            path("other")
        )
    );

    // A running VM stops for the save and runs on, as QEMU's.
    c.ok("cont", json!({}));
    c.event("RESUME");
    c.ok(
        "xen-save-devices-state",
        json!({"filename": path("running")}),
    );
    c.event("STOP");
    c.event("RESUME");
    assert_eq!(status(&mut c), "running");
    assert!(std::fs::metadata(path("running")).unwrap().len() > 0);

    c.ok("stop", json!({}));
    c.event("STOP");
    let idle = cpu_pcs(&mut c);
    c.ok("xen-save-devices-state", json!({"filename": path("idle")}));
    let (_, desc) = c.err(
        "xen-load-devices-state",
        json!({"filename": path("balloon")}),
    );
    assert!(
        desc.contains("devices: device at 0xcf8: the PCI devices differ"),
        "{desc}"
    );
    // All or nothing: the vCPUs are as they were.
    assert_eq!(cpu_pcs(&mut c), idle);
    c.ok(
        "xen-load-devices-state",
        json!({"filename": path("prelaunch")}),
    );
    assert_eq!(
        cpu_pcs(&mut c),
        [elf_entry(&test_guest()), RESET_VECTOR_IP],
        "the prelaunch state's vCPUs"
    );
    assert_eq!(status(&mut c), "paused");
    c.ok("xen-load-devices-state", json!({"filename": path("idle")}));
    assert_eq!(cpu_pcs(&mut c), idle);
    c.ok("cont", json!({}));
    c.event("RESUME");
    let vmm = gw.vmm_pid();
    c.ok("system_powerdown", json!({}));
    let e = c.event("SHUTDOWN");
    assert_eq!(
        e["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    gw.vm.expect_prefix("GUEST POWER BUTTON", BOOT);
    assert_eq!(gw.vm.transcript().matches("GUEST READY").count(), 1);
    gw.expect_clean_exit(vmm, true);
}
