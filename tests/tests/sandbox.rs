//! The sandbox from inside: a probe compiled into test builds (sandbox crate, feature
//! `probe`, see scripts/test) makes vmm-core, a block daemon or a net daemon try what it
//! must not: read a host file, write one, execve, reach a listening TCP socket, kill or
//! ptrace another process, mount, or make an ioctl outside its list (TIOCSTI on a pty).
//! Without a sandbox every one of these succeeds (the control run). Enforced, each attempt
//! stops the process and is reported (log line and __io.flotilla_SANDBOX_VIOLATION naming
//! process, device and system call), and a daemon is restarted. With the seccomp filter
//! only logging, the layers beneath still refuse every one of them, each with the error
//! that layer gives. Each child runs on the host as an id of its own (`--sandbox-ids`),
//! which no process of another user may signal.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use flotilla_tests::qmp::{wait_for_socket, Gateway, QmpClient};
use flotilla_tests::{bin, test_guest, TempDir, Vm};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
const VIOLATION: &str = "__io.flotilla_SANDBOX_VIOLATION";

/// Each action, and the system call the allowlist stops it at. execve comes last: when
/// it succeeds (no sandbox) the process is another program.
const ACTIONS: &[(&str, &str)] = &[
    ("open-file", "openat"),
    ("write-outside", "openat"),
    ("socket-inet", "socket"),
    ("ptrace-sibling", "ptrace"),
    ("kill-sibling", "kill"),
    ("mount", "mount"),
    ("ioctl-terminal", "ioctl"),
    ("execve", "execve"),
];

/// For each action, the errors the layers beneath seccomp answer it with. Any other
/// error fails the test: the control run shows that each action succeeds without a
/// sandbox, so only what the sandbox does may stop it.
const REFUSALS: &[(&str, &[(i32, &str)])] = &[
    (
        "open-file",
        &[
            (libc::ENOENT, "the empty root hides the host's files"),
            (libc::EACCES, "Landlock allows no file access"),
        ],
    ),
    (
        "write-outside",
        &[
            (libc::ENOENT, "the empty root hides the host's directories"),
            (libc::EROFS, "the root is read-only"),
            (libc::EACCES, "Landlock allows no file access"),
        ],
    ),
    (
        "socket-inet",
        &[
            (libc::EACCES, "Landlock allows no TCP connect"),
            (libc::ENETUNREACH, "the network namespace has no route"),
        ],
    ),
    (
        "ptrace-sibling",
        &[
            (libc::ESRCH, "the PID namespace has no such process"),
            (libc::EPERM, "no CAP_SYS_PTRACE, another user"),
        ],
    ),
    (
        "kill-sibling",
        &[
            (libc::ESRCH, "the PID namespace has no such process"),
            (libc::EPERM, "Landlock signal scope, another user"),
        ],
    ),
    (
        "mount",
        &[
            (libc::ENOENT, "the empty root hides the mount point"),
            (libc::EPERM, "no CAP_SYS_ADMIN"),
        ],
    ),
    (
        "ioctl-terminal",
        &[(libc::EPERM, "no CAP_SYS_ADMIN for another's terminal")],
    ),
    (
        "execve",
        &[
            (libc::ENOENT, "the empty root hides the program"),
            (libc::EACCES, "Landlock allows no execution"),
        ],
    ),
];

/// What the probe works on: targets that a process without a sandbox reaches.
struct Targets {
    dir: TempDir,
    file: PathBuf,
    listener: TcpListener,
    /// A process of ours that the probe may kill; reaped only at the end (a zombie keeps
    /// its pid from being reused meanwhile).
    sibling: Child,
    exec: PathBuf,
}

impl Targets {
    fn new() -> Targets {
        let dir = TempDir::new("probe-targets");
        let file = dir.path().join("readable");
        std::fs::write(&file, "a file anyone may read\n").unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let exec = dir.path().join("exec");
        std::fs::write(&exec, "#!/bin/sh\necho 'PROBE execve: allowed' >&2\n").unwrap();
        std::fs::set_permissions(
            &exec,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let sibling = Command::new("sleep").arg("120").spawn().expect("sleep");
        Targets {
            dir,
            file,
            listener,
            sibling,
            exec,
        }
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env("FLOTILLA_PROBE_FILE", &self.file)
            .env("FLOTILLA_PROBE_DIR", self.dir.path())
            .env(
                "FLOTILLA_PROBE_TCP",
                self.listener.local_addr().unwrap().to_string(),
            )
            .env("FLOTILLA_PROBE_EXEC", &self.exec)
            .env("FLOTILLA_PROBE_SIBLING", self.sibling.id().to_string());
    }

    fn written(&self) -> bool {
        self.dir.path().join("probe-written").exists()
    }

    /// Whether someone connected to the listener (the probe has already said what came
    /// of its connect: a connection made is in the backlog by then).
    fn connected(&self) -> bool {
        match self.listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }

    /// How the sibling ended, waiting up to `timeout` (None: it still runs).
    fn sibling_end(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.sibling.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = self.sibling.kill();
        let _ = self.sibling.wait();
    }
}

/// A gateway with a disk and a NIC whose `process` runs `probe` on `targets`.
/// `port`: the NIC's UDP port (tests run in parallel: each uses its own).
fn gateway(
    dir: &TempDir,
    process: &str,
    probe: &str,
    sandbox: &str,
    port: u16,
    targets: &Targets,
) -> Vm {
    let image = dir.path().join("d0.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--memory", "128", "--sandbox", sandbox, "--cmdline", ""])
        .arg("--qmp")
        .arg(qmp_of(dir))
        .arg("--drive")
        .arg(format!("file={},format=raw,id=d0", image.display()))
        .args([
            "--netdev",
            &format!(
                "socket,id=n0,udp=127.0.0.1:{},localaddr=127.0.0.1:{port}",
                port + 1
            ),
            "--device",
            "virtio-net-pci,netdev=n0,id=nic0",
        ])
        .env(
            format!(
                "FLOTILLA_PROBE_{}",
                process.to_ascii_uppercase().replace('-', "_")
            ),
            probe,
        );
    targets.apply(&mut cmd);
    Vm::spawn(cmd)
}

fn qmp_of(dir: &TempDir) -> PathBuf {
    dir.path().join("qmp.sock")
}

fn violation(c: &mut QmpClient) -> Value {
    c.event(VIOLATION)["data"].clone()
}

/// A sandboxed gateway whose `process` tries `action` a second after the start, and a
/// client of it.
fn enforced(dir: &TempDir, process: &str, action: &str, port: u16) -> (Vm, QmpClient, Targets) {
    let targets = Targets::new();
    // After a second, so that the VM runs and the client listens.
    let vm = gateway(
        dir,
        process,
        &format!("{action}@1000"),
        "enforce",
        port,
        &targets,
    );
    wait_for_socket(&qmp_of(dir), &vm);
    let c = QmpClient::negotiated(&qmp_of(dir));
    (vm, c, targets)
}

#[test]
fn every_forbidden_action_of_a_daemon_is_stopped_reported_and_the_daemon_restarted() {
    for (process, device) in [("block-daemon", "d0"), ("net-daemon", "nic0")] {
        for (action, syscall) in ACTIONS {
            let dir = TempDir::new("sandbox-probe");
            let (mut vm, mut c, _targets) = enforced(&dir, process, action, 47300);
            let v = violation(&mut c);
            assert_eq!(
                v,
                json!({"process": process, "device": device, "syscall": syscall,
                    "number": v["number"]}),
                "{process} {action}:\n{}",
                vm.transcript()
            );
            let line = format!("{process} of {device}: sandbox violation: {syscall} (");
            vm.expect_line("the violation in the log", TIMEOUT, |l| l.contains(&line));
            // The daemon's own line on stderr, and its restart.
            let prefix = if process == "block-daemon" {
                "__io.flotilla_BLOCK_DAEMON_RESTARTED"
            } else {
                "__io.flotilla_NET_DAEMON_RESTARTED"
            };
            c.event(prefix);
            assert!(
                vm.transcript().contains(&format!(
                    "{process}: sandbox violation: system call {syscall} ("
                )),
                "{}",
                vm.transcript()
            );
            vm.terminate(Duration::from_secs(10));
        }
    }
}

#[test]
fn vmm_core_is_stopped_and_reported_too() {
    for (action, syscall) in ACTIONS {
        let dir = TempDir::new("sandbox-probe-vmm");
        let (mut vm, mut c, _targets) = enforced(&dir, "vmm-core", action, 47310);
        let v = violation(&mut c);
        assert_eq!(v["process"], "vmm-core", "{v}");
        assert_eq!(v["syscall"], *syscall, "{action}: {v}");
        assert!(v.get("device").is_none(), "{v}");
        // vmm-core's end is the VM's end, as a crash is.
        let status = vm.wait(TIMEOUT);
        assert!(!status.success(), "{}", vm.transcript());
    }
}

/// The probe's line about `action`.
fn probe_line(vm: &mut Vm, action: &str) -> String {
    let tag = format!("PROBE {action}: ");
    vm.expect_line("the probe's result", TIMEOUT, |l| l.contains(&tag))
}

/// The errno of a `PROBE <action>: denied (... (os error N))` line.
fn denied_errno(line: &str) -> Option<i32> {
    line.split_once(": denied (")?
        .1
        .rsplit_once("(os error ")?
        .1
        .split(')')
        .next()?
        .parse()
        .ok()
}

#[test]
fn with_seccomp_only_logging_the_other_layers_still_refuse_everything() {
    let all: Vec<&str> = ACTIONS.iter().map(|(a, _)| *a).collect();
    for process in ["vmm-core", "block-daemon", "net-daemon"] {
        let dir = TempDir::new("sandbox-probe-log");
        let mut targets = Targets::new();
        let mut vm = gateway(&dir, process, &all.join(","), "log", 47320, &targets);
        for action in &all {
            let line = probe_line(&mut vm, action);
            let errno = denied_errno(&line).unwrap_or_else(|| {
                panic!(
                    "{process}: {action} was not refused: {line}\n{}",
                    vm.transcript()
                )
            });
            let (_, refusals) = REFUSALS
                .iter()
                .find(|(a, _)| a == action)
                .expect("every action has its refusals");
            assert!(
                refusals.iter().any(|(e, _)| *e == errno),
                "{process}: {action} failed, but not as the sandbox refuses it \
                 ({refusals:?}): {line}"
            );
        }
        // Nothing reached its target.
        assert!(!targets.written(), "{process} wrote outside");
        assert!(!targets.connected(), "{process} connected to the host");
        assert_eq!(
            targets.sibling_end(Duration::ZERO),
            None,
            "{process} killed"
        );
        vm.terminate(Duration::from_secs(10));
    }
}

/// `process` as the gateway starts it with `--sandbox off` (no namespaces, our ids, a
/// control socket as fd 3), running every action of the probe on `targets`. It goes no
/// further than waiting for its launch message, which never comes.
fn unsandboxed(process: &str, targets: &Targets) -> (Vm, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let all: Vec<&str> = ACTIONS.iter().map(|(a, _)| *a).collect();
    let mut cmd = Command::new(bin(process));
    cmd.args(["--control-fd", "3", "--sandbox", "off"]).env(
        format!(
            "FLOTILLA_PROBE_{}",
            process.to_ascii_uppercase().replace('-', "_")
        ),
        all.join(","),
    );
    targets.apply(&mut cmd);
    let fd = theirs.as_raw_fd();
    // SAFETY: between fork and exec only dup2, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let vm = Vm::spawn(cmd);
    drop(theirs);
    (vm, ours)
}

/// The control run: without a sandbox every action of the probe reaches its target, so
/// the refusals above are the sandbox's doing and nothing else's.
#[test]
fn without_a_sandbox_every_probe_succeeds() {
    for process in ["vmm-core", "block-daemon", "net-daemon"] {
        let mut targets = Targets::new();
        let (mut vm, _control) = unsandboxed(process, &targets);
        for (action, _) in ACTIONS {
            let line = probe_line(&mut vm, action);
            assert!(
                line.ends_with(&format!("PROBE {action}: allowed")),
                "{process}: {action} failed without a sandbox: {line}\n{}",
                vm.transcript()
            );
        }
        assert!(targets.written(), "{process} wrote nothing");
        assert!(targets.connected(), "{process} did not connect");
        let end = targets.sibling_end(TIMEOUT);
        assert_eq!(
            end.and_then(|s| s.signal()),
            Some(libc::SIGKILL),
            "{process}: the sibling ended with {end:?}"
        );
        vm.terminate(Duration::from_secs(10));
    }
}

#[test]
fn without_a_sandbox_the_vm_serves() {
    // The same start with --sandbox off serves as usual.
    let gw = Gateway::start(&["--sandbox", "off"]);
    let mut c = gw.client();
    assert_eq!(c.ok("query-status", json!({}))["status"], "running");
}

/// A status field of /proc/PID/status, whitespace-normalised.
fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn pid_after(gw: &mut Gateway, marker: &str) -> i32 {
    let line = gw.vm.expect_line(marker, TIMEOUT, |l| l.contains(marker));
    line.split(marker)
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

/// The default range of sandbox ids (`--sandbox-ids`): 65536 ids from 0x7F000000.
const DEFAULT_IDS: std::ops::RangeInclusive<u32> = 0x7F00_0000..=0x7F00_FFFF;

/// A gateway with a disk and a NIC (UDP `port`, `port + 1`); the pids of vmm-core, its
/// block daemon and its net daemon.
fn gateway_with_disk_and_nic(dir: &TempDir, port: u16, extra: &[&str]) -> (Gateway, [i32; 3]) {
    let image = dir.path().join("d0.img");
    flotilla_tests::blk::empty_image(&image, 1 << 20);
    let drive = format!("file={},format=raw,id=d0", image.display());
    let netdev = format!(
        "socket,id=n0,udp=127.0.0.1:{},localaddr=127.0.0.1:{port}",
        port + 1
    );
    let mut args = vec![
        "--drive",
        &drive,
        "--netdev",
        &netdev,
        "--device",
        "virtio-net-pci,netdev=n0,id=nic0",
    ];
    args.extend_from_slice(extra);
    let mut gw = Gateway::start(&args);
    let block = pid_after(&mut gw, "block daemon pid ");
    let net = pid_after(&mut gw, "net daemon pid ");
    let vmm = gw.vmm_pid();
    (gw, [vmm, block, net])
}

/// The uid and gid a process runs as outside its namespaces, checked to be one id for
/// all of real, effective, saved and file system, for both.
fn host_id(name: &str, pid: i32) -> u32 {
    let uid = status_field(pid, "Uid");
    let ids: Vec<&str> = uid.split(' ').collect();
    assert!(
        ids.len() == 4 && ids.iter().all(|i| *i == ids[0]),
        "{name}: Uid {uid}"
    );
    assert_eq!(
        status_field(pid, "Gid"),
        uid,
        "{name}: its gid is its uid's number"
    );
    ids[0].parse().unwrap()
}

#[test]
fn every_process_has_an_id_of_its_own_without_privileges_in_namespaces_of_its_own() {
    let dir = TempDir::new("sandbox-identity");
    let (gw, pids) = gateway_with_disk_and_nic(&dir, 47330, &[]);
    let mut ids = std::collections::BTreeSet::new();
    for (name, pid) in ["vmm-core", "block-daemon", "net-daemon"]
        .into_iter()
        .zip(pids)
    {
        // Root inside its user namespace is, outside, an id from the range of sandbox
        // ids that no other process has, with no groups.
        let id = host_id(name, pid);
        assert!(DEFAULT_IDS.contains(&id), "{name}: uid {id}");
        assert!(ids.insert(id), "{name} shares uid {id}: {ids:?}");
        assert_eq!(status_field(pid, "Groups"), "", "{name}");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(status_field(pid, caps), "0000000000000000", "{name} {caps}");
        }
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{name}");
        assert_eq!(status_field(pid, "Seccomp"), "2", "{name}");
        // PID 1 of its own PID namespace.
        let nspid = status_field(pid, "NSpid");
        assert!(nspid.ends_with(" 1"), "{name}: NSpid {nspid}");
        for ns in ["user", "mnt", "pid", "net", "ipc", "uts"] {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
            assert_ne!(theirs, ours, "{name} shares our {ns} namespace");
        }
    }
    let mut c = gw.client();
    assert_eq!(c.ok("query-status", json!({}))["status"], "running");
    // A restarted daemon has an id none of the others has either.
    let pid = restart_block_daemon(&mut c);
    let id = host_id("the new block-daemon", pid);
    assert!(DEFAULT_IDS.contains(&id), "uid {id}");
    assert_ne!(id, host_id("vmm-core", pids[0]));
    assert_ne!(id, host_id("net-daemon", pids[2]));
}

/// Restarts the block daemon of d0 over QMP; the new one's pid.
fn restart_block_daemon(c: &mut QmpClient) -> i32 {
    c.ok(
        "__io.flotilla_block-daemon-restart",
        json!({"device": "d0"}),
    )["pid"]
        .as_i64()
        .unwrap() as i32
}

/// `kill -0 PID` (a signal's permission check, nothing delivered) run as `uid`: whether
/// it was allowed.
fn may_signal(uid: u32, pid: i32) -> bool {
    Command::new(flotilla_tests::require_tool("kill", "procps"))
        .args(["-0", &pid.to_string()])
        .uid(uid)
        .gid(uid)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("kill")
        .success()
}

/// Defect 5 of issue 11: the children ran as uid 65534, so anything running as nobody
/// could kill them (`setpriv --reuid=65534 kill -KILL <vmm-core>` ended the VM). Nor
/// may one child signal another.
#[test]
fn no_process_of_another_user_can_signal_a_child() {
    let dir = TempDir::new("sandbox-signals");
    let (gw, pids) = gateway_with_disk_and_nic(&dir, 47600, &[]);
    // The check can pass: nobody may signal a process of its own.
    let mut sleeper = Command::new("sleep")
        .arg("30")
        .uid(65534)
        .gid(65534)
        .spawn()
        .expect("sleep");
    assert!(may_signal(65534, sleeper.id() as i32));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let ids: Vec<u32> = pids.iter().map(|&p| host_id("child", p)).collect();
    for (i, &pid) in pids.iter().enumerate() {
        assert!(!may_signal(65534, pid), "nobody may signal child {pid}");
        for (j, &id) in ids.iter().enumerate() {
            if i != j {
                assert!(
                    !may_signal(id, pid),
                    "uid {id} (another child's) may signal child {pid}"
                );
            }
        }
    }
    let mut c = gw.client();
    assert_eq!(c.ok("query-status", json!({}))["status"], "running");
}

/// `--sandbox-ids FIRST-LAST`: the ids come from there, and an id is used again once its
/// process has ended.
#[test]
fn sandbox_ids_come_from_the_range_given_and_are_used_again() {
    let dir = TempDir::new("sandbox-ids");
    let first: u32 = 0x7F10_0000;
    let range = format!("{first}-{}", first + 2);
    let (gw, pids) = gateway_with_disk_and_nic(&dir, 47602, &["--sandbox-ids", &range]);
    let ids: std::collections::BTreeSet<u32> = pids.iter().map(|&p| host_id("child", p)).collect();
    assert_eq!(ids, (first..=first + 2).collect());
    let old = host_id("block-daemon", pids[1]);
    let mut c = gw.client();
    let pid = restart_block_daemon(&mut c);
    assert_eq!(host_id("the new block-daemon", pid), old);
}

#[test]
fn a_range_of_sandbox_ids_too_small_for_every_child_fails_saying_so() {
    let dir = TempDir::new("sandbox-ids-short");
    let image = dir.path().join("d0.img");
    flotilla_tests::blk::empty_image(&image, 1 << 20);
    let first: u32 = 0x7F10_0010;
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--memory", "128", "--cmdline", ""])
        .arg("--drive")
        .arg(format!("file={},format=raw,id=d0", image.display()))
        .args(["--sandbox-ids", &format!("{first}-{}", first + 1)])
        .args([
            "--netdev",
            "socket,id=n0,udp=127.0.0.1:47605,localaddr=127.0.0.1:47604",
            "--device",
            "virtio-net-pci,netdev=n0,id=nic0",
        ]);
    let (status, _, err) = flotilla_tests::run_to_end(cmd, TIMEOUT);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "no free sandbox id in {first}-{} (--sandbox-ids)",
            first + 1
        )),
        "{err}"
    );
    for bad in ["5-3", "0-10", "65530-65540", "x", "10"] {
        let mut cmd = Command::new(bin("qmp-gateway"));
        cmd.args(["--kernel", "/nonexistent", "--sandbox-ids", bad]);
        let (status, _, err) = flotilla_tests::run_to_end(cmd, TIMEOUT);
        assert!(!status.success());
        assert!(err.contains("--sandbox-ids"), "{bad}: {err}");
    }
}
