//! The gateway as libvirt probes an emulator (issue 18): `--machine none` (no VM: QMP
//! only) beside live QEMU 7.2 `-machine none`, and `--daemonize` with `--pidfile` beside
//! QEMU's -daemonize and -pidfile: the first process returns once QMP answers, the pid
//! file holds the daemon's pid and is locked against a second instance, a failing set-up
//! fails the first process with the error, and quit leaves no process and no file; and
//! `--no-shutdown` beside QEMU's -no-shutdown.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{bin, require_tool, run_to_end, test_guest, TempDir};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A daemon started by a test, ended (SIGTERM, by the pid in its pid file) if the test
/// did not end it.
struct Daemon {
    pid: i32,
}

impl Daemon {
    fn of(pidfile: &Path) -> Daemon {
        Daemon {
            pid: pid_in(pidfile),
        }
    }

    fn alive(&self) -> bool {
        // A zombie is gone for our purpose: it runs nothing (init reaps it).
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim()
                .starts_with('Z'),
            Err(_) => false,
        }
    }

    fn wait_gone(&self) {
        let deadline = Instant::now() + TIMEOUT;
        while self.alive() {
            assert!(Instant::now() < deadline, "pid {} still there", self.pid);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// The pid a pid file holds (a line of its own).
fn pid_in(pidfile: &Path) -> i32 {
    let text = std::fs::read_to_string(pidfile).expect("pid file");
    assert!(text.ends_with('\n'), "pid file {text:?}");
    text.trim().parse().expect("a pid in the pid file")
}

/// The gateway's command for `--machine none` with a QMP socket and pid file.
fn gateway_none(qmp: &Path, pidfile: &Path) -> Command {
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.args(["--machine", "none", "-S", "--daemonize", "--qmp"])
        .arg(qmp)
        .arg("--pidfile")
        .arg(pidfile);
    cmd
}

/// QEMU 7.2 as libvirt's probe starts it (-daemonize, -pidfile).
fn qemu_none(qmp: &Path, pidfile: &Path) -> Command {
    qemu_none_on(qmp, pidfile, "kvm:tcg")
}

/// The same with an accelerator list of its own (libvirt's second probe: tcg).
fn qemu_none_on(qmp: &Path, pidfile: &Path, accel: &str) -> Command {
    let mut cmd = Command::new(require_tool("qemu-system-x86_64", "qemu-system-x86"));
    cmd.args(["-S", "-no-user-config", "-nodefaults", "-nographic"])
        .arg("-machine")
        .arg(format!("none,accel={accel}"))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-pidfile")
        .arg(pidfile)
        .arg("-daemonize");
    cmd
}

/// What a refused start printed, after the program's name.
fn words(stderr: &str, program: &str) -> String {
    let line = (stderr.lines())
        .find(|l| l.starts_with(program))
        .unwrap_or_else(|| panic!("no {program} line in {stderr:?}"));
    line[program.len()..].to_string()
}

/// A daemon's session id and its standard fds' targets.
fn session_and_stdio(pid: i32) -> (i32, Vec<PathBuf>) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let sid = fields[3].parse().expect("session");
    let fds = (0..3)
        .map(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd"))
        .collect();
    (sid, fds)
}

/// The commands of libvirt 9.0's probe (/work/notes/libvirt/probe-commands.txt) that
/// do not depend on the machine, with their arguments.
fn probe_commands() -> Vec<(&'static str, Value)> {
    let mut list = vec![
        ("query-version", json!({})),
        ("query-target", json!({})),
        ("query-kvm", json!({})),
        ("qom-list-types", json!({})),
        ("query-machines", json!({})),
        ("query-cpu-definitions", json!({})),
        ("query-tpm-models", json!({})),
        ("query-tpm-types", json!({})),
        ("query-command-line-options", json!({})),
        ("query-migrate-capabilities", json!({})),
        ("query-sev-capabilities", json!({})),
        ("query-sgx-capabilities", json!({})),
    ];
    // Our devices (gateway_probe compares the others' refusals).
    for t in ["virtio-blk-pci", "virtio-net-pci", "virtio-balloon-pci"] {
        list.push(("device-list-properties", json!({"typename": t})));
    }
    for t in ["memory-backend-file", "memory-backend-memfd"] {
        list.push(("qom-list-properties", json!({"typename": t})));
    }
    list
}

/// The commands whose answer is the machine's (what a VM owns), each answered exactly
/// as QEMU's none machine answers: no vCPUs, no guest memory, no devices.
fn machine_commands(dir: &Path) -> Vec<(&'static str, Value)> {
    let file = |name: &str| format!("file:{}", dir.join(name).display());
    vec![
        ("query-status", json!({})),
        ("query-cpus-fast", json!({})),
        ("query-block", json!({})),
        ("query-pci", json!({})),
        ("query-blockstats", json!({})),
        ("query-named-block-nodes", json!({"flat": true})),
        ("query-memory-devices", json!({})),
        ("query-iothreads", json!({})),
        ("query-dump", json!({})),
        ("query-balloon", json!({})),
        ("balloon", json!({"value": 1 << 30})),
        ("query-acpi-ospm-status", json!({})),
        ("inject-nmi", json!({})),
        (
            "dump-guest-memory",
            json!({"paging": false, "protocol": file("core")}),
        ),
        (
            "memsave",
            json!({"val": 0, "size": 16, "filename": dir.join("m").display().to_string()}),
        ),
        ("qom-list", json!({"path": "/machine/unattached/device[0]"})),
        (
            "human-monitor-command",
            json!({"command-line": "info status"}),
        ),
        (
            "human-monitor-command",
            json!({"command-line": "info cpus"}),
        ),
    ]
}

/// The events a command brought, by name and data (timestamps left out).
fn events_of(c: &mut QmpClient) -> Vec<Value> {
    // A query's answer comes after every event the previous command raised.
    c.ok("query-target", json!({}));
    (c.events.drain(..))
        .map(|e| json!([e["event"], e.get("data").cloned().unwrap_or(Value::Null)]))
        .collect()
}

#[test]
fn machine_none_answers_as_qemus_none_machine() {
    let dir = TempDir::new("machine-none");
    let (qmp, pidfile) = (dir.path().join("qmp.sock"), dir.path().join("pid"));
    let (status, _, err) = run_to_end(gateway_none(&qmp, &pidfile), TIMEOUT);
    assert!(status.success(), "{err}");
    let _daemon = Daemon::of(&pidfile);
    // No vmm-core: the machine is the gateway's.
    let qemu = Qemu::machine_none();
    let (mut q, mut g) = (qemu.client(), QmpClient::negotiated(&qmp));

    for (command, args) in probe_commands() {
        let (qr, gr) = (
            q.execute(command, args.clone()),
            g.execute(command, args.clone()),
        );
        match qr.get("error") {
            Some(e) => assert_eq!(gr.get("error"), Some(e), "{command} {args}"),
            None => assert!(gr.get("return").is_some(), "{command} {args}: {gr}"),
        }
    }
    for (command, args) in machine_commands(dir.path()) {
        let (qr, gr) = (
            q.execute(command, args.clone()),
            g.execute(command, args.clone()),
        );
        assert_eq!(gr, qr, "{command} {args}: ours, then QEMU's");
    }
    // The run state as a VM's with no vCPUs: stop leaves prelaunch as it is, cont runs,
    // a reset of a stopped machine goes back to prelaunch.
    for (command, args) in [
        ("stop", json!({})),
        ("cont", json!({})),
        ("stop", json!({})),
        ("system_reset", json!({})),
        ("cont", json!({})),
        ("system_powerdown", json!({})),
    ] {
        assert_eq!(g.ok(command, args.clone()), q.ok(command, args.clone()));
        assert_eq!(events_of(&mut g), events_of(&mut q), "events of {command}");
        assert_eq!(
            g.ok("query-status", json!({})),
            q.ok("query-status", json!({})),
            "after {command}"
        );
    }
}

/// libvirt probes an emulator a second time with `-machine none,accel=tcg`, and fails
/// the whole probe if that run fails: the none machine takes TCG (no guest code runs),
/// and query-kvm says so as QEMU's does.
#[test]
fn machine_none_takes_tcg_as_libvirts_second_probe_needs() {
    let dir = TempDir::new("machine-none-tcg");
    let (qmp, pidfile) = (dir.path().join("qmp.sock"), dir.path().join("pid"));
    let mut cmd = gateway_none(&qmp, &pidfile);
    cmd.args(["--accel", "tcg"]);
    let (status, _, err) = run_to_end(cmd, TIMEOUT);
    assert!(status.success(), "{err}");
    let daemon = Daemon::of(&pidfile);
    let (qqmp, qpid) = (dir.path().join("qemu.sock"), dir.path().join("qemu.pid"));
    let (status, _, qerr) = run_to_end(qemu_none_on(&qqmp, &qpid, "tcg"), TIMEOUT);
    assert!(status.success(), "{qerr}");
    let qemu = Daemon::of(&qpid);
    let (mut g, mut q) = (QmpClient::negotiated(&qmp), QmpClient::negotiated(&qqmp));
    let kvm = q.ok("query-kvm", json!({}));
    assert_eq!(kvm, json!({"enabled": false, "present": true}));
    assert_eq!(g.ok("query-kvm", json!({})), kvm, "ours, then QEMU's");
    for c in [&mut g, &mut q] {
        c.ok("quit", json!({}));
    }
    daemon.wait_gone();
    qemu.wait_gone();
}

#[test]
fn daemonize_and_pidfile_are_qemus() {
    let dir = TempDir::new("daemonize");
    let qmp = dir.path().join("qmp.sock");
    let pidfile = dir.path().join("gateway.pid");

    // The first process returns once QMP answers; the pid file holds the daemon's pid.
    let (status, out, err) = run_to_end(gateway_none(&qmp, &pidfile), TIMEOUT);
    assert!(status.success(), "{out}\n{err}");
    let daemon = Daemon::of(&pidfile);
    let mut c = QmpClient::negotiated(&qmp);
    assert_eq!(c.ok("query-status", json!({}))["status"], "prelaunch");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", daemon.pid)).expect("cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("qmp-gateway"),
        "pid {} is not the gateway",
        daemon.pid
    );
    // Detached: a session of its own (as QEMU's, not its leader) and /dev/null as its
    // standard fds.
    let (sid, stdio) = session_and_stdio(daemon.pid);
    let (our_sid, _) = session_and_stdio(std::process::id() as i32);
    assert_ne!(sid, our_sid, "the daemon is in the test's session");
    assert_ne!(sid, daemon.pid, "the daemon leads its session");
    assert!(
        stdio.iter().all(|p| p == Path::new("/dev/null")),
        "stdio {stdio:?}"
    );

    // A second instance with the same pid file is refused, as QEMU's, and takes nothing
    // of the first's.
    let other = dir.path().join("other.sock");
    let (status, _, err) = run_to_end(gateway_none(&other, &pidfile), TIMEOUT);
    assert!(!status.success());
    let ours = words(&err, "qmp-gateway: error: ");
    assert!(!other.exists(), "the refused gateway bound its socket");
    assert_eq!(pid_in(&pidfile), daemon.pid, "pid file rewritten");
    let qdir = TempDir::new("daemonize-qemu");
    let (qqmp, qpid) = (qdir.path().join("qmp.sock"), qdir.path().join("qemu.pid"));
    let (status, _, qerr) = run_to_end(qemu_none(&qqmp, &qpid), TIMEOUT);
    assert!(status.success(), "{qerr}");
    let qemu = Daemon::of(&qpid);
    let (status, _, qerr) = run_to_end(qemu_none(&qdir.path().join("b.sock"), &qpid), TIMEOUT);
    assert_eq!(status.code(), Some(1));
    assert_eq!(ours, words(&qerr, "qemu-system-x86_64: "));
    QmpClient::negotiated(&qqmp).ok("quit", json!({}));
    qemu.wait_gone();
    assert!(!qpid.exists(), "QEMU removes its pid file");

    // quit: the daemon ends, its pid file and socket go.
    assert_eq!(c.ok("quit", json!({})), json!({}));
    daemon.wait_gone();
    assert!(!pidfile.exists(), "pid file left behind");
    assert!(!qmp.exists(), "QMP socket left behind");

    // A set-up that fails makes the first process fail with the error (QEMU: exit 1),
    // and leaves no pid file.
    let bad = dir.path().join("no/such/dir/qmp.sock");
    let (status, _, err) = run_to_end(gateway_none(&bad, &pidfile), TIMEOUT);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("No such file or directory"),
        "the error is not shown: {err}"
    );
    assert!(!pidfile.exists(), "pid file left by a failed start");
}

/// A daemonized VM: vmm-core is the daemon's child, supervised and reaped by it.
#[test]
fn a_daemonized_vm_keeps_and_ends_its_children() {
    let dir = TempDir::new("daemonize-vm");
    let (qmp, pidfile) = (dir.path().join("qmp.sock"), dir.path().join("pid"));
    let console = dir.path().join("console.log");
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--memory", "128", "--daemonize", "--qmp"])
        .arg(&qmp)
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--serial")
        .arg(format!("file:{}", console.display()));
    // vmm-core keeps the stderr it was started with: a file, so that this returns.
    let log = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
    cmd.stderr(log).stdout(std::process::Stdio::null());
    let status = cmd.status().expect("qmp-gateway");
    assert!(status.success());
    let daemon = Daemon::of(&pidfile);
    let mut c = QmpClient::negotiated(&qmp);
    let tid = c.ok("query-cpus-fast", json!({}))[0]["thread-id"]
        .as_i64()
        .expect("thread-id");
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).expect("vCPU");
    let field = |name: &str| -> i32 {
        (status.lines())
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .expect("field")
    };
    let vmm = Daemon {
        pid: field("Tgid:"),
    };
    let ppid = std::fs::read_to_string(format!("/proc/{}/status", vmm.pid))
        .expect("vmm-core")
        .lines()
        .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().to_string()))
        .expect("PPid");
    assert_eq!(ppid, daemon.pid.to_string(), "vmm-core is not the daemon's");
    let deadline = Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("GUEST IDLE")
    {
        assert!(Instant::now() < deadline, "the guest did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    c.ok("quit", json!({}));
    daemon.wait_gone();
    vmm.wait_gone();
    assert!(!pidfile.exists() && !qmp.exists(), "files left behind");
}

/// The events a client has seen so far, by name and data, less a firmware's own resets
/// (SeaBIOS resets the machine once when it starts after a reset; our direct kernel boot
/// has no firmware).
fn events_without_firmware(c: &mut QmpClient) -> Vec<Value> {
    events_of(c)
        .into_iter()
        .filter(|e| e[0] != "RESET" || e[1]["guest"] != true)
        .collect()
}

/// One step on both: the same answer, the same events, the same run state after.
fn same_step(g: &mut QmpClient, q: &mut QmpClient, command: &str) {
    let (gr, qr) = (g.execute(command, json!({})), q.execute(command, json!({})));
    assert_eq!(gr, qr, "{command}: ours, then QEMU's");
    assert_eq!(
        events_without_firmware(g),
        events_without_firmware(q),
        "events of {command}"
    );
    assert_eq!(
        g.ok("query-status", json!({})),
        q.ok("query-status", json!({})),
        "after {command}"
    );
}

/// --no-shutdown beside QEMU 7.2's -no-shutdown, the same test guest on each (QEMU's pc
/// with SeaBIOS): the power button powers the guest off, the VM stops in "shutdown"
/// with its processes there, cont is refused until system_reset, then the guest boots
/// again; quit ends it all.
#[test]
fn no_shutdown_stops_the_vm_as_qemus() {
    let mut qemu = Qemu::pc_guest("", &["-no-shutdown"]);
    let mut gateway = Gateway::start_with(1, "", &["-S", "--no-shutdown"]);
    let (mut q, mut g) = (qemu.client(), gateway.client());
    let vmm = gateway.vmm_pid();
    same_step(&mut g, &mut q, "cont");
    let boot = Duration::from_secs(60);
    for vm in [&mut gateway.vm, &mut qemu.vm] {
        vm.expect_prefix("GUEST IDLE", boot);
    }
    g.ok("system_powerdown", json!({}));
    q.ok("system_powerdown", json!({}));
    for vm in [&mut gateway.vm, &mut qemu.vm] {
        vm.expect_prefix("GUEST POWEROFF", boot);
    }
    g.event("STOP");
    q.event("STOP");
    assert_eq!(
        events_without_firmware(&mut g),
        events_without_firmware(&mut q),
        "events of the power-off"
    );
    assert_eq!(
        g.ok("query-status", json!({})),
        q.ok("query-status", json!({}))
    );
    assert_eq!(g.ok("query-status", json!({}))["status"], "shutdown");
    assert!(!gateway.vm.exited(), "the gateway ended at the power-off");
    assert!(
        Path::new(&format!("/proc/{vmm}")).exists(),
        "vmm-core ended at the power-off"
    );
    for command in ["cont", "system_reset", "cont"] {
        same_step(&mut g, &mut q, command);
    }
    for vm in [&mut gateway.vm, &mut qemu.vm] {
        vm.expect_prefix("GUEST READY", boot);
    }
    assert_eq!(g.ok("quit", json!({})), json!({}));
    gateway.expect_clean_exit(vmm, true);
}

/// An unknown machine type is refused in QEMU's words, the none machine takes no option
/// that describes a VM, and a daemon no stdio.
#[test]
fn bad_machine_options_are_refused() {
    let dir = TempDir::new("bad-machine");
    let qmp = dir.path().join("qmp.sock");
    let gateway = |args: &[&str]| {
        let mut cmd = Command::new(bin("qmp-gateway"));
        cmd.arg("--qmp").arg(&qmp).args(args);
        let (status, _, err) = run_to_end(cmd, TIMEOUT);
        assert!(!status.success(), "{args:?} taken");
        assert!(!qmp.exists(), "{args:?}: the socket was left");
        err
    };
    let mut qemu = Command::new(require_tool("qemu-system-x86_64", "qemu-system-x86"));
    qemu.args(["-machine", "foo", "-nodefaults", "-display", "none"]);
    let (_, _, qemu_err) = run_to_end(qemu, TIMEOUT);
    let qemu_words = words(&qemu_err, "qemu-system-x86_64: ");
    let ours = gateway(&["--machine", "foo"]);
    assert!(ours.contains(&qemu_words), "{ours}\nQEMU: {qemu_words}");
    // TCG runs no guest here: a VM is KVM's.
    let ours = gateway(&["--accel", "tcg"]);
    assert!(
        ours.contains("--accel tcg: Flotilla runs guests on KVM only"),
        "{ours}"
    );
    for option in [
        &["--kernel", "/dev/null"][..],
        &["--drive", "file=/dev/null,format=raw"],
        &["--incoming", "defer"],
    ] {
        let err = gateway(&[&["--machine", "none"][..], option].concat());
        let want = format!("--machine none runs no VM: {} is not taken", option[0]);
        assert!(err.contains(&want), "{option:?}: {err}");
    }
    // A daemon has no terminal (QEMU: "-serial stdio: cannot use stdio with -daemonize",
    // the same for -chardev stdio); the first process fails with the daemon's words.
    let kernel = test_guest();
    let kernel = kernel.to_str().expect("path");
    for (args, want) in [
        (
            &["--kernel", kernel, "--daemonize"][..],
            "--serial stdout: cannot use stdio with --daemonize",
        ),
        (
            &[
                "--machine",
                "none",
                "--chardev",
                "stdio,id=s",
                "--daemonize",
            ],
            "--chardev stdio,id=s: cannot use stdio with --daemonize",
        ),
    ] {
        let err = gateway(args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
