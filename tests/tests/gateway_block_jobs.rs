//! Block jobs through the gateway while the test guest writes and verifies the whole
//! disk round after round (blk-verify-loop): a mirror that becomes ready, follows the
//! guest, and completes onto its target (qemu-img compare: the target holds exactly the
//! source at the completion, and the guest goes on, on the target, with no error); a
//! ready mirror cancelled (a consistent copy, BLOCK_JOB_COMPLETED) and one cancelled
//! before it was ready (BLOCK_JOB_CANCELLED, the disk untouched); a mirror whose block
//! daemon is SIGKILLed while it copies, which the new daemon carries on; pause, resume,
//! set-speed, and the errors of a second job, an unknown one, a complete too early; a
//! bitmap on a mirror's target node, marked by the disk's daemon from the pivot on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_tests::blk::{md5_hex, pattern_image, qcow2_over, qemu_img, qemu_img_ok};
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::TempDir;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
const SEED: u64 = 0x0c14_0002;
/// 16 MiB disks.
const SECTORS: u64 = 32768;

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// The gateway, stopped (-S), serving a raw image of P(SEED) as d0 to an endless verify
/// loop; the image's path.
fn verifying(dir: &Path) -> (Gateway, PathBuf) {
    let image = dir.join("d0.raw");
    pattern_image(&image, SEED, SECTORS);
    let gw = Gateway::start_with(
        1,
        &format!("scenario=blk-verify-loop seed={SEED:#x} rounds=0"),
        &[
            "-S",
            "--drive",
            &format!("file={},format=raw,id=d0", p(&image)),
        ],
    );
    (gw, image)
}

/// The last round the guest finished.
fn last_round(gw: &Gateway) -> u32 {
    flotilla_tests::blk::last_round(&gw.vm.transcript())
}

/// Lets the guest write the whole disk twice more.
fn two_rounds(gw: &mut Gateway) {
    let target = last_round(gw) + 2;
    gw.vm
        .expect_prefix(&format!("GUEST BLK ROUND {target} OK"), TIMEOUT);
}

/// Stops the VM: the guest's requests are done when stop returns (it drains the
/// disks, as QEMU's), so the write counter holds still from there.
fn stop_settled(c: &mut QmpClient) {
    c.ok("stop", json!({}));
    let writes = |c: &mut QmpClient| {
        c.ok("query-blockstats", json!({}))[0]["stats"]["wr_operations"]
            .as_u64()
            .unwrap()
    };
    let at_stop = writes(c);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(writes(c), at_stop, "writes landed after stop returned");
}

/// The nice value of the daemon's thread named block-job.
fn job_thread_nice(daemon: i32) -> i64 {
    for task in std::fs::read_dir(format!("/proc/{daemon}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "block-job" {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Field 19 (nice), counted after the ")" that ends the name.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .collect();
            return fields[16].parse().unwrap();
        }
    }
    panic!("no block-job thread in block-daemon {daemon}");
}

fn no_guest_errors(gw: &Gateway) {
    let t = gw.vm.transcript();
    assert!(
        !t.contains("FAILED") && !t.contains("GUEST ERROR"),
        "the guest saw errors:\n{t}"
    );
}

/// `qemu-img compare` of two raw images: identical.
fn identical(a: &Path, b: &Path) {
    let (ok, out, err) = qemu_img(&["compare", "-f", "raw", "-F", "raw", &p(a), &p(b)]);
    assert!(ok, "{} and {} differ: {out}{err}", a.display(), b.display());
}

fn md5_of(path: &Path) -> String {
    md5_hex(&std::fs::read(path).unwrap())
}

fn jobs(c: &mut QmpClient) -> Vec<Value> {
    c.ok("query-block-jobs", json!({}))
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_mirror_follows_the_guest_and_completes_onto_its_target() {
    let dir = TempDir::new("jobs-mirror");
    let (mut gw, source) = verifying(dir.path());
    let mut c = gw.client();
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    let target = dir.path().join("target.raw");
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&target), "sync": "full", "format": "raw"}),
    );
    assert_eq!(
        c.job_statuses_until("d0", "ready"),
        ["created", "running", "ready"]
    );
    let ready = c.event("BLOCK_JOB_READY");
    assert_eq!(ready["data"]["type"], "mirror");
    assert_eq!(ready["data"]["device"], "d0");
    let listed = jobs(&mut c);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let job = &listed[0];
    assert_eq!(
        (&job["type"], &job["device"], &job["ready"], &job["status"]),
        (
            &json!("mirror"),
            &json!("d0"),
            &json!(true),
            &json!("ready")
        ),
        "{job}"
    );
    assert!(job["offset"].as_u64().unwrap() >= SECTORS * 512, "{job}");
    // The generic job layer's view (libvirt reads it when it reconnects to a VM). The
    // guest goes on writing, so the progress moves between the two queries.
    let generic = c.ok("query-jobs", json!({}));
    let [info] = generic.as_array().map(Vec::as_slice).unwrap_or_default() else {
        panic!("query-jobs: {generic}")
    };
    assert_eq!(
        (&info["id"], &info["type"], &info["status"]),
        (&json!("d0"), &json!("mirror"), &json!("ready")),
        "{info}"
    );
    let (done, total) = (
        info["current-progress"].as_u64().unwrap_or(0),
        info["total-progress"].as_u64().unwrap_or(0),
    );
    assert!(SECTORS * 512 <= done && done <= total, "{info}");
    // The mirror follows the guest's writes while it runs.
    two_rounds(&mut gw);
    // Then it is held back (1 byte/s): what the guest writes now is copied when the
    // job completes, with the device quiesced.
    c.ok("block-job-set-speed", json!({"device": "d0", "speed": 1}));
    two_rounds(&mut gw);
    stop_settled(&mut c);
    let behind = jobs(&mut c).remove(0);
    assert!(
        behind["len"].as_u64().unwrap() > behind["offset"].as_u64().unwrap(),
        "the mirror kept up at 1 byte/s: {behind}"
    );
    c.ok("block-job-complete", json!({"device": "d0"}));
    assert_eq!(
        c.job_statuses_until("d0", "null"),
        ["waiting", "pending", "concluded", "null"]
    );
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    assert!(jobs(&mut c).is_empty());
    identical(&source, &target);
    let inserted = &c.ok("query-block", json!({}))[0]["inserted"];
    assert_eq!(inserted["file"], p(&target), "{inserted}");
    // The guest goes on, on the target; the source stays as it was at the completion.
    let source_then = md5_of(&source);
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    stop_settled(&mut c);
    assert_eq!(
        md5_of(&source),
        source_then,
        "the source was written after the pivot"
    );
    assert_ne!(
        md5_of(&target),
        source_then,
        "the guest's writes did not reach the target"
    );
    no_guest_errors(&gw);
}

/// The bitmap of one name on the disk's node in query-block.
fn bitmap_count(c: &mut QmpClient, name: &str) -> Option<u64> {
    let blocks = c.ok("query-block", json!({}));
    let bitmaps = blocks[0]["inserted"]["dirty-bitmaps"].as_array()?.clone();
    (bitmaps.iter())
        .find(|b| b["name"] == name)
        .and_then(|b| b["count"].as_u64())
}

/// libvirt's temporary bitmap on a copy's target, a node no disk uses until the pivot:
/// kept by the gateway, marked by nobody while the job runs, then the disk's and marked
/// by its daemon (the guest writes the whole disk each round).
#[test]
fn a_bitmap_on_a_mirrors_target_is_marked_from_the_pivot() {
    let dir = TempDir::new("jobs-target-bitmap");
    let (mut gw, _) = verifying(dir.path());
    let mut c = gw.client();
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    let target = dir.path().join("target.raw");
    pattern_image(&target, 0, SECTORS);
    c.ok(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "copy",
               "file": {"driver": "file", "filename": p(&target)}}),
    );
    c.ok(
        "blockdev-mirror",
        json!({"job-id": "m", "device": "d0", "target": "copy", "sync": "full"}),
    );
    c.job_statuses_until("m", "ready");
    stop_settled(&mut c);
    c.ok(
        "block-dirty-bitmap-add",
        json!({"node": "copy", "name": "libvirt-tmp-activewrite"}),
    );
    c.ok("block-job-complete", json!({"device": "m"}));
    c.job_statuses_until("m", "null");
    assert_eq!(bitmap_count(&mut c, "libvirt-tmp-activewrite"), Some(0));
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    stop_settled(&mut c);
    assert_eq!(
        bitmap_count(&mut c, "libvirt-tmp-activewrite"),
        Some(SECTORS * 512),
        "the guest's writes after the pivot were not marked"
    );
    no_guest_errors(&gw);
}

#[test]
fn cancelled_mirrors_leave_the_disk_alone_and_a_ready_one_a_consistent_copy() {
    let dir = TempDir::new("jobs-cancel");
    let (mut gw, source) = verifying(dir.path());
    let mut c = gw.client();
    c.ok("cont", json!({}));
    two_rounds(&mut gw);

    // Before it is ready (1 MiB/s over 16 MiB): cancelled, nothing changes for the disk.
    let slow = dir.path().join("slow.raw");
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "job-id": "slow", "target": p(&slow), "sync": "full", "speed": 1 << 20}),
    );
    assert_eq!(
        c.job_statuses_until("slow", "running"),
        ["created", "running"]
    );
    let (class, desc) = c.err("block-job-complete", json!({"device": "slow"}));
    assert_eq!(
        (class.as_str(), desc.as_str()),
        (
            "GenericError",
            "Job 'slow' in state 'running' cannot accept command verb 'complete'"
        )
    );
    c.ok("block-job-pause", json!({"device": "slow"}));
    assert_eq!(c.job_statuses_until("slow", "paused"), ["paused"]);
    let job = jobs(&mut c).remove(0);
    assert_eq!(
        (&job["paused"], &job["status"]),
        (&json!(true), &json!("paused")),
        "{job}"
    );
    c.ok("block-job-resume", json!({"device": "slow"}));
    assert_eq!(c.job_statuses_until("slow", "running"), ["running"]);
    c.ok("block-job-cancel", json!({"device": "slow"}));
    assert_eq!(
        c.job_statuses_until("slow", "null"),
        ["aborting", "concluded", "null"]
    );
    let cancelled = c.event("BLOCK_JOB_CANCELLED");
    let (offset, len) = (
        cancelled["data"]["offset"].as_u64().unwrap(),
        cancelled["data"]["len"].as_u64().unwrap(),
    );
    assert!(offset < len, "cancelled before the end: {cancelled}");
    assert_eq!(
        c.ok("query-block", json!({}))[0]["inserted"]["file"],
        p(&source)
    );
    let (class, _) = c.err("block-job-cancel", json!({"device": "slow"}));
    assert_eq!(class, "DeviceNotActive", "the job is gone");

    // Ready, then cancelled: the target is the disk as it was at the cancel.
    let copy = dir.path().join("copy.raw");
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&copy), "sync": "full"}),
    );
    c.job_statuses_until("d0", "ready");
    c.event("BLOCK_JOB_READY");
    two_rounds(&mut gw);
    stop_settled(&mut c);
    c.ok("block-job-cancel", json!({"device": "d0"}));
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    identical(&source, &copy);
    assert_eq!(
        c.ok("query-block", json!({}))[0]["inserted"]["file"],
        p(&source)
    );
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    no_guest_errors(&gw);
}

#[test]
fn a_mirror_goes_on_under_a_new_daemon_after_a_sigkill() {
    let dir = TempDir::new("jobs-restart");
    let (mut gw, source) = verifying(dir.path());
    let mut c = gw.client();
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    let target = dir.path().join("target.raw");
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&target), "sync": "full", "speed": 4 << 20}),
    );
    c.job_statuses_until("d0", "running");
    std::thread::sleep(Duration::from_millis(500));
    let before = jobs(&mut c).remove(0);
    assert!(before["offset"].as_u64().unwrap() > 0, "{before}");
    let daemon = flotilla_tests::procs::live_child(gw.vm.pid(), "block-daemon", TIMEOUT);
    assert_eq!(
        job_thread_nice(daemon),
        5,
        "the job copies at a lower priority than the guest's requests"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    );
    c.event("__io.flotilla_BLOCK_DAEMON_RESTARTED");
    let after = jobs(&mut c);
    assert_eq!(after.len(), 1, "the job goes on: {after:?}");
    c.ok("block-job-set-speed", json!({"device": "d0", "speed": 0}));
    c.job_statuses_until("d0", "ready");
    two_rounds(&mut gw);
    stop_settled(&mut c);
    c.ok("block-job-complete", json!({"device": "d0"}));
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    identical(&source, &target);
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    no_guest_errors(&gw);
}

#[test]
fn a_job_whose_disk_has_no_daemon_is_cancelled_by_the_gateway() {
    let dir = TempDir::new("jobs-no-daemon");
    let (gw, _source) = verifying(dir.path());
    let mut c = gw.client();
    slow_mirror(&mut c, dir.path());
    // A restart with a binary that does not start: the disk has no daemon (until one
    // is started over QMP), and a cancel must not wait for one.
    let (class, _) = c.err(
        "__io.flotilla_block-daemon-restart",
        json!({"device": "d0", "binary": "/bin/false"}),
    );
    assert_eq!(class, "GenericError");
    c.ok("block-job-cancel", json!({"device": "d0"}));
    assert_eq!(
        c.job_statuses_until("d0", "null"),
        ["aborting", "concluded", "null"]
    );
    let cancelled = c.event("BLOCK_JOB_CANCELLED");
    assert_eq!(cancelled["data"]["device"], "d0", "{cancelled}");
    assert!(jobs(&mut c).is_empty());
    // A good daemon again: it is not given the job back.
    c.ok(
        "__io.flotilla_block-daemon-restart",
        json!({"device": "d0", "binary": flotilla_tests::bin("block-daemon").to_string_lossy()}),
    );
    assert!(jobs(&mut c).is_empty());
}

#[test]
fn a_completion_asked_while_no_daemon_runs_is_carried_out_by_the_next() {
    let dir = TempDir::new("jobs-complete-no-daemon");
    let (gw, source) = verifying(dir.path());
    let mut c = gw.client();
    let target = dir.path().join("t.raw");
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&target), "format": "raw", "sync": "full"}),
    );
    c.job_statuses_until("d0", "ready");
    let (class, _) = c.err(
        "__io.flotilla_block-daemon-restart",
        json!({"device": "d0", "binary": "/bin/false"}),
    );
    assert_eq!(class, "GenericError");
    c.ok("block-job-complete", json!({"device": "d0"}));
    c.ok(
        "__io.flotilla_block-daemon-restart",
        json!({"device": "d0", "binary": flotilla_tests::bin("block-daemon").to_string_lossy()}),
    );
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");
    let inserted = &c.ok("query-block", json!({}))[0]["inserted"];
    assert_eq!(inserted["file"], p(&target), "{inserted}");
    identical(&source, &target);
}

#[test]
fn a_paused_job_stays_paused_under_a_new_daemon() {
    let dir = TempDir::new("jobs-paused-restart");
    let (gw, _source) = verifying(dir.path());
    let mut c = gw.client();
    slow_mirror(&mut c, dir.path());
    c.ok("block-job-pause", json!({"device": "d0"}));
    assert_eq!(c.job_statuses_until("d0", "paused"), ["paused"]);
    let daemon = flotilla_tests::procs::live_child(gw.vm.pid(), "block-daemon", TIMEOUT);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    );
    c.event("__io.flotilla_BLOCK_DAEMON_RESTARTED");
    // The new daemon holds the job where it was: no byte copied in half a second at
    // 1 MiB/s.
    let before = jobs(&mut c).remove(0);
    assert_eq!(before["paused"], true, "{before}");
    std::thread::sleep(Duration::from_millis(500));
    let after = jobs(&mut c).remove(0);
    assert_eq!(after["offset"], before["offset"], "{before} then {after}");
    c.ok("block-job-resume", json!({"device": "d0"}));
    c.ok("block-job-set-speed", json!({"device": "d0", "speed": 0}));
    c.job_statuses_until("d0", "ready");
    c.ok("block-job-cancel", json!({"device": "d0"}));
    c.event("BLOCK_JOB_COMPLETED");
}

/// Starts a mirror of d0 to t.raw in `dir` at 1 MiB/s and waits until it runs.
fn slow_mirror(c: &mut QmpClient, dir: &Path) {
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&dir.join("t.raw")), "format": "raw",
               "sync": "full", "speed": 1 << 20}),
    );
    c.job_statuses_until("d0", "running");
}

/// The guest's disk now, copied aside (the VM is stopped).
fn copy_aside(source: &Path, to: &Path) -> PathBuf {
    std::fs::copy(source, to).unwrap();
    to.to_path_buf()
}

/// `qemu-img compare` of `image` (qcow2, through its backing chain) with a raw copy.
fn holds(image: &Path, reference: &Path) {
    let (ok, out, err) = qemu_img(&["compare", "-F", "raw", &p(image), &p(reference)]);
    assert!(
        ok,
        "{} does not hold {}: {out}{err}",
        image.display(),
        reference.display()
    );
}

/// Waits for job `id`'s BLOCK_JOB_COMPLETED (no error).
fn completed(c: &mut QmpClient, id: &str) {
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert_eq!(done["data"]["device"], id, "{done}");
    assert_eq!(done["data"]["type"], "backup", "{done}");
    assert!(done["data"].get("error").is_none(), "{done}");
    assert_eq!(c.job_statuses_until(id, "null").last().unwrap(), "null");
}

#[test]
fn a_compressed_backup_holds_its_point_in_time_in_compressed_clusters() {
    let dir = TempDir::new("jobs-backup-compress");
    // Bytes that deflate well (the guest's pattern does not: what it writes while the
    // job runs is copied before, as the old bytes).
    let source = dir.path().join("d0.raw");
    let motif = b"a backup of flotilla, compressed ";
    let text: Vec<u8> = (0..SECTORS as usize * 512)
        .map(|i| motif[i % motif.len()])
        .collect();
    std::fs::write(&source, &text).unwrap();
    let reference = copy_aside(&source, &dir.path().join("ref.raw"));
    let mut gw = Gateway::start_with(
        1,
        &format!("scenario=blk-verify-loop seed={SEED:#x} rounds=0"),
        &[
            "-S",
            "--drive",
            &format!("file={},format=raw,id=d0", p(&source)),
        ],
    );
    let mut c = gw.client();
    let target = dir.path().join("c.qcow2");
    c.ok(
        "drive-backup",
        json!({"device": "d0", "job-id": "c", "target": p(&target), "format": "qcow2",
               "sync": "full", "compress": true, "speed": 4 << 20}),
    );
    c.ok("cont", json!({}));
    completed(&mut c, "c");
    stop_settled(&mut c);
    holds(&target, &reference);
    let check = qemu_img_ok(&["check", "-U", &p(&target)]);
    assert!(check.contains("100.00% compressed clusters"), "{check}");
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    no_guest_errors(&gw);
}

#[test]
fn an_incremental_with_a_fine_bitmap_writes_whole_clusters_over_the_last_backup() {
    let dir = TempDir::new("jobs-backup-fine");
    let source = dir.path().join("d0.raw");
    pattern_image(&source, SEED, SECTORS);
    // Random 4 KiB writes (blk-bench's third workload), held to 200 a second: a few
    // hundred scattered writes, each a part of a 64 KiB cluster.
    let mut gw = Gateway::start_with(
        1,
        "scenario=blk-bench bench_ms=20000 workload=3",
        &[
            "-S",
            "--drive",
            &format!("file={},format=raw,id=d0", p(&source)),
        ],
    );
    let mut c = gw.client();
    let full = dir.path().join("full.qcow2");
    let action = |kind: &str, data: Value| json!({"type": kind, "data": data});
    c.ok(
        "transaction",
        json!({"actions": [
            action("block-dirty-bitmap-add", json!({"node": "d0", "name": "b0", "granularity": 4096})),
            action("drive-backup", json!({"device": "d0", "job-id": "full", "target": p(&full), "format": "qcow2", "sync": "full"})),
        ]}),
    );
    completed(&mut c, "full");
    c.ok(
        "block_set_io_throttle",
        json!({"device": "d0", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 200, "iops_rd": 0, "iops_wr": 0}),
    );
    c.ok("cont", json!({}));
    gw.vm.expect_prefix("GUEST READY", TIMEOUT);
    std::thread::sleep(Duration::from_millis(1000));
    stop_settled(&mut c);
    let written = c.ok("query-blockstats", json!({}))[0]["stats"]["wr_operations"]
        .as_u64()
        .unwrap();
    assert!(written > 20, "the guest wrote {written} times");
    let reference = copy_aside(&source, &dir.path().join("ref.raw"));
    // The incremental goes over the full backup (64 KiB clusters): each 4 KiB chunk
    // the bitmap names is in a cluster the target writes whole, or its other 60 KiB
    // would read as zeroes instead of the full backup's data.
    let inc = dir.path().join("inc.qcow2");
    qcow2_over(&inc, &p(&full));
    c.ok(
        "drive-backup",
        json!({"device": "d0", "job-id": "inc", "target": p(&inc), "format": "qcow2",
               "mode": "existing", "sync": "incremental", "bitmap": "b0"}),
    );
    completed(&mut c, "inc");
    holds(&inc, &reference);
}

#[test]
fn backups_hold_their_point_in_time_and_incrementals_chain() {
    let dir = TempDir::new("jobs-backup");
    let (mut gw, source) = verifying(dir.path());
    let mut c = gw.client();
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    stop_settled(&mut c);

    // A full backup and a new bitmap in one step; slow enough (8 MiB/s) that the guest
    // overwrites the disk while it runs: each write copies the old data first.
    let ref0 = copy_aside(&source, &dir.path().join("ref0.raw"));
    let full = dir.path().join("full.qcow2");
    let action = |kind: &str, data: Value| json!({"type": kind, "data": data});
    c.ok(
        "transaction",
        json!({"actions": [
            action("block-dirty-bitmap-add", json!({"node": "d0", "name": "b0"})),
            action("drive-backup", json!({"device": "d0", "job-id": "full", "target": p(&full), "format": "qcow2", "sync": "full", "speed": 8 << 20})),
        ]}),
    );
    let listed = jobs(&mut c);
    assert_eq!(
        (&listed[0]["type"], &listed[0]["device"]),
        (&json!("backup"), &json!("full"))
    );
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    completed(&mut c, "full");
    holds(&full, &ref0);

    // Three incrementals, each the guest's writes since the one before.
    let mut previous = full;
    for i in 1..=3 {
        two_rounds(&mut gw);
        stop_settled(&mut c);
        let reference = copy_aside(&source, &dir.path().join(format!("ref{i}.raw")));
        let inc = dir.path().join(format!("inc{i}.qcow2"));
        c.ok(
            "drive-backup",
            json!({"device": "d0", "job-id": format!("inc{i}"), "target": p(&inc), "format": "qcow2", "sync": "incremental", "bitmap": "b0", "speed": 8 << 20}),
        );
        let busy = &c.ok("query-block", json!({}))[0]["inserted"]["dirty-bitmaps"][0];
        assert_eq!(
            (&busy["busy"], &busy["count"]),
            (&json!(true), &json!(0)),
            "{busy}"
        );
        let (_, desc) = c.err(
            "block-dirty-bitmap-clear",
            json!({"node": "d0", "name": "b0"}),
        );
        assert_eq!(
            desc,
            "Bitmap 'b0' is currently in use by another operation and cannot be used"
        );
        c.ok("cont", json!({}));
        completed(&mut c, &format!("inc{i}"));
        let (ok, out, err) =
            qemu_img(&["rebase", "-u", "-b", &p(&previous), "-F", "qcow2", &p(&inc)]);
        assert!(ok, "rebase: {out}{err}");
        holds(&inc, &reference);
        previous = inc;
    }

    // One more with the VM stopped, then another: nothing was written in between, so
    // the last incremental holds nothing.
    stop_settled(&mut c);
    let reference = copy_aside(&source, &dir.path().join("ref4.raw"));
    for name in ["inc4", "empty"] {
        let inc = dir.path().join(format!("{name}.qcow2"));
        c.ok(
            "drive-backup",
            json!({"device": "d0", "job-id": name, "target": p(&inc), "format": "qcow2", "sync": "incremental", "bitmap": "b0"}),
        );
        completed(&mut c, name);
        let (ok, out, err) =
            qemu_img(&["rebase", "-u", "-b", &p(&previous), "-F", "qcow2", &p(&inc)]);
        assert!(ok, "rebase: {out}{err}");
        holds(&inc, &reference);
        previous = inc;
    }
    let empty = previous;
    let (ok, map, err) = qemu_img(&["map", "--output=json", &p(&empty)]);
    assert!(ok, "{err}");
    let own: Vec<&str> = map
        .lines()
        .filter(|l| l.contains("\"depth\": 0") && l.contains("\"data\": true"))
        .collect();
    assert!(own.is_empty(), "the empty incremental holds data: {own:?}");
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    no_guest_errors(&gw);
}

#[test]
fn a_backup_goes_on_under_a_new_daemon_after_a_sigkill() {
    let dir = TempDir::new("jobs-backup-restart");
    let (mut gw, source) = verifying(dir.path());
    let mut c = gw.client();
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    stop_settled(&mut c);
    let reference = copy_aside(&source, &dir.path().join("ref.raw"));
    let target = dir.path().join("backup.raw");
    c.ok(
        "drive-backup",
        json!({"device": "d0", "target": p(&target), "format": "raw", "sync": "full", "speed": 4 << 20}),
    );
    // Killed while the job's thread copies (the VM stopped: nothing copies before a
    // write yet).
    std::thread::sleep(Duration::from_millis(500));
    let before = jobs(&mut c).remove(0);
    let (offset, len) = (
        before["offset"].as_u64().unwrap(),
        before["len"].as_u64().unwrap(),
    );
    assert!(0 < offset && offset < len, "{before}");
    let daemon = flotilla_tests::procs::live_child(gw.vm.pid(), "block-daemon", TIMEOUT);
    assert_eq!(
        job_thread_nice(daemon),
        0,
        "a backup copies at the guest's priority (its writes wait for its copies)"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    );
    c.event("__io.flotilla_BLOCK_DAEMON_RESTARTED");
    assert_eq!(jobs(&mut c).len(), 1, "the backup goes on");
    // The guest overwrites the disk while the new daemon holds the backup, paused so that
    // it cannot end before the rounds do on a loaded machine (slowed to 4 MiB/s, then to
    // 64 KiB/s, it still did in CI): the new daemon's copy-before-write keeps the point in
    // time; then the backup goes on there to its end.
    c.ok("block-job-pause", json!({"device": "d0"}));
    c.ok("cont", json!({}));
    two_rounds(&mut gw);
    c.ok("block-job-resume", json!({"device": "d0"}));
    c.ok("block-job-set-speed", json!({"device": "d0", "speed": 0}));
    completed(&mut c, "d0");
    identical(&target, &reference);
    no_guest_errors(&gw);
}

#[test]
fn a_full_target_stops_or_fails_the_job_as_its_policy_says() {
    let dir = TempDir::new("jobs-enospc");
    let (mut gw, _source) = verifying(dir.path());
    let mut c = gw.client();
    // The target's filesystem holds a quarter of the 16 MiB disk.
    let small = flotilla_tests::qemu::SmallFs::mount("jobs-enospc-fs", 4 << 20);
    let target = small.path().join("t.raw");
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&target), "format": "raw", "sync": "full", "on-target-error": "stop"}),
    );
    let error = c.event("BLOCK_JOB_ERROR");
    assert_eq!(
        error["data"],
        json!({"device": "d0", "operation": "write", "action": "stop"}),
        "{error}"
    );
    let job = jobs(&mut c).remove(0);
    assert_eq!(
        (&job["paused"], &job["io-status"], &job["status"]),
        (&json!(true), &json!("nospace"), &json!("paused")),
        "{job}"
    );
    // Room again: resumed, it catches up; the guest writes meanwhile.
    small.resize(64 << 20);
    c.ok("block-job-resume", json!({"device": "d0"}));
    c.ok("cont", json!({}));
    c.event("BLOCK_JOB_READY");
    two_rounds(&mut gw);
    c.ok("block-job-cancel", json!({"device": "d0"}));
    let done = c.event("BLOCK_JOB_COMPLETED");
    assert!(done["data"].get("error").is_none(), "{done}");

    // A target of another size is taken, and the job fails at once (QEMU's words).
    let other = dir.path().join("other-size.raw");
    std::fs::File::create(&other)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&other), "format": "raw", "sync": "full", "mode": "existing"}),
    );
    let failed = c.event("BLOCK_JOB_COMPLETED");
    assert_eq!(
        failed["data"]["error"], "Source and target image have different sizes",
        "{failed}"
    );

    // With report (the default), the job ends with the error.
    let full = flotilla_tests::qemu::SmallFs::mount("jobs-enospc-full", 4 << 20);
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&full.path().join("t.raw")), "format": "raw", "sync": "full"}),
    );
    let failed = c.event("BLOCK_JOB_COMPLETED");
    assert_eq!(
        failed["data"]["error"], "No space left on device",
        "{failed}"
    );
    assert!(jobs(&mut c).is_empty());
    no_guest_errors(&gw);
}
