//! Memory hotplug through the gateway: `--memory 128,slots=4,maxmem=1G`, vmm-core's ACPI
//! memory hotplug under the test guest's `mem-hotplug` scenario, the same scenario, commands
//! and checks as on QEMU 7.2 (qemu_guest_mem_hotplug.rs, tests/src/mem_hotplug.rs) with
//! every answer and event compared with a live QEMU's. The disk's block daemon carries the
//! guest's data through each DIMM (it maps the DIMM's memory: vhost-user ADD_MEM_REG), and
//! once a DIMM is gone no process maps its memory any more. Also: a VM without slots, the
//! command line's refusals in QEMU's words, device_del asked again, and a live upgrade that
//! hands the DIMMs to the new vmm-core (migration with DIMMs: tests/tests/migration.rs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::blk::empty_image;
use flotilla_tests::mem_hotplug::{self, Observed, CMDLINE, MEMORY};
use flotilla_tests::procs::descendants;
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::Gateway;
use flotilla_tests::{bin, path_arg, run_to_end, test_guest, TempDir};
use serde_json::{json, Value};

/// The gateway with `memory` (its --memory), the guest's `cmdline` and `extra` arguments.
fn gateway(memory: &str, cmdline: &str, extra: &[&str]) -> Gateway {
    let dir = TempDir::new("gateway-memhp");
    let qmp = dir.path().join("qmp.sock");
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--memory", memory, "--cpus", "1", "--cmdline", cmdline])
        .arg("--qmp")
        .arg(&qmp)
        .args(extra);
    Gateway::spawn(cmd, dir, qmp)
}

/// A 1 MiB raw image in `dir`, and the drive option (QEMU's and the gateway's) for it.
fn disk(dir: &Path) -> (std::path::PathBuf, String) {
    let image = dir.join("disk.img");
    empty_image(&image, 1 << 20);
    let drive = format!("file={},format=raw,if=none,id=d0", path_arg(&image));
    (image, drive)
}

/// The scenario on QEMU 7.2, with its virtio-blk disk.
fn on_qemu() -> Observed {
    let dir = TempDir::new("qemu-memhp");
    let (image, drive) = disk(dir.path());
    let mut qemu = Qemu::pc_guest(
        &format!("{CMDLINE} mem-blk=1"),
        &[
            "-m",
            MEMORY,
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
        ],
    );
    let mut qmp = qemu.client();
    qmp.ok("cont", json!({}));
    mem_hotplug::scenario(&mut qemu.vm, &mut qmp, dir.path(), Some(&image))
}

/// The processes under `pid` that map memory backend `id`'s memory (the gateway names its
/// memfds flotilla-mem-ID; a file backend by its path).
fn mapping(pid: i32, what: &str) -> Vec<String> {
    descendants(pid)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{}/maps", p.pid)).is_ok_and(|maps| {
                maps.lines()
                    .any(|l| l.ends_with(what) || l.contains(&format!("{what} ")))
            })
        })
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect()
}

/// The commands and replies, without their arguments (a file backend's path differs
/// from one run to the next).
fn replies(o: &Observed) -> Vec<(String, Value)> {
    o.answers
        .iter()
        .map(|(command, _, reply)| (command.clone(), reply.clone()))
        .collect()
}

#[test]
fn dimms_are_added_used_refused_and_removed_as_on_qemu() {
    let dir = TempDir::new("memhp-images");
    let (image, _) = disk(dir.path());
    let drive = format!("file={},format=raw,id=d0", path_arg(&image));
    let mut gw = gateway(
        MEMORY,
        &format!("{CMDLINE} mem-blk=1"),
        &["--drive", &drive],
    );
    let gateway_pid = gw.vm.pid();
    let mut qmp = gw.client();
    let ours = mem_hotplug::scenario(&mut gw.vm, &mut qmp, dir.path(), Some(&image));
    // The DIMMs there now are in vmm-core and in the disk's daemon (which served the
    // guest's I/O through them); the one ejected, and its backend deleted, in neither.
    let m2 = mapping(gateway_pid, "/memfd:flotilla-mem-m2");
    assert!(
        m2.iter().any(|c| c == "vmm-core") && m2.iter().any(|c| c == "block-daemon"),
        "who maps m2: {m2:?}"
    );
    assert_eq!(
        mapping(gateway_pid, "/memfd:flotilla-mem-m1"),
        Vec::<String>::new()
    );
    let m3 = dir.path().join("m3");
    assert!(
        mapping(gateway_pid, &m3.display().to_string()).contains(&"block-daemon".to_string()),
        "the file backend is mapped by the daemon"
    );
    // A new vmm-core (a live upgrade) takes the DIMMs over: it maps their memory (the
    // memfd and the file), the old one is gone, and the disk's daemon keeps them.
    let before = gw.vmm_pid();
    qmp.ok("__io.flotilla_vmm-upgrade", json!({}));
    assert_ne!(gw.vmm_pid(), before);
    // The daemon maps guest memory again once the new vmm-core connected to it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m2 = loop {
        let m2 = mapping(gateway_pid, "/memfd:flotilla-mem-m2");
        let ready = m2.iter().filter(|c| *c == "vmm-core").count() == 1
            && m2.iter().any(|c| c == "block-daemon");
        if ready || std::time::Instant::now() > deadline {
            break m2;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        m2.iter().filter(|c| *c == "vmm-core").count() == 1
            && m2.iter().any(|c| c == "block-daemon"),
        "who maps m2 after the upgrade: {m2:?}"
    );
    assert!(
        mapping(gateway_pid, &m3.display().to_string()).contains(&"vmm-core".to_string()),
        "the new vmm-core maps the file backend"
    );
    assert_eq!(qmp.ok("query-status", json!({}))["status"], "running");
    // Every answer and event as QEMU 7.2's.
    let theirs = on_qemu();
    assert_eq!(replies(&ours), replies(&theirs), "ours, then QEMU's");
    assert_eq!(ours.events, theirs.events, "ours, then QEMU's");
}

#[test]
fn without_slots_and_asked_again_as_on_qemu() {
    let gw = gateway("128", "scenario=idle", &["-S"]);
    let qemu = Qemu::pc_guest("scenario=idle", &[]);
    assert_eq!(
        mem_hotplug::without_slots(&mut gw.client()),
        mem_hotplug::without_slots(&mut qemu.client())
    );
    drop(gw);
    let gw = gateway(MEMORY, "scenario=idle", &["-S"]);
    mem_hotplug::asked_again(&mut gw.client());
}

#[test]
fn the_command_line_is_read_as_qemus_m() {
    // QEMU 7.2's words (tests of ipc's parser hold the rest).
    for (memory, error) in [
        ("128,slots=4", "slots specified but no max-size"),
        (
            "128,slots=300,maxmem=1G",
            "unsupported amount of memory slots: 300",
        ),
        (
            "128,maxmem=64M",
            "invalid value of maxmem: maximum memory size (0x4000000) must be at least the \
             initial memory size (0x8000000)",
        ),
        ("128,maxmem=1G,foo=1", "Invalid parameter 'foo'"),
    ] {
        let mut cmd = Command::new(bin("qmp-gateway"));
        cmd.arg("--kernel")
            .arg(test_guest())
            .args(["--memory", memory, "--serial", "none"]);
        let (status, _, err) = run_to_end(cmd, Duration::from_secs(20));
        assert!(!status.success(), "{memory} was taken");
        assert!(err.contains(error), "{memory}: {err}");
    }
}
