//! block-stream and block-commit through the gateway, on a chain base <- mid <- top
//! built with qemu-img so that the disk reads as P(SEED) while each image holds part of
//! it: base everything but [4, 8) and [10, 12) MiB, mid [4, 8), top [10, 12). After each job the
//! guest checks that the disk still reads P(SEED) (blk-pattern), also under a new daemon
//! that opened the shortened chain from scratch, and qemu-img sees the images' headers
//! name the new chain. A stream also runs beside a guest that writes and reads back
//! the whole disk (blk-verify-loop): a copy of old data never lands on what the guest
//! wrote. The stream and the commit each lose their daemon (SIGKILL) midway and go on
//! under the next one. Mirrors and a backup of the top alone (sync top) and a mirror
//! of what the guest writes (sync none) make targets that go over the chain, named in
//! their headers as QEMU's are.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_tests::blk::{pattern_image, qcow2_from_raw, qcow2_over, qemu_img, qemu_img_ok};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::TempDir;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
const SEED: u64 = 0x0c14_0003;
/// 16 MiB disks.
const SECTORS: u64 = 32768;
const MIB: usize = 1 << 20;

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A copy of `from` with `ranges` (MiB) zeroed.
fn zeroed(from: &Path, to: &Path, ranges: &[(usize, usize)]) {
    let mut data = std::fs::read(from).unwrap();
    for &(a, b) in ranges {
        data[a * MIB..b * MIB].fill(0);
    }
    std::fs::write(to, data).unwrap();
}

/// The chain's images (base, mid, top) and the raw P(SEED) they read as.
struct Chain {
    base: PathBuf,
    mid: PathBuf,
    top: PathBuf,
    pattern: PathBuf,
}

fn chain(dir: &Path) -> Chain {
    let pattern = dir.join("pattern.raw");
    pattern_image(&pattern, SEED, SECTORS);
    let base_src = dir.join("base-src.raw");
    zeroed(&pattern, &base_src, &[(4, 8), (10, 12)]);
    let c = Chain {
        base: dir.join("base.qcow2"),
        mid: dir.join("mid.qcow2"),
        top: dir.join("top.qcow2"),
        pattern,
    };
    qcow2_from_raw(&base_src, &c.base, None);
    let data = std::fs::read(&c.pattern).unwrap();
    for (image, backing, (a, b)) in [(&c.mid, &c.base, (4, 8)), (&c.top, &c.mid, (10, 12))] {
        qcow2_over(image, &p(backing));
        // P(SEED)'s bytes of [a, b) MiB, written there.
        let slice = dir.join("slice.bin");
        std::fs::write(&slice, &data[a * MIB..b * MIB]).unwrap();
        let out = std::process::Command::new(flotilla_tests::require_tool("qemu-io", "qemu-utils"))
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -q -s {} {a}M {}M", p(&slice), b - a))
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "qemu-io: {out:?}");
    }
    // What each holds, as planned.
    assert_eq!(allocated(&c.mid), 4 << 20, "mid holds [4, 8) MiB");
    assert_eq!(allocated(&c.top), 2 << 20, "top holds [10, 12) MiB");
    c
}

/// The bytes `image` holds itself (qemu-img map).
fn allocated(image: &Path) -> u64 {
    let map: Value =
        serde_json::from_str(&qemu_img_ok(&["map", "--output=json", "-U", &p(image)])).unwrap();
    map.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0 && e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

/// The gateway, stopped (-S), serving top.qcow2 as d0 to `scenario`.
fn serving(c: &Chain, scenario: &str) -> Gateway {
    serving_with(&c.top, scenario, "")
}

/// The gateway, stopped (-S), serving qcow2 image `top` as d0 (with drive options
/// `options`: `,key=value...`) to `scenario`.
fn serving_with(top: &Path, scenario: &str, options: &str) -> Gateway {
    Gateway::start_with(
        1,
        scenario,
        &[
            "-S",
            "--drive",
            &format!("file={},format=qcow2,id=d0{options}", p(top)),
        ],
    )
}

/// The disk's image in query-block.
fn inserted(c: &mut QmpClient) -> Value {
    c.ok("query-block", json!({}))[0]["inserted"].clone()
}

/// The backing file qemu-img reads from `image`'s header (None: none).
fn backing_of(image: &Path) -> Option<String> {
    header_backing(image).0
}

/// The backing file and its format that `image`'s header names.
fn header_backing(image: &Path) -> (Option<String>, Option<String>) {
    let info: Value =
        serde_json::from_str(&qemu_img_ok(&["info", "--output=json", "-U", &p(image)])).unwrap();
    let text = |key: &str| info[key].as_str().map(str::to_string);
    (text("backing-filename"), text("backing-filename-format"))
}

/// What QEMU's `command` (drive-mirror, drive-backup) with `sync` names in the header
/// of the target it creates for the chain's top: QEMU serves the chain (before the
/// gateway does, the images are locked) and the job is cancelled at once.
fn qemu_names_as_backing(c: &Chain, command: &str, sync: &str) -> (Option<String>, Option<String>) {
    let target = c.top.with_file_name(format!("qemu-{command}-{sync}.qcow2"));
    let qemu = Qemu::try_start(&[
        "-blockdev",
        &format!(
            "driver=qcow2,node-name=d0,file.driver=file,file.filename={}",
            p(&c.top)
        ),
    ])
    .unwrap_or_else(|e| panic!("QEMU did not open the chain: {e}"));
    let mut q = qemu.client();
    q.ok(
        command,
        json!({"device": "d0", "job-id": "q", "target": p(&target), "sync": sync, "speed": 1}),
    );
    q.ok("block-job-cancel", json!({"device": "q", "force": true}));
    q.event("BLOCK_JOB_CANCELLED");
    drop(q);
    drop(qemu);
    header_backing(&target)
}

/// `image` (through its chain) holds what blk-pattern wrote: P(SEED + 1), but for the
/// sectors [8, 24) it then discarded and zeroed (left out here).
fn holds_the_guests_writes(dir: &Path, image: &Path) {
    let written = dir.join("written.raw");
    pattern_image(&written, SEED + 1, SECTORS);
    let now = dir.join("image-now.raw");
    qemu_img_ok(&["convert", "-O", "raw", &p(image), &p(&now)]);
    let (a, b) = (
        std::fs::read(&now).unwrap(),
        std::fs::read(&written).unwrap(),
    );
    assert!(
        a[24 * 512..] == b[24 * 512..],
        "{} holds the guest's writes",
        image.display()
    );
}

/// SIGKILLs the disk's daemon and waits for the new one.
fn kill_daemon(gw: &Gateway, c: &mut QmpClient) {
    let daemon = flotilla_tests::procs::live_child(gw.vm.pid(), "block-daemon", TIMEOUT);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    );
    c.event("__io.flotilla_BLOCK_DAEMON_RESTARTED");
}

/// Lets the guest run blk-pattern: the disk must read P(SEED); it writes P(SEED + 1)
/// and powers off.
fn guest_reads_the_pattern(gw: &mut Gateway, c: &mut QmpClient) {
    c.ok("cont", json!({}));
    gw.vm.expect_prefix("GUEST BLK PATTERN OK", TIMEOUT);
    gw.vm.expect_prefix("GUEST POWEROFF", TIMEOUT);
    let t = gw.vm.transcript();
    assert!(
        !t.contains("FAILED") && !t.contains("GUEST ERROR") && !t.contains("mismatch"),
        "the guest saw errors:\n{t}"
    );
}

/// A new daemon opens the disk's chain from the gateway's layers and the guest reads
/// P(SEED) through it (blk-pattern: it then writes P(SEED + 1) and powers off); then
/// `images` check clean.
fn a_new_daemon_serves_the_pattern(mut gw: Gateway, mut c: QmpClient, images: &[&Path]) {
    kill_daemon(&gw, &mut c);
    guest_reads_the_pattern(&mut gw, &mut c);
    drop(c);
    drop(gw);
    for image in images {
        no_check_errors(image);
    }
}

/// qemu-img check finds no corruption (clusters a SIGKILLed daemon had set aside for
/// allocation are leaks, as after a crash of QEMU's).
fn no_check_errors(image: &Path) {
    let (ok, out, err) = qemu_img(&["check", &p(image)]);
    let only_leaks = !out.contains("ERROR") && out.contains("leaked clusters were found");
    assert!(
        ok || only_leaks,
        "qemu-img check {}: {out}{err}",
        image.display()
    );
}

#[test]
fn a_stream_copies_mid_into_top_across_a_daemon_restart_and_top_reads_through_base() {
    let dir = TempDir::new("chain-stream");
    let c0 = chain(dir.path());
    let gw = serving(&c0, &format!("scenario=blk-pattern seed={SEED:#x}"));
    let mut c = gw.client();
    c.ok(
        "block-stream",
        json!({"device": "d0", "base": p(&c0.base), "speed": 2 << 20}),
    );
    c.job_statuses_until("d0", "running");
    std::thread::sleep(Duration::from_millis(700));
    let before = c.ok("query-block-jobs", json!({}))[0].clone();
    assert_eq!(before["type"], "stream", "{before}");
    assert_eq!(before["len"], 16 << 20, "{before}");
    assert!(
        before["offset"].as_u64().unwrap() < 16 << 20,
        "held back by its speed: {before}"
    );
    // The chain may not change under the job.
    let busy = (
        "GenericError".to_string(),
        "Node 'd0' is busy: block device is in use by block job: stream".to_string(),
    );
    let overlay = p(&dir.path().join("overlay.qcow2"));
    assert_eq!(
        c.err(
            "blockdev-snapshot-sync",
            json!({"device": "d0", "snapshot-file": overlay, "format": "qcow2"})
        ),
        busy
    );
    assert_eq!(
        c.err(
            "change-backing-file",
            json!({"device": "d0", "image-node-name": "#block000", "backing-file": "x"})
        ),
        busy
    );
    kill_daemon(&gw, &mut c);
    assert_eq!(
        c.ok("query-block-jobs", json!({}))
            .as_array()
            .unwrap()
            .len(),
        1,
        "the job goes on under the new daemon"
    );
    c.ok("block-job-set-speed", json!({"device": "d0", "speed": 0}));
    assert_eq!(
        c.job_statuses_until("d0", "null"),
        ["waiting", "pending", "concluded", "null"]
    );
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert_eq!(done["data"]["type"], "stream", "{done}");
    assert_eq!(done["data"]["offset"], 16 << 20, "{done}");
    assert!(done["data"].get("error").is_none(), "{done}");
    let disk = inserted(&mut c);
    assert_eq!(disk["backing_file_depth"], 1, "{disk}");
    assert_eq!(
        disk["image"]["backing-image"]["filename"],
        p(&c0.base),
        "{disk}"
    );
    assert_eq!(
        backing_of(&c0.top),
        Some(p(&c0.base)),
        "top's header names base"
    );
    // A new daemon opens the shortened chain: the disk still reads P(SEED).
    a_new_daemon_serves_the_pattern(gw, c, &[&c0.top]);
}

#[test]
fn a_stream_of_a_read_only_disk_writes_its_top_and_serves_it_read_only_again() {
    let dir = TempDir::new("chain-stream-ro");
    let c0 = chain(dir.path());
    let mut gw = serving_with(
        &c0.top,
        &format!("scenario=blk-pattern seed={SEED:#x} check_only=1"),
        ",readonly=on",
    );
    let mut c = gw.client();
    assert_eq!(inserted(&mut c)["ro"], true);
    // As QEMU does for a drive opened read-only: the top is written for the job.
    c.ok(
        "block-stream",
        json!({"device": "d0", "base": p(&c0.base), "speed": 2 << 20}),
    );
    c.job_statuses_until("d0", "running");
    std::thread::sleep(Duration::from_millis(500));
    // The next daemon is given the top's read-write fd again.
    kill_daemon(&gw, &mut c);
    c.ok("block-job-set-speed", json!({"device": "d0", "speed": 0}));
    c.job_statuses_until("d0", "null");
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    let disk = inserted(&mut c);
    assert_eq!(
        (&disk["ro"], &disk["backing_file_depth"]),
        (&json!(true), &json!(1)),
        "{disk}"
    );
    assert_eq!(
        backing_of(&c0.top),
        Some(p(&c0.base)),
        "top's header names base"
    );
    assert_eq!(
        allocated(&c0.top),
        6 << 20,
        "top holds mid's [4, 8) MiB and its own"
    );
    // The daemon that ran it serves the top read-only again, through base: the guest
    // reads P(SEED) (and cannot write: check_only).
    guest_reads_the_pattern(&mut gw, &mut c);
    drop(c);
    drop(gw);
    no_check_errors(&c0.top);
}

#[test]
fn a_stream_that_cannot_start_leaves_the_read_only_top_locked_as_before() {
    let dir = TempDir::new("chain-stream-ro-fails");
    let c0 = chain(dir.path());
    let gw = serving_with(&c0.top, "", ",readonly=on");
    let mut c = gw.client();
    // No daemon to start the job on.
    let (class, _) = c.err(
        "__io.flotilla_block-daemon-restart",
        json!({"device": "d0", "binary": "/bin/false"}),
    );
    assert_eq!(class, "GenericError");
    let (class, _) = c.err("block-stream", json!({"device": "d0", "base": p(&c0.base)}));
    assert_eq!(class, "GenericError");
    // The top's read-only fd shares no writing again: qemu-io cannot open it to write.
    let out = std::process::Command::new(flotilla_tests::require_tool("qemu-io", "qemu-utils"))
        .args(["-f", "qcow2", "-c", "read 0 512"])
        .arg(&c0.top)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("lock"),
        "qemu-io opened the read-only disk's top to write: {out:?}"
    );
}

#[test]
fn a_stream_beside_a_guest_writing_the_whole_disk_loses_none_of_its_writes() {
    let dir = TempDir::new("chain-stream-writes");
    let c0 = chain(dir.path());
    let mut gw = serving(
        &c0,
        &format!("scenario=blk-verify-loop seed={SEED:#x} rounds=0"),
    );
    let mut c = gw.client();
    // No base: everything below the top is copied, the top ends with no backing file.
    c.ok("block-stream", json!({"device": "d0", "speed": 4 << 20}));
    c.job_statuses_until("d0", "running");
    c.ok("cont", json!({}));
    gw.vm.expect_prefix("GUEST BLK ROUND 1 OK", TIMEOUT);
    c.job_statuses_until("d0", "null");
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    let disk = inserted(&mut c);
    assert_eq!(disk["backing_file_depth"], 0, "{disk}");
    assert_eq!(backing_of(&c0.top), None, "top names no backing file");
    let round = flotilla_tests::blk::last_round(&gw.vm.transcript());
    gw.vm
        .expect_prefix(&format!("GUEST BLK ROUND {} OK", round + 2), TIMEOUT);
    let t = gw.vm.transcript();
    assert!(
        !t.contains("FAILED") && !t.contains("GUEST ERROR"),
        "the guest saw errors:\n{t}"
    );
    c.ok("stop", json!({}));
    drop(c);
    drop(gw);
    no_check_errors(&c0.top);
}

#[test]
fn a_commit_of_mid_into_base_leaves_top_over_base() {
    let dir = TempDir::new("chain-commit");
    let c0 = chain(dir.path());
    let gw = serving(&c0, &format!("scenario=blk-pattern seed={SEED:#x}"));
    let mut c = gw.client();
    c.ok(
        "block-commit",
        json!({"device": "d0", "job-id": "c1", "top": p(&c0.mid), "base": p(&c0.base),
               "speed": 1 << 20}),
    );
    assert_eq!(
        c.job_statuses_until("c1", "running"),
        ["created", "running"]
    );
    std::thread::sleep(Duration::from_millis(700));
    let before = c.ok("query-block-jobs", json!({}))[0].clone();
    assert_eq!(before["type"], "commit", "{before}");
    // Base is written through the job's own fd, which the new daemon gets too.
    kill_daemon(&gw, &mut c);
    c.ok("block-job-set-speed", json!({"device": "c1", "speed": 0}));
    assert_eq!(
        c.job_statuses_until("c1", "null"),
        ["waiting", "pending", "concluded", "null"]
    );
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert_eq!(done["data"]["type"], "commit", "{done}");
    assert!(done["data"].get("error").is_none(), "{done}");
    let disk = inserted(&mut c);
    assert_eq!(disk["backing_file_depth"], 1, "{disk}");
    assert_eq!(
        backing_of(&c0.top),
        Some(p(&c0.base)),
        "top's header names base"
    );
    // Base alone holds what mid held.
    let mid_view = dir.path().join("mid-view.raw");
    qemu_img_ok(&["convert", "-U", "-O", "raw", &p(&c0.base), &p(&mid_view)]);
    let data = std::fs::read(&mid_view).unwrap();
    let pattern = std::fs::read(&c0.pattern).unwrap();
    assert!(
        data[4 * MIB..8 * MIB] == pattern[4 * MIB..8 * MIB],
        "base holds mid's [4, 8) MiB"
    );
    a_new_daemon_serves_the_pattern(gw, c, &[&c0.base, &c0.top]);
}

/// A chain whose base is half the disk: base (8 MiB) holds P(SEED)'s first 8 MiB, top
/// (16 MiB, over base) the rest. Returns (base, top, pattern).
fn small_base_chain(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let pattern = dir.join("pattern.raw");
    pattern_image(&pattern, SEED, SECTORS);
    let data = std::fs::read(&pattern).unwrap();
    let half = dir.join("half.raw");
    std::fs::write(&half, &data[..8 * MIB]).unwrap();
    let (base, top) = (dir.join("base.qcow2"), dir.join("top.qcow2"));
    qcow2_from_raw(&half, &base, None);
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &p(&base),
        "-F",
        "qcow2",
        &p(&top),
        "16M",
    ]);
    let slice = dir.join("slice.bin");
    std::fs::write(&slice, &data[8 * MIB..]).unwrap();
    let out = std::process::Command::new(flotilla_tests::require_tool("qemu-io", "qemu-utils"))
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -q -s {} 8M 8M", p(&slice)))
        .arg(&top)
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-io: {out:?}");
    (base, top, pattern)
}

/// The virtual size qemu-img reads from `image`'s header.
fn virtual_size(image: &Path) -> u64 {
    let info: Value =
        serde_json::from_str(&qemu_img_ok(&["info", "--output=json", "-U", &p(image)])).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

#[test]
fn an_active_commit_into_a_smaller_base_grows_it_first() {
    let dir = TempDir::new("chain-small-base");
    let (base, top, _) = small_base_chain(dir.path());
    assert_eq!(virtual_size(&base), 8 << 20);
    let gw = serving_with(&top, &format!("scenario=blk-pattern seed={SEED:#x}"), "");
    let mut c = gw.client();
    c.ok("block-commit", json!({"device": "d0"}));
    c.job_statuses_until("d0", "ready");
    c.ok("block-job-complete", json!({"device": "d0"}));
    c.job_statuses_until("d0", "null");
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    let disk = inserted(&mut c);
    assert_eq!(disk["file"], p(&base), "the disk serves base: {disk}");
    assert_eq!(disk["image"]["virtual-size"], 16 << 20, "{disk}");
    assert_eq!(
        virtual_size(&base),
        16 << 20,
        "base grew to the disk's size"
    );
    // Base alone reads P(SEED), its second half too, also under a new daemon.
    a_new_daemon_serves_the_pattern(gw, c, &[&base]);
}

#[test]
fn a_commit_below_the_top_into_a_smaller_base_grows_it_first() {
    let dir = TempDir::new("chain-small-base-below");
    let (base, mid, _) = small_base_chain(dir.path());
    // An empty overlay over it: the commit takes mid (its second half) into base.
    let top = dir.path().join("over.qcow2");
    qcow2_over(&top, &p(&mid));
    let gw = serving_with(&top, &format!("scenario=blk-pattern seed={SEED:#x}"), "");
    let mut c = gw.client();
    c.ok(
        "block-commit",
        json!({"device": "d0", "job-id": "c", "top": p(&mid), "base": p(&base)}),
    );
    c.job_statuses_until("c", "null");
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    assert_eq!(
        virtual_size(&base),
        16 << 20,
        "base grew to the disk's size"
    );
    let disk = inserted(&mut c);
    assert_eq!(disk["backing_file_depth"], 1, "{disk}");
    assert_eq!(
        disk["image"]["backing-image"]["virtual-size"],
        16 << 20,
        "{disk}"
    );
    a_new_daemon_serves_the_pattern(gw, c, &[&base]);
}

#[test]
fn an_active_commit_becomes_ready_and_completes_onto_base() {
    let dir = TempDir::new("chain-active-commit");
    let c0 = chain(dir.path());
    let gw = serving(&c0, &format!("scenario=blk-pattern seed={SEED:#x}"));
    let mut c = gw.client();
    c.ok("block-commit", json!({"device": "d0"}));
    assert_eq!(
        c.job_statuses_until("d0", "ready"),
        ["created", "running", "ready"]
    );
    let ready = c.event("BLOCK_JOB_READY");
    assert_eq!(ready["data"]["type"], "commit", "{ready}");
    c.ok("block-job-complete", json!({"device": "d0"}));
    c.job_statuses_until("d0", "null");
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    let disk = inserted(&mut c);
    assert_eq!(disk["backing_file_depth"], 0, "{disk}");
    assert_eq!(disk["file"], p(&c0.base), "the disk serves base: {disk}");
    // Base alone reads P(SEED) now, also for a new daemon.
    a_new_daemon_serves_the_pattern(gw, c, &[&c0.base]);
    holds_the_guests_writes(dir.path(), &c0.base);
}

#[test]
fn a_top_mirror_copies_what_top_holds_and_completes_over_the_same_backing_chain() {
    let dir = TempDir::new("chain-mirror-top");
    let c0 = chain(dir.path());
    let qemus = qemu_names_as_backing(&c0, "drive-mirror", "top");
    let mut gw = serving(&c0, &format!("scenario=blk-pattern seed={SEED:#x}"));
    let mut c = gw.client();
    let target = dir.path().join("mt.qcow2");
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "job-id": "m", "target": p(&target), "sync": "top"}),
    );
    assert_eq!(
        header_backing(&target),
        qemus,
        "the new target names what QEMU's names"
    );
    assert_eq!(qemus.0, Some(p(&c0.mid)), "the source's backing file");
    c.job_statuses_until("m", "ready");
    let ready = c.event("BLOCK_JOB_READY");
    assert_eq!(ready["data"]["len"], 2 << 20, "what top holds: {ready}");
    c.ok("block-job-complete", json!({"device": "m"}));
    c.job_statuses_until("m", "null");
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    let disk = inserted(&mut c);
    assert_eq!(disk["file"], p(&target), "{disk}");
    assert_eq!(disk["backing_file"], p(&c0.mid), "{disk}");
    assert_eq!(disk["backing_file_depth"], 2, "{disk}");
    assert_eq!(
        allocated(&target),
        2 << 20,
        "the target holds top's [10, 12) MiB"
    );
    // The daemon that pivoted reads through mid and base: the disk reads P(SEED) (a
    // new daemon's chain from the gateway is the none mirror's test).
    guest_reads_the_pattern(&mut gw, &mut c);
    drop(c);
    drop(gw);
    no_check_errors(&target);
    // The guest's writes went to the target: the old top still reads P(SEED).
    qemu_img_ok(&["compare", &p(&c0.top), &p(&c0.pattern)]);
}

#[test]
fn a_none_mirror_completes_onto_an_overlay_of_the_source() {
    let dir = TempDir::new("chain-mirror-none");
    let c0 = chain(dir.path());
    let qemus = qemu_names_as_backing(&c0, "drive-mirror", "none");
    let gw = serving(&c0, &format!("scenario=blk-pattern seed={SEED:#x}"));
    let mut c = gw.client();
    let target = dir.path().join("over.qcow2");
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&target), "sync": "none"}),
    );
    assert_eq!(header_backing(&target), qemus, "as QEMU's target");
    assert_eq!(qemus.0, Some(p(&c0.top)), "the source");
    c.job_statuses_until("d0", "ready");
    let ready = c.event("BLOCK_JOB_READY");
    assert_eq!(ready["data"]["len"], 0, "nothing written yet: {ready}");
    c.ok("block-job-complete", json!({"device": "d0"}));
    c.job_statuses_until("d0", "null");
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    let disk = inserted(&mut c);
    assert_eq!(disk["file"], p(&target), "{disk}");
    assert_eq!(disk["backing_file"], p(&c0.top), "{disk}");
    assert_eq!(disk["backing_file_depth"], 3, "{disk}");
    // The guest reads P(SEED) through the overlay, also under a new daemon, and
    // writes P(SEED + 1) into it.
    a_new_daemon_serves_the_pattern(gw, c, &[&target, &c0.top]);
    qemu_img_ok(&["compare", &p(&c0.top), &p(&c0.pattern)]);
    holds_the_guests_writes(dir.path(), &target);
}

#[test]
fn a_top_backup_holds_what_top_held_at_its_start_over_the_same_backing_file() {
    let dir = TempDir::new("chain-backup-top");
    let c0 = chain(dir.path());
    let qemus = qemu_names_as_backing(&c0, "drive-backup", "top");
    let mut gw = serving(
        &c0,
        &format!("scenario=blk-verify-loop seed={SEED:#x} rounds=0"),
    );
    let mut c = gw.client();
    let target = dir.path().join("bt.qcow2");
    // Slow: the guest overwrites [10, 12) MiB before the job's thread gets there, so
    // its writes copy the old data first.
    c.ok(
        "drive-backup",
        json!({"device": "d0", "job-id": "b", "target": p(&target), "sync": "top",
               "speed": 256 << 10}),
    );
    c.job_statuses_until("b", "running");
    assert_eq!(header_backing(&target), qemus, "as QEMU's target");
    assert_eq!(qemus.0, Some(p(&c0.mid)), "the source's backing file");
    let listed = c.ok("query-block-jobs", json!({}));
    assert_eq!(listed[0]["len"], 2 << 20, "what top holds: {listed}");
    // The job holds its target (QEMU 7.2's words, seen live for a backup's target).
    let nodes = c.ok("query-named-block-nodes", json!({}));
    let node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["drv"] == "qcow2" && n["file"].as_str().unwrap().contains("bt.qcow2"))
        .unwrap_or_else(|| panic!("the target's node: {nodes}"))["node-name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        c.err("blockdev-del", json!({"node-name": node})),
        (
            "GenericError".to_string(),
            format!("Node '{node}' is busy: block device is in use by block job: backup")
        )
    );
    assert_eq!(
        c.err("block_resize", json!({"node-name": node, "size": 32 << 20}))
            .1,
        "Device '(null)' is in use"
    );
    c.ok("cont", json!({}));
    gw.vm.expect_prefix("GUEST BLK ROUND 1 OK", TIMEOUT);
    c.ok("block-job-set-speed", json!({"device": "b", "speed": 0}));
    c.job_statuses_until("b", "null");
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    assert_eq!(done["data"]["offset"], 2 << 20, "{done}");
    c.ok("stop", json!({}));
    let t = gw.vm.transcript();
    assert!(
        !t.contains("FAILED") && !t.contains("GUEST ERROR"),
        "the guest saw errors:\n{t}"
    );
    drop(c);
    drop(gw);
    no_check_errors(&target);
    assert_eq!(
        allocated(&target),
        2 << 20,
        "the target holds top's [10, 12) MiB"
    );
    // Over mid and base, the backup reads as the disk did at the start: P(SEED).
    qemu_img_ok(&["compare", &p(&target), &p(&c0.pattern)]);
}
