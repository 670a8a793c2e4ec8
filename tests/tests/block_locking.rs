//! Image locking, QEMU's way (OFD locks on the bytes QEMU's file driver uses for its
//! permissions), tried against QEMU 7.2 in both directions: an image Flotilla serves
//! cannot be opened for writing by QEMU, nor read by a QEMU that does not share writes;
//! Flotilla cannot open an image a QEMU writes; two writable drives on one image are
//! refused; read-only users share an image as they do on QEMU. The refusals read as
//! QEMU's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::blk::empty_image;
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::Gateway;
use flotilla_tests::{bin, run_to_end, test_guest, TempDir};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);
const WRITE: &str = "Failed to get \"write\" lock";
const SHARED_WRITE: &str = "Failed to get shared \"write\" lock";

fn qemu_drive(image: &Path, options: &str) -> Result<Qemu, String> {
    Qemu::try_start(&[
        "-drive",
        &format!("file={},format=raw,if=none,id=d0{options}", image.display()),
        "-device",
        "virtio-blk-device,drive=d0",
    ])
}

fn flotilla(drives: &[String]) -> Gateway {
    let mut args = vec!["-S"];
    for d in drives {
        args.extend(["--drive", d.as_str()]);
    }
    let gw = Gateway::start_with(1, "", &args);
    // It is up (its drives opened) once it answers.
    gw.client().ok("query-block", json!({}));
    gw
}

/// The gateway's error output when it refuses `drives`.
fn flotilla_refusal(drives: &[String]) -> String {
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--serial", "none"]);
    for d in drives {
        cmd.args(["--drive", d]);
    }
    let (status, _, err) = run_to_end(cmd, TIMEOUT);
    assert!(!status.success(), "{drives:?} was accepted");
    err
}

/// `err` is QEMU's refusal `lock`, with its hint naming `image`.
fn refused_as_qemu_says(err: &str, lock: &str, image: &Path) {
    assert!(err.contains(lock), "{err}");
    let hint = format!("Is another process using the image [{}]?", image.display());
    assert!(err.contains(&hint), "{err}");
}

fn drive(image: &Path, id: &str, options: &str) -> String {
    format!("file={},format=raw,id={id}{options}", image.display())
}

#[test]
fn qemu_cannot_take_an_image_flotilla_writes() {
    let dir = TempDir::new("lock-flotilla-first");
    let image = dir.path().join("d0.img");
    empty_image(&image, 1 << 20);
    let gw = flotilla(&[drive(&image, "d0", "")]);
    let err = qemu_drive(&image, "")
        .err()
        .expect("QEMU opened it for writing");
    refused_as_qemu_says(&err, WRITE, &image);
    let err = qemu_drive(&image, ",readonly=on")
        .err()
        .expect("QEMU read an image being written");
    assert!(err.contains(SHARED_WRITE), "{err}");
    // QEMU may look without locking (force-share), as qemu-img -U does.
    qemu_drive(&image, ",readonly=on,file.locking=off").expect("force-shared read");
    drop(gw);
    // Gone with the gateway: QEMU takes it now.
    qemu_drive(&image, "").expect("QEMU opens the image Flotilla left");
}

#[test]
fn flotilla_cannot_take_an_image_qemu_writes() {
    let dir = TempDir::new("lock-qemu-first");
    let image = dir.path().join("d0.img");
    empty_image(&image, 1 << 20);
    let qemu = qemu_drive(&image, "").expect("QEMU starts");
    let err = flotilla_refusal(&[drive(&image, "d0", "")]);
    refused_as_qemu_says(&err, WRITE, &image);
    let err = flotilla_refusal(&[drive(&image, "d0", ",readonly=on")]);
    assert!(err.contains(SHARED_WRITE), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    drop(qemu);
    flotilla(&[drive(&image, "d0", "")]);
}

#[test]
fn two_writers_refused_readers_share_as_on_qemu() {
    let dir = TempDir::new("lock-sharing");
    let image = dir.path().join("d0.img");
    empty_image(&image, 1 << 20);
    // QEMU refuses the same image as two writable drives...
    let two = format!("file={},format=raw,if=none,id=d1", image.display());
    let err = Qemu::try_start(&[
        "-drive",
        &format!("file={},format=raw,if=none,id=d0", image.display()),
        "-device",
        "virtio-blk-device,drive=d0",
        "-drive",
        &two,
        "-device",
        "virtio-blk-device,drive=d1",
    ])
    .err()
    .expect("QEMU took one image as two writable drives");
    assert!(err.contains(WRITE), "{err}");
    // ... and so does Flotilla, with QEMU's words.
    let err = flotilla_refusal(&[drive(&image, "d0", ""), drive(&image, "d1", "")]);
    assert!(err.contains(WRITE), "{err}");
    // A reader and a writer: refused either way round.
    let err = flotilla_refusal(&[drive(&image, "d0", ",readonly=on"), drive(&image, "d1", "")]);
    assert!(err.contains(WRITE), "{err}");
    // Readers share: two read-only drives, and QEMU reading beside Flotilla reading.
    let gw = flotilla(&[
        drive(&image, "d0", ",readonly=on"),
        drive(&image, "d1", ",readonly=on"),
    ]);
    let qemu = qemu_drive(&image, ",readonly=on").expect("QEMU reads beside Flotilla");
    // A writer is still refused while they read.
    let err = qemu_drive(&image, "")
        .err()
        .expect("a writer beside readers");
    assert!(err.contains(WRITE), "{err}");
    drop(gw);
    let err = flotilla_refusal(&[drive(&image, "d0", "")]);
    assert!(
        err.contains(WRITE),
        "Flotilla writing beside a QEMU reader: {err}"
    );
    drop(qemu);
}
