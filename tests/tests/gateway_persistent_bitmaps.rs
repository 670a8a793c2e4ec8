//! Persistent dirty bitmaps in a qcow2 disk's image (the bitmaps extension), through
//! the gateway while the test guest writes the whole disk round after round, with QEMU
//! 7.2 as the other reader and writer of the same image: a bitmap QEMU stored is
//! listed and marked into here; ours (added with `persistent`) are in the image after
//! `quit` and QEMU counts in them what we counted; they survive a daemon restarted over
//! QMP and one SIGKILLed; a removed one leaves the image; a bitmap QEMU left in use
//! (it died) is listed inconsistent and refused for use, as QEMU does in the same test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_tests::blk::{
    image_bitmaps, pattern_image, qcow2_from_raw, qemu_img_ok, two_more_rounds, verifying_gateway,
};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::TempDir;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
const SEED: u64 = 0x0c14_00b1;
/// 4 MiB disks.
const SECTORS: u64 = 8192;
const DISK: u64 = SECTORS * 512;
const RESTART: &str = "__io.flotilla_block-daemon-restart";

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A qcow2 image of P(SEED) with 64 KiB clusters.
fn qcow2_disk(dir: &Path, name: &str) -> PathBuf {
    let raw = dir.join("pattern.raw");
    pattern_image(&raw, SEED, SECTORS);
    let image = dir.join(name);
    qcow2_from_raw(&raw, &image, None);
    image
}

/// The gateway, stopped (-S), serving `image` as d0 to an endless verify loop.
fn verifying(image: &Path) -> Gateway {
    verifying_gateway(SEED, &format!("file={},format=qcow2,id=d0", p(image)))
}

/// The BlockDirtyInfo list of `list` by name (busy and count included), sorted.
fn by_name(list: &Value) -> Vec<Value> {
    let mut v = list.as_array().cloned().unwrap_or_default();
    v.sort_by_key(|b| b["name"].as_str().unwrap_or("").to_string());
    v
}

/// query-block's d0 bitmaps.
fn ours(c: &mut QmpClient) -> Vec<Value> {
    let all = c.ok("query-block", json!({}));
    by_name(&all[0]["inserted"]["dirty-bitmaps"])
}

/// QEMU's bitmaps of `image`, opened read-write (so it loads, and at its quit stores,
/// them as it would for a VM).
fn qemu_view(image: &Path) -> (Qemu, Vec<Value>) {
    let qemu = Qemu::try_start(&[
        "-blockdev",
        &format!(
            "driver=qcow2,node-name=n0,file.driver=file,file.filename={}",
            p(image)
        ),
    ])
    .unwrap_or_else(|e| panic!("QEMU did not open the image: {e}"));
    let mut c = qemu.client();
    let nodes = c.ok("query-named-block-nodes", json!({}));
    let n0 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "n0")
        .cloned()
        .unwrap();
    (qemu, by_name(&n0["dirty-bitmaps"]))
}

/// (name, flags) of the bitmaps qemu-img info lists.
fn stored(image: &Path) -> Vec<(String, Vec<String>)> {
    let mut v: Vec<(String, Vec<String>)> = image_bitmaps(image)
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|b| {
            let flags = b["flags"].as_array().unwrap().iter();
            (
                b["name"].as_str().unwrap().to_string(),
                flags.map(|f| f.as_str().unwrap().to_string()).collect(),
            )
        })
        .collect();
    v.sort();
    v
}

fn flags(f: &[&str]) -> Vec<String> {
    f.iter().map(|s| s.to_string()).collect()
}

fn quit(mut gw: Gateway) {
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    c.ok("quit", json!({}));
    gw.expect_clean_exit(vmm, true);
}

#[test]
fn persistent_bitmaps_live_in_the_image_and_qemu_reads_what_we_counted() {
    let dir = TempDir::new("bitmaps-persistent");
    let image = qcow2_disk(dir.path(), "d0.qcow2");
    // QEMU's own bitmap, with chunk 0 written (with the bytes it held: the guest
    // checks P(SEED)).
    qemu_img_ok(&["bitmap", "--add", "-g", "65536", &p(&image), "theirs"]);
    let io = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} 0 4k", p(&dir.path().join("pattern.raw"))),
            &p(&image),
        ])
        .output()
        .expect("qemu-io (qemu-utils) is needed");
    assert!(io.status.success(), "{io:?}");

    let mut gw = verifying(&image);
    let mut c = gw.client();
    let loaded = ours(&mut c);
    assert_eq!(
        loaded,
        [
            json!({"name": "theirs", "recording": true, "persistent": true, "busy": false,
                "granularity": 65536, "count": 65536})
        ],
        "QEMU's bitmap, loaded with the chunk it marked"
    );
    assert_eq!(
        stored(&image),
        [("theirs".to_string(), flags(&["in-use", "auto"]))],
        "in use while we serve the image"
    );
    let add = |c: &mut QmpClient, name: &str, more: Value| {
        let mut args = json!({"node": "d0", "name": name});
        args.as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        c.ok("block-dirty-bitmap-add", args);
    };
    add(
        &mut c,
        "ours",
        json!({"persistent": true, "granularity": 4096}),
    );
    add(&mut c, "off", json!({"persistent": true, "disabled": true}));
    add(&mut c, "gone", json!({"persistent": true}));
    add(&mut c, "temp", json!({}));
    two_more_rounds(&mut gw, &mut c);
    c.ok(
        "block-dirty-bitmap-remove",
        json!({"node": "d0", "name": "gone"}),
    );
    assert_eq!(
        stored(&image),
        [
            ("off".to_string(), flags(&["in-use"])),
            ("ours".to_string(), flags(&["in-use", "auto"])),
            ("theirs".to_string(), flags(&["in-use", "auto"])),
        ],
        "a removal stores the rest at once, in use (they go on recording)"
    );

    // Kept across a daemon restarted over QMP and one SIGKILLed.
    let counts = |c: &mut QmpClient| -> Vec<(String, u64)> {
        ours(c)
            .iter()
            .map(|b| {
                (
                    b["name"].as_str().unwrap().to_string(),
                    b["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let expected = vec![
        ("off".to_string(), 0),
        ("ours".to_string(), DISK),
        ("temp".to_string(), DISK),
        ("theirs".to_string(), DISK),
    ];
    assert_eq!(counts(&mut c), expected);
    c.ok(RESTART, json!({"device": "d0"}));
    // Its event, so that the wait below is for the daemon after the SIGKILL (quitting
    // while that one still starts would leave the bitmaps in use).
    c.event("__io.flotilla_BLOCK_DAEMON_RESTARTED");
    assert_eq!(counts(&mut c), expected, "after a restart over QMP");
    let pid = flotilla_tests::procs::live_child(gw.vm.pid(), "block-daemon", TIMEOUT);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    c.event("__io.flotilla_BLOCK_DAEMON_RESTARTED");
    assert_eq!(counts(&mut c), expected, "after a SIGKILL");
    assert!(
        !gw.vm.transcript().contains("FAILED"),
        "the guest saw errors:\n{}",
        gw.vm.transcript()
    );
    drop(c);
    quit(gw);

    // In the image, clean: the persistent ones (not the removed one, nor temp).
    assert_eq!(
        stored(&image),
        [
            ("off".to_string(), flags(&[])),
            ("ours".to_string(), flags(&["auto"])),
            ("theirs".to_string(), flags(&["auto"])),
        ]
    );
    let check = qemu_img_ok(&["check", &p(&image)]);
    assert!(check.contains("No errors were found"), "{check}");
    // QEMU counts what we counted.
    let (qemu, theirs) = qemu_view(&image);
    let seen: Vec<(String, u64, u64, bool)> = theirs
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["count"].as_u64().unwrap(),
                b["granularity"].as_u64().unwrap(),
                b["recording"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("off".to_string(), 0, 65536, false),
            ("ours".to_string(), DISK, 4096, true),
            ("theirs".to_string(), DISK, 65536, true),
        ]
    );
    drop(qemu);

    // Served again: listed as stored.
    let gw = verifying(&image);
    let mut c = gw.client();
    assert_eq!(
        counts(&mut c),
        [
            ("off".to_string(), 0),
            ("ours".to_string(), DISK),
            ("theirs".to_string(), DISK)
        ]
    );
    drop(c);
    quit(gw);
}

#[test]
fn a_bitmap_qemu_left_in_use_is_inconsistent_here_as_in_qemu() {
    let dir = TempDir::new("bitmaps-inconsistent");
    let image = qcow2_disk(dir.path(), "d0.qcow2");
    qemu_img_ok(&["bitmap", "--add", &p(&image), "stale"]);
    // QEMU dies with the bitmap loaded.
    let io = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read 0 4k", "-c", "abort", &p(&image)])
        .output()
        .expect("qemu-io (qemu-utils) is needed");
    assert!(!io.status.success(), "qemu-io was to abort");
    let copy = dir.path().join("copy.qcow2");
    std::fs::copy(&image, &copy).unwrap();

    let (qemu, theirs) = qemu_view(&copy);
    let mut q = qemu.client();
    let refusal = q.err(
        "block-dirty-bitmap-clear",
        json!({"node": "n0", "name": "stale"}),
    );
    drop(q);
    drop(qemu);

    let gw = verifying(&image);
    let mut c = gw.client();
    assert_eq!(ours(&mut c), theirs, "BlockDirtyInfo as QEMU's");
    assert_eq!(theirs[0]["inconsistent"], true, "{theirs:?}");
    assert_eq!(
        c.err(
            "block-dirty-bitmap-clear",
            json!({"node": "d0", "name": "stale"})
        ),
        refusal
    );
    c.ok(
        "block-dirty-bitmap-remove",
        json!({"node": "d0", "name": "stale"}),
    );
    assert_eq!(
        stored(&image),
        [],
        "removed from the image at once, as QEMU's"
    );
    drop(c);
    quit(gw);
    assert_eq!(stored(&image), [], "still removed");
    let check = qemu_img_ok(&["check", &p(&image)]);
    assert!(check.contains("No errors were found"), "{check}");
}

#[test]
fn persistent_bitmaps_are_refused_where_they_cannot_be_stored() {
    let dir = TempDir::new("bitmaps-persistent-refused");
    let v2 = dir.path().join("v2.qcow2");
    pattern_image(&dir.path().join("pattern.raw"), SEED, SECTORS);
    qcow2_from_raw(&dir.path().join("pattern.raw"), &v2, Some("compat=0.10"));
    let copy = dir.path().join("v2-copy.qcow2");
    std::fs::copy(&v2, &copy).unwrap();
    let long = "x".repeat(1024);
    let (qemu, _) = qemu_view(&copy);
    let mut q = qemu.client();
    let want = q.err(
        "block-dirty-bitmap-add",
        json!({"node": "n0", "name": "p", "persistent": true}),
    );
    drop(q);
    drop(qemu);

    let gw = verifying(&v2);
    let mut c = gw.client();
    let got = c.err(
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "p", "persistent": true}),
    );
    // QEMU names its node n0 where we name the device d0.
    assert_eq!(got, (want.0, want.1.replace("'n0'", "'d0'")));
    drop(c);
    drop(gw);

    let image = qcow2_disk(dir.path(), "v3.qcow2");
    let gw = verifying(&image);
    let mut c = gw.client();
    assert_eq!(
        c.err(
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": long, "persistent": true}),
        )
        .1,
        format!(
            "Can't make bitmap '{long}' persistent in 'd0': Name length exceeds maximum (1023 characters)"
        )
    );
}

/// A gateway serving `image` (a new qcow2 disk in `dir`) whose persistent bitmap "p"
/// the guest has marked whole, stopped.
fn marked_bitmap(dir: &Path) -> (PathBuf, Gateway, QmpClient) {
    let image = qcow2_disk(dir, "d0.qcow2");
    let mut gw = verifying(&image);
    let mut c = gw.client();
    c.ok(
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "p", "persistent": true}),
    );
    two_more_rounds(&mut gw, &mut c);
    (image, gw, c)
}

/// QEMU counts the whole disk in `image`'s only bitmap, and qemu-img check is clean.
fn qemu_counts_it_whole(image: &Path) {
    let (qemu, theirs) = qemu_view(image);
    assert_eq!(theirs[0]["count"], DISK, "{theirs:?}");
    drop(qemu);
    let check = qemu_img_ok(&["check", &p(image)]);
    assert!(check.contains("No errors were found"), "{check}");
}

#[test]
fn an_external_snapshot_stores_the_old_tops_bitmaps_as_they_are() {
    let dir = TempDir::new("bitmaps-persistent-snapshot");
    let overlay = dir.path().join("top.qcow2");
    let (image, mut gw, mut c) = marked_bitmap(dir.path());
    c.ok(
        "blockdev-snapshot-sync",
        json!({"device": "d0", "snapshot-file": p(&overlay), "format": "qcow2"}),
    );
    assert_eq!(
        stored(&image),
        [("p".to_string(), flags(&["auto"]))],
        "stored (not in use) once the old top is no longer written"
    );
    two_more_rounds(&mut gw, &mut c);
    drop(c);
    quit(gw);
    assert_eq!(stored(&overlay), [], "the new top has none");
    qemu_counts_it_whole(&image);
}

#[test]
fn a_mirrors_source_keeps_its_bitmaps_and_the_target_gets_none() {
    let dir = TempDir::new("bitmaps-persistent-mirror");
    let target = dir.path().join("target.qcow2");
    let (image, mut gw, mut c) = marked_bitmap(dir.path());
    c.ok(
        "drive-mirror",
        json!({"device": "d0", "target": p(&target), "format": "qcow2", "sync": "full"}),
    );
    c.event("BLOCK_JOB_READY");
    c.ok("block-job-complete", json!({"device": "d0"}));
    c.event("BLOCK_JOB_COMPLETED");
    assert_eq!(
        ours(&mut c),
        Vec::<Value>::new(),
        "the target node has none"
    );
    assert_eq!(
        stored(&image),
        [("p".to_string(), flags(&["auto"]))],
        "stored in the source as the disk left it"
    );
    two_more_rounds(&mut gw, &mut c);
    drop(c);
    quit(gw);
    assert_eq!(stored(&target), [], "nothing stored in the target");
    qemu_counts_it_whole(&image);
    let check = qemu_img_ok(&["check", &p(&target)]);
    assert!(check.contains("No errors were found"), "{check}");
}

/// The persistent bitmaps qcow2 image `image` stores (qemu-img info, read while others
/// hold it): name, flags, granularity.
fn stored_in(image: &Path) -> String {
    image_bitmaps(image).to_string()
}

/// A persistent bitmap on a node no disk uses (blockdev-add's) is stored in its image at
/// a migration's switch-over, as QEMU 7.2's inactivation stores every node's, and the
/// source writes the image no more after it (its blockdev-del there leaves the image as
/// it was): the same on QEMU and Flotilla.
#[test]
fn a_loose_nodes_persistent_bitmap_is_stored_at_the_switch_over_as_on_qemu() {
    use flotilla_tests::migration::{free_port, wait_migration, Vmm};
    let mut seen = Vec::new();
    for vmm in [Vmm::Qemu, Vmm::Flotilla] {
        let dir = TempDir::new("loose-switch-over");
        let image = dir.path().join("loose.qcow2");
        qemu_img_ok(&["create", "-q", "-f", "qcow2", &p(&image), "16M"]);
        let source = vmm.start("");
        let mut s = source.client();
        s.ok(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "loose",
                   "file": {"driver": "file", "filename": p(&image)}}),
        );
        s.ok(
            "block-dirty-bitmap-add",
            json!({"node": "loose", "name": "m1", "persistent": true,
                   "granularity": 131072}),
        );
        let before = stored_in(&image);
        let uri = format!("tcp:127.0.0.1:{}", free_port());
        let destination = vmm.destination("", &uri);
        // Listening once its monitor answers.
        let d = destination.client();
        s.ok("migrate", json!({"uri": uri}));
        let info = wait_migration(&mut s, &["completed", "failed"]);
        assert_eq!(info["status"], "completed", "{vmm:?}: {info}");
        let switched = stored_in(&image);
        s.ok("blockdev-del", json!({"node-name": "loose"}));
        let deleted = stored_in(&image);
        seen.push(format!(
            "before {before}, after the switch-over {switched}, after blockdev-del {deleted}"
        ));
        drop((s, d));
        drop(destination);
        drop(source);
    }
    assert!(seen[0].contains("\"m1\""), "{seen:?}");
    assert_eq!(seen[1], seen[0], "Flotilla, then QEMU");
}
