//! A disk whose image lives on a filesystem that fills up, on Flotilla and on QEMU 7.2
//! side by side in the same test: the test guest writes and verifies the whole disk
//! while the image (bigger than the filesystem) runs out of space. With the default
//! werror=enospc both stop the VM (BLOCK_IO_ERROR, then STOP; query-status io-error,
//! io-status nospace); once space is freed, `cont` retries the held writes and the
//! guest's data is all there. With werror=report the guest gets the errors and the VM
//! runs on. Also: the drive options' errors read as QEMU's, and the daemon's log does
//! not fill with one line per failed request.

use std::time::Duration;

use flotilla_tests::blk::{empty_image, first_mismatch, pattern_sector};
use flotilla_tests::qemu::{qemu_refusal, Qemu, SmallFs};
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{bin, run_to_end, test_guest, Vm};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The filesystem, and the image: twice as big, so the guest's first pass fills it.
const FS_BYTES: u64 = 8 << 20;
const IMAGE_BYTES: u64 = 16 << 20;
const SEED: u64 = 0xf011;

/// Which VMM runs the guest.
#[derive(Clone, Copy, Debug)]
enum Vmm {
    Qemu,
    Flotilla,
}

/// A VMM running the test guest on one disk, paused until `cont`, and a client.
struct Run {
    _gateway: Option<Gateway>,
    _qemu: Option<Qemu>,
    client: QmpClient,
}

impl Run {
    fn start(vmm: Vmm, image: &std::path::Path, drive_options: &str, cmdline: &str) -> Run {
        let file = format!(
            "file={},format=raw,id=d0,node-name=disk0{drive_options}",
            image.display()
        );
        match vmm {
            Vmm::Qemu => {
                let drive = format!("{file},if=none");
                let qemu = Qemu::guest(
                    cmdline,
                    &["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"],
                );
                let client = qemu.client();
                Run {
                    _gateway: None,
                    _qemu: Some(qemu),
                    client,
                }
            }
            Vmm::Flotilla => {
                let gw = Gateway::start_with(1, cmdline, &["--drive", &file, "-S"]);
                let client = gw.client();
                Run {
                    _gateway: Some(gw),
                    _qemu: None,
                    client,
                }
            }
        }
    }

    fn vm(&mut self) -> &mut Vm {
        match (&mut self._gateway, &mut self._qemu) {
            (Some(gw), _) => &mut gw.vm,
            (_, Some(q)) => &mut q.vm,
            _ => unreachable!("a run has a VMM"),
        }
    }

    /// Events up to and including the first `last` (within `timeout`).
    fn events_until(&mut self, vmm: Vmm, last: &str, timeout: Duration) -> Vec<Value> {
        match self.client.event_within(last, timeout) {
            Some(e) => {
                let mut all = std::mem::take(&mut self.client.events);
                all.push(e);
                all
            }
            None => {
                let events = format!("{:?}", self.client.events);
                panic!(
                    "{vmm:?}: no {last} event within {timeout:?}; events: {events}\noutput:\n{}",
                    self.vm().transcript()
                )
            }
        }
    }
}

/// The event names in order, repeats folded.
fn names(events: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_string())
        .collect();
    out.dedup();
    out
}

/// The first BLOCK_IO_ERROR's data among `events` (null without one).
fn first_block_io_error(events: &[Value]) -> Value {
    events
        .iter()
        .find(|e| e["event"] == "BLOCK_IO_ERROR")
        .map(|e| e["data"].clone())
        .unwrap_or(Value::Null)
}

/// What one VMM did when the disk filled up.
#[derive(Debug, PartialEq)]
struct Observed {
    /// The first BLOCK_IO_ERROR's data.
    first_error: Value,
    /// Event names up to STOP, repeats folded.
    until_stop: Vec<String>,
    status_stopped: Value,
    io_status_stopped: Value,
    cont: Value,
    /// Event names after cont up to RESUME.
    after_cont: Vec<String>,
    io_status_after: Value,
    guest_done: String,
}

fn disk_full(vmm: Vmm) -> Observed {
    let fs = SmallFs::mount("enospc", FS_BYTES);
    let image = fs.path().join("d0.img");
    empty_image(&image, IMAGE_BYTES);
    let cmdline = format!("scenario=blk-verify-loop seed={SEED:#x} rounds=1 stall_ms=600000");
    let mut run = Run::start(vmm, &image, "", &cmdline);
    let c = &mut run.client;
    assert_eq!(c.ok("cont", json!({})), json!({}));
    // RESUME (the guest starts) came with that.
    c.events.retain(|e| e["event"] != "RESUME");
    let events = run.events_until(vmm, "STOP", Duration::from_secs(30));
    let first_error = first_block_io_error(&events);
    let c = &mut run.client;
    let status_stopped = c.ok("query-status", json!({}));
    let io_status_stopped = c.ok("query-block", json!({}))[0]["io-status"].clone();
    // Stopped means stopped: nothing more happens until cont.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.ok("query-status", json!({})), status_stopped, "{vmm:?}");
    assert!(
        !run.vm().transcript().contains("GUEST BLK ROUND"),
        "{vmm:?}: the guest went on while stopped"
    );

    // Space is freed; cont retries what failed.
    fs.resize(4 * IMAGE_BYTES);
    let c = &mut run.client;
    c.events.clear();
    let cont = c.execute("cont", json!({}));
    let after_cont = names(&run.events_until(vmm, "RESUME", TIMEOUT));
    // cont cleared it (the guest powers off when it is done: ask before).
    let io_status_after = run.client.ok("query-block", json!({}))[0]["io-status"].clone();
    let guest_done = run
        .vm()
        .expect_prefix("GUEST BLK VERIFY DONE", TIMEOUT)
        .to_string();
    let transcript = run.vm().transcript();
    if let Vmm::Flotilla = vmm {
        // One line per failed request would be thousands a second with a guest that
        // retries; the daemon says it once and then counts.
        let enospc_lines = transcript
            .lines()
            .filter(|l| l.contains("No space left on device"))
            .count();
        assert!(
            enospc_lines <= 25,
            "{enospc_lines} log lines about ENOSPC:\n{transcript}"
        );
    }
    drop(run);
    // Every sector holds what the guest wrote: nothing was lost.
    assert_eq!(
        first_mismatch(&image, 0..IMAGE_BYTES / 512, |s| pattern_sector(
            SEED + 1,
            s
        )),
        None,
        "{vmm:?}: a sector does not hold what the guest wrote"
    );
    Observed {
        first_error,
        until_stop: names(&events),
        status_stopped,
        io_status_stopped,
        cont,
        after_cont,
        io_status_after,
        guest_done,
    }
}

#[test]
fn disk_full_stops_the_vm_and_cont_loses_nothing_as_on_qemu() {
    let qemu = disk_full(Vmm::Qemu);
    // What QEMU 7.2 does (checked here, so a different QEMU shows up as such).
    assert_eq!(
        qemu.first_error,
        json!({"device": "d0", "node-name": "disk0", "operation": "write", "action": "stop",
               "nospace": true, "reason": "No space left on device"})
    );
    assert_eq!(qemu.until_stop, ["BLOCK_IO_ERROR", "STOP"]);
    assert_eq!(qemu.status_stopped["status"], "io-error");
    assert_eq!(qemu.io_status_stopped, "nospace");
    let flotilla = disk_full(Vmm::Flotilla);
    assert_eq!(flotilla, qemu);
    assert_eq!(
        flotilla.guest_done,
        "GUEST BLK VERIFY DONE rounds=1 errors=0"
    );
    assert_eq!(flotilla.io_status_after, "ok");
}

/// What one VMM does with werror=report: the guest sees the errors, the VM runs on.
fn disk_full_reported(vmm: Vmm) -> (Value, Value, Value, bool) {
    let fs = SmallFs::mount("enospc-report", FS_BYTES);
    let image = fs.path().join("d0.img");
    empty_image(&image, IMAGE_BYTES);
    // Without rounds= the guest goes on (and does not power off under the queries).
    let cmdline = format!("scenario=blk-verify-loop seed={SEED:#x} stall_ms=600000");
    let mut run = Run::start(vmm, &image, ",werror=report,rerror=report", &cmdline);
    run.client.ok("cont", json!({}));
    let event = match run.client.event_within("BLOCK_IO_ERROR", TIMEOUT) {
        Some(e) => e["data"].clone(),
        None => panic!("{vmm:?}: no BLOCK_IO_ERROR:\n{}", run.vm().transcript()),
    };
    let round = run
        .vm()
        .expect_prefix("GUEST BLK ROUND 1 ", TIMEOUT)
        .to_string();
    assert!(
        round.starts_with("GUEST BLK ROUND 1 FAILED"),
        "{vmm:?}: {round}"
    );
    let stopped = names(&run.client.events).contains(&"STOP".to_string());
    let block = run.client.ok("query-block", json!({}));
    let failed = run.client.ok("query-blockstats", json!({}))[0]["stats"]["failed_wr_operations"]
        .as_u64()
        .unwrap_or(0);
    assert!(failed > 0, "{vmm:?}: no failed writes counted");
    (
        event,
        block[0].get("io-status").cloned().unwrap_or(Value::Null),
        run.client.ok("query-status", json!({}))["status"].clone(),
        stopped,
    )
}

#[test]
fn werror_report_hands_the_error_to_the_guest_as_on_qemu() {
    let qemu = disk_full_reported(Vmm::Qemu);
    assert_eq!(qemu.0["action"], "report");
    let flotilla = disk_full_reported(Vmm::Flotilla);
    assert_eq!(flotilla, qemu);
}

#[test]
fn error_options_read_as_qemus() {
    let fs = tempdir_image();
    for (options, bad) in [
        (",werror=bogus", "'bogus' invalid write error action"),
        (",rerror=enospc", "'enospc' invalid read error action"),
        (",rerror=bogus", "'bogus' invalid read error action"),
    ] {
        let file = format!("file={},format=raw,id=d0{options}", fs.1.display());
        let qemu = qemu_refusal(&[
            "-drive",
            &format!("{file},if=none"),
            "-device",
            "virtio-blk-device,drive=d0",
        ]);
        assert_eq!(qemu, bad);
        let mut cmd = std::process::Command::new(bin("qmp-gateway"));
        cmd.arg("--kernel")
            .arg(test_guest())
            .args(["--serial", "none", "--drive", &file]);
        let (status, _, err) = run_to_end(cmd, TIMEOUT);
        assert!(!status.success(), "{options} was accepted");
        assert!(err.contains(bad), "{options}: {err}");
    }
    // Every action QEMU takes is taken; as in QEMU, query-block shows an I/O status
    // only where an error could stop the VM.
    let io_status = |c: &mut QmpClient| {
        let block = c.ok("query-block", json!({}));
        block[0].get("io-status").cloned().unwrap_or(Value::Null)
    };
    for (options, expected) in [
        ("", json!("ok")),
        (",werror=stop,rerror=stop", json!("ok")),
        (",werror=enospc,rerror=report", json!("ok")),
        (",werror=report,rerror=stop", json!("ok")),
        (",werror=ignore,rerror=ignore", Value::Null),
        (",werror=report,rerror=report", Value::Null),
    ] {
        let file = format!("file={},format=raw,id=d0{options}", fs.1.display());
        let qemu = Qemu::try_start(&[
            "-drive",
            &format!("{file},if=none"),
            "-device",
            "virtio-blk-device,drive=d0",
        ])
        .unwrap_or_else(|e| panic!("QEMU refused {options}: {e}"));
        let theirs = io_status(&mut qemu.client());
        assert_eq!(theirs, expected, "QEMU 7.2 with {options}");
        drop(qemu);
        let gw = Gateway::start_with(1, "", &["--drive", &file, "-S"]);
        assert_eq!(io_status(&mut gw.client()), theirs, "{options}");
    }
}

fn tempdir_image() -> (flotilla_tests::TempDir, std::path::PathBuf) {
    let dir = flotilla_tests::TempDir::new("error-options");
    let image = dir.path().join("d0.img");
    empty_image(&image, 1 << 20);
    (dir, image)
}

/// The first BLOCK_IO_ERROR after an external snapshot whose overlay lives on a
/// filesystem that fills up, and the disk's root node then (query-block's).
fn overlay_full(vmm: Vmm, name_it: bool) -> (Value, Value) {
    let dir = flotilla_tests::TempDir::new("enospc-overlay-base");
    let image = dir.path().join("d0.img");
    empty_image(&image, IMAGE_BYTES);
    let fs = SmallFs::mount("enospc-overlay", FS_BYTES);
    let overlay = fs.path().join("over.qcow2");
    let cmdline = format!("scenario=blk-verify-loop seed={SEED:#x} rounds=1 stall_ms=600000");
    let mut run = Run::start(vmm, &image, "", &cmdline);
    let c = &mut run.client;
    let mut args = json!({"device": "d0", "snapshot-file": overlay.display().to_string(),
                          "format": "qcow2"});
    if name_it {
        args["snapshot-node-name"] = json!("over");
    }
    c.ok("blockdev-snapshot-sync", args);
    let root = c.ok("query-block", json!({}))[0]["inserted"]["node-name"].clone();
    c.ok("cont", json!({}));
    c.events.retain(|e| e["event"] != "RESUME");
    let events = run.events_until(vmm, "STOP", Duration::from_secs(60));
    let first_error = first_block_io_error(&events);
    (first_error, root)
}

/// After an external snapshot, BLOCK_IO_ERROR names the disk's new root node (the
/// overlay), as QEMU 7.2's does (its BlockBackend's root).
#[test]
fn errors_after_an_external_snapshot_name_the_overlay_as_on_qemu() {
    let (qemu, root) = overlay_full(Vmm::Qemu, true);
    assert_eq!(
        qemu,
        json!({"device": "d0", "node-name": "over", "operation": "write", "action": "stop",
               "nospace": true, "reason": "No space left on device"})
    );
    assert_eq!(root, "over");
    assert_eq!(overlay_full(Vmm::Flotilla, true), (qemu, root));
    // An overlay the client did not name: the event names whatever node the disk's
    // root is (QEMU makes up a name; so do we).
    for vmm in [Vmm::Qemu, Vmm::Flotilla] {
        let (event, root) = overlay_full(vmm, false);
        assert_eq!(event["node-name"], root, "{vmm:?}");
        assert_ne!(root, "disk0", "{vmm:?}");
    }
}
