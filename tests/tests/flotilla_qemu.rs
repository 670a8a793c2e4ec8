//! flotilla-qemu, the QEMU-shaped entry point libvirt starts (issue 18): libvirt 9.0's
//! argv for a domain (captured against QEMU 7.2) with fds and files of the test's own
//! boots the test guest: QMP on the monitor socket libvirt passes as fd=N, the serial
//! log through -add-fd, libvirt's masterKey0 secret read from its file; with
//! -no-shutdown the guest's power-off leaves it stopped; quit ends it.
//! And each refusal QEMU 7.2 makes too is made in QEMU's words (QEMU run on the same
//! words).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::qmp::QmpClient;
use flotilla_tests::{bin, kvm_is_pvm, require_tool, run_to_end, test_guest, TempDir, Vm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);

/// An fd the child inherits (a duplicate without close-on-exec), as libvirt passes them.
fn inheritable(fd: &impl AsRawFd) -> OwnedFd {
    // SAFETY: dup of an fd we hold; the copy has no FD_CLOEXEC.
    let n = unsafe { libc::dup(fd.as_raw_fd()) };
    assert!(n >= 0);
    // SAFETY: n is ours alone.
    unsafe { OwnedFd::from_raw_fd(n) }
}

/// libvirt 9.0's domain argv (issue 18's capture), less the disk and NIC
/// (gateway_hotplug runs libvirt's -blockdev/-device JSON; qemu_cli's unit tests their
/// translation), with `pc` as the machine (what Flotilla's query-machines offers
/// libvirt), and host-passthrough with arch-capabilities disabled (as QEMU on kvm-pvm
/// needs it), but on kvm-pvm, whose KVM keeps that feature whatever the VMM sets (and
/// Flotilla refuses a feature off that the guest would still have: gateway_probe's
/// qom test), libvirt's line for host-passthrough alone.
fn libvirt_domain(monitor_fd: i32, serial_fd: i32, key: &Path) -> Vec<String> {
    let cpu = match kvm_is_pvm() {
        true => "host,migratable=on",
        false => "host,migratable=on,arch-capabilities=off",
    };
    let key = key.display();
    let guest = test_guest();
    let guest = guest.display();
    format!(
        r#"-name guest=flot1,debug-threads=on -S -object {{"qom-type":"secret","id":"masterKey0","format":"raw","file":"{key}"}} -machine pc,usb=off,dump-guest-core=off,memory-backend=pc.ram -accel kvm -cpu {cpu} -m 128 -object {{"qom-type":"memory-backend-ram","id":"pc.ram","size":134217728}} -overcommit mem-lock=off -smp 1,sockets=1,cores=1,threads=1 -uuid afffbc2f-7592-4c2d-9207-cf3c91d6eabd -display none -no-user-config -nodefaults -chardev socket,id=charmonitor,fd={monitor_fd},server=on,wait=off -mon chardev=charmonitor,id=monitor,mode=control -rtc base=utc -no-shutdown -boot strict=on -kernel {guest} -add-fd set=0,fd={serial_fd},opaque=serial0-source -chardev file,id=charserial0,path=/dev/fdset/0,append=on -device {{"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0}} -audiodev {{"id":"audio1","driver":"none"}} -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -msg timestamp=on"#
    )
    .split(' ')
    .map(str::to_string)
    .collect()
}

#[test]
fn libvirts_domain_argv_boots_the_guest() {
    let dir = TempDir::new("flotilla-qemu");
    let sock = dir.path().join("monitor.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let serial_path = dir.path().join("serial.log");
    std::fs::write(&serial_path, "libvirt's own line\n").unwrap();
    let serial = std::fs::OpenOptions::new()
        .append(true)
        .open(&serial_path)
        .unwrap();
    let key = dir.path().join("master-key.aes");
    std::fs::write(&key, [0x5a; 32]).unwrap();
    let (mon_fd, serial_fd) = (inheritable(&listener), inheritable(&serial));
    let mut cmd = Command::new(bin("flotilla-qemu"));
    cmd.args(libvirt_domain(
        mon_fd.as_raw_fd(),
        serial_fd.as_raw_fd(),
        &key,
    ));
    let mut vm = Vm::spawn(cmd);
    drop((mon_fd, serial_fd, listener, serial));

    // QMP on the socket libvirt passed: the domain as its command line made it.
    let mut qmp = QmpClient::negotiated(&sock);
    assert_eq!(
        qmp.ok("query-status", json!({})),
        json!({"status": "prelaunch", "running": false, "singlestep": false})
    );
    assert_eq!(qmp.ok("query-name", json!({})), json!({"name": "flot1"}));
    assert_eq!(
        qmp.ok("query-uuid", json!({}))["UUID"],
        "afffbc2f-7592-4c2d-9207-cf3c91d6eabd"
    );
    let fdsets = qmp.ok("query-fdsets", json!({}));
    assert_eq!(fdsets[0]["fdset-id"], 0, "{fdsets}");
    assert_eq!(fdsets[0]["fds"][0]["opaque"], "serial0-source", "{fdsets}");
    // The secret is an object (its id taken), the RAM's backend folded into the RAM.
    let (class, desc) = qmp.err(
        "object-add",
        json!({"qom-type": "secret", "id": "masterKey0", "data": "x"}),
    );
    assert_eq!(class, "GenericError");
    assert!(desc.contains("duplicate property 'masterKey0'"), "{desc}");
    let memdev = qmp.ok("query-memdev", json!({}));
    let ram: Vec<_> = memdev
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].clone(), m["size"].clone()))
        .collect();
    assert_eq!(ram, [(json!("flotilla.ram"), json!(128 << 20))], "{memdev}");
    // -cpu's feature turned off: the vCPU lacks it (KVM here has it: others are on);
    // on kvm-pvm left on.
    let cpu0 = "/machine/unattached/device[0]";
    for (feature, has) in [("arch-capabilities", kvm_is_pvm()), ("lahf-lm", true)] {
        let args = json!({"path": cpu0, "property": feature});
        assert_eq!(qmp.ok("qom-get", args), has, "{feature}");
    }

    // The guest runs once continued; its UART writes through libvirt's fd, appending.
    qmp.ok("cont", json!({}));
    let deadline = Instant::now() + TIMEOUT;
    let log = loop {
        let log = std::fs::read_to_string(&serial_path).unwrap();
        if log.contains("GUEST READY") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no READY in the serial log: {log}\n{}",
            vm.transcript()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(log.starts_with("libvirt's own line\n"), "{log}");
    assert!(log.contains("GUEST READY cpus=1 mem_mib=128"), "{log}");

    // -no-shutdown: the guest powers off on the button and the process stays.
    qmp.ok("system_powerdown", json!({}));
    // As QEMU's: SHUTDOWN, then the VM stops (STOP) in run state shutdown.
    qmp.event("SHUTDOWN");
    qmp.event("STOP");
    assert_eq!(
        qmp.ok("query-status", json!({}))["status"],
        "shutdown",
        "{}",
        vm.transcript()
    );
    assert!(!vm.exited(), "{}", vm.transcript());
    qmp.ok("quit", json!({}));
    let status = vm.wait(TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", vm.transcript());
}

#[test]
fn version_is_qemu_shaped_and_says_flotilla() {
    let (status, out, _) = run_to_end(
        {
            let mut c = Command::new(bin("flotilla-qemu"));
            c.arg("-version");
            c
        },
        TIMEOUT,
    );
    assert!(status.success());
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("QEMU emulator version 7.2.0 (flotilla "),
        "{out}"
    );
    assert!(out.contains("This is Flotilla, not QEMU"), "{out}");
}

/// What the program printed on stderr, without its name (`qemu-system-x86_64: `,
/// `flotilla-qemu: `) at the lines' starts.
fn message(stderr: &str, program: &str) -> String {
    stderr
        .lines()
        .map(|l| l.strip_prefix(&format!("{program}: ")).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn refusals_qemu_makes_too_are_in_its_words() {
    let qemu = require_tool("qemu-system-x86_64", "qemu-system-x86");
    for line in [
        "-foo",
        "-m",
        "-machine foo",
        "-accel foo",
        "-machine none,accel=foo",
        "-cpu foo",
        "-accel kvm -cpu host,foo=off",
        "-accel kvm -cpu host,foo_bar",
        "-accel kvm -cpu host,+foo",
        "-accel kvm -cpu host,-foo",
        "-accel kvm -cpu host,arch-capabilities=bogus",
        "-accel kvm -cpu host,migratable=maybe",
        "-device foo",
        "-name guest=x,foo=1",
        "-smp 1,foo=2",
        "-uuid zzz",
        "-add-fd set=0",
        "-boot strict=maybe",
        "-msg timestamp=maybe",
        "-overcommit mem-lock=maybe",
        "-sandbox foo",
        "-object memory-backend-ram,id=r,size=64M -machine pc,memory-backend=r -m 128",
    ] {
        let words: Vec<&str> = line.split(' ').collect();
        let mut q = Command::new(&qemu);
        // -qmp stdio on an empty stdin: QEMU ends at once if the line is good.
        q.args(["-nodefaults", "-display", "none", "-S", "-qmp", "stdio"])
            .args(&words);
        let (q_status, _, q_err) = run_to_end(q, TIMEOUT);
        let mut f = Command::new(bin("flotilla-qemu"));
        f.args(&words);
        let (f_status, _, f_err) = run_to_end(f, TIMEOUT);
        assert!(!q_status.success() && !f_status.success(), "{line}");
        assert_eq!(
            message(&f_err, "flotilla-qemu"),
            message(&q_err, "qemu-system-x86_64"),
            "{line}"
        );
    }
}
