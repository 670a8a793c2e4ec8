//! Snapshots through the gateway while the test guest writes and verifies
//! (blk-verify-loop), with qemu-img and a live QEMU 7.2 as the oracles: external
//! snapshots (blockdev-snapshot-sync) of a qcow2 and of a raw disk, several in a row;
//! internal snapshots (qemu-img lists them, each holds what the guest had written when
//! it was taken) and their deletion; transactions that fail (nothing left behind, every
//! image unchanged), that abort, and that snapshot two disks at once; bad arguments
//! against QEMU's answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_tests::blk::{
    first_mismatch, pattern_image, pattern_sector, qcow2_from_raw, qemu_img, qemu_img_ok,
};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::TempDir;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
const SEED: u64 = 0x0c13_0001;
/// 4 MiB disks.
const SECTORS: u64 = 8192;

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A disk image holding P(SEED): raw, or qcow2 made by `qemu-img convert`.
fn disk(dir: &Path, name: &str, qcow2: bool) -> PathBuf {
    let raw = dir.join(format!("{name}.raw"));
    pattern_image(&raw, SEED, SECTORS);
    if !qcow2 {
        return raw;
    }
    let image = dir.join(format!("{name}.qcow2"));
    qcow2_from_raw(&raw, &image, None);
    std::fs::remove_file(&raw).unwrap();
    image
}

fn drive(image: &Path, id: &str) -> String {
    let format = if image.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    format!("file={},format={format},id={id}", image.display())
}

/// The gateway serving `image` as d0 to the guest's verify loop of `rounds` rounds.
fn verifying(image: &Path, rounds: u32) -> Gateway {
    Gateway::start_with(
        1,
        &format!("scenario=blk-verify-loop seed={SEED:#x} rounds={rounds}"),
        &["--drive", &drive(image, "d0")],
    )
}

fn round_ok(gw: &mut Gateway, round: u32) {
    gw.vm
        .expect_prefix(&format!("GUEST BLK ROUND {round} OK"), TIMEOUT);
}

/// `qemu-img check` finds `image` clean (no leaks, no corruption).
fn check_clean(image: &Path) {
    let (ok, out, err) = qemu_img(&["check", &p(image)]);
    assert!(
        ok && out.contains("No errors were found"),
        "qemu-img check {}:\n{out}{err}",
        image.display()
    );
}

/// The guest view of `image` (through its backing chain), as qemu-img reads it.
fn convert_to_raw(image: &Path, snapshot: Option<&str>, out: &Path) {
    let mut args = vec!["convert".to_string(), "-O".into(), "raw".into()];
    if let Some(s) = snapshot {
        args.extend(["-l".into(), format!("snapshot.name={s}")]);
    }
    args.extend([p(image), p(out)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    qemu_img_ok(&args);
}

fn inserted(c: &mut QmpClient, device: &str) -> Value {
    let all = c.ok("query-block", json!({}));
    all.as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .unwrap_or_else(|| panic!("no {device} in {all}"))["inserted"]
        .clone()
}

/// What query-block says of a disk's chain: file, drv, backing_file, depth, and each
/// image's filename, format and backing-filename down the chain.
fn chain_facts(inserted: &Value) -> Value {
    let mut images = Vec::new();
    let mut at = &inserted["image"];
    while !at.is_null() {
        images.push(json!([
            at["filename"],
            at["format"],
            at["backing-filename"],
            at["virtual-size"]
        ]));
        at = &at["backing-image"];
    }
    json!({
        "file": inserted["file"],
        "drv": inserted["drv"],
        "backing_file": inserted["backing_file"],
        "backing_file_depth": inserted["backing_file_depth"],
        "images": images,
    })
}

/// Whether qemu-img (which shares no write) may open `base` and `top` beside their
/// user.
fn locks(base: &Path, top: &Path) -> (bool, bool) {
    (
        qemu_img(&["info", &p(base)]).0,
        qemu_img(&["info", &p(top)]).0,
    )
}

/// For a failed lock assertion: what qemu-img says about `image` and the kernel's locks
/// on its inode (/proc/locks: type, pid, and the byte range).
fn lock_report(image: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let (ok, out, err) = qemu_img(&["info", &p(image)]);
    let meta = std::fs::metadata(image).unwrap();
    let inode = format!(":{}", meta.ino());
    let held: Vec<String> = std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|f| f.ends_with(&inode))
        })
        .map(str::to_string)
        .collect();
    format!(
        "qemu-img info {} (ok {ok}):\n{out}{err}locks on inode {}:\n{}",
        image.display(),
        meta.ino(),
        held.join("\n")
    )
}

/// External snapshots of d0 after rounds 1, 2 and 3 of 5; the guest sees no error,
/// every image is clean, the chain is what qemu-img and QEMU (the same commands on a
/// copy of the image) say, and it reads as the last round's pattern.
fn external_snapshots(qcow2: bool) {
    let dir = TempDir::new(if qcow2 { "snap-ext-q" } else { "snap-ext-r" });
    let image = disk(dir.path(), "d0", qcow2);
    let copy = dir
        .path()
        .join(format!("copy.{}", if qcow2 { "qcow2" } else { "raw" }));
    std::fs::copy(&image, &copy).unwrap();
    // Two rounds after the last snapshot: the guest is still writing when it is paused.
    let mut gw = verifying(&image, 5);
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    let overlay = |n: u32, base: &Path| {
        base.with_file_name(format!(
            "s{n}-{}.qcow2",
            base.file_stem().unwrap().to_string_lossy()
        ))
    };
    for n in 1..=3 {
        round_ok(&mut gw, n);
        let mut args = json!({"device": "d0", "snapshot-file": p(&overlay(n, &image))});
        if n == 2 {
            args["snapshot-node-name"] = json!("snap2");
        }
        c.ok("blockdev-snapshot-sync", args);
    }
    // The locks are read while the disk is in use: a guest that finished and powered off
    // would have taken them with it (the gateway ends with the VM).
    c.ok("stop", json!({}));
    let status = c.ok("query-status", json!({}));
    assert_eq!(
        status["status"], "paused",
        "the guest was to be paused mid-write: {status}"
    );
    let ours = chain_facts(&inserted(&mut c, "d0"));
    let our_locks = locks(&image, &overlay(3, &image));
    let our_report = format!(
        "{}\n{}",
        lock_report(&image),
        lock_report(&overlay(3, &image))
    );
    c.ok("cont", json!({}));
    drop(c);
    gw.vm
        .expect_prefix("GUEST BLK VERIFY DONE rounds=5 errors=0", TIMEOUT);
    gw.expect_clean_exit(vmm, true);

    // The same commands on QEMU 7.2, over the copy.
    let qemu = Qemu::try_start(&["-drive", &format!("if=none,{}", drive(&copy, "d0"))])
        .expect("QEMU starts");
    let mut q = qemu.client();
    for n in 1..=3 {
        let mut args = json!({"device": "d0", "snapshot-file": p(&overlay(n, &copy))});
        if n == 2 {
            args["snapshot-node-name"] = json!("snap2");
        }
        q.ok("blockdev-snapshot-sync", args);
    }
    let theirs = chain_facts(&inserted(&mut q, "d0"));
    // The old top is locked as a backing file (qemu-img may read it), the new top as
    // the disk's image (it may not), as QEMU locks them.
    assert_eq!(
        our_locks,
        locks(&copy, &overlay(3, &copy)),
        "ours against QEMU's; ours:\n{our_report}"
    );
    assert_eq!(our_locks, (true, false), "{our_report}");
    drop(q);
    drop(qemu);
    let renamed = serde_json::to_string(&theirs).unwrap().replace(
        &copy.file_stem().unwrap().to_string_lossy().to_string(),
        "d0",
    );
    assert_eq!(
        serde_json::to_string(&ours).unwrap(),
        renamed,
        "query-block's chain against QEMU 7.2's"
    );

    let top = overlay(3, &image);
    let info = qemu_img_ok(&["info", "--backing-chain", &p(&top)]);
    let chain: Vec<&str> = info.lines().filter(|l| l.starts_with("image: ")).collect();
    let expected: Vec<String> = [
        overlay(3, &image),
        overlay(2, &image),
        overlay(1, &image),
        image.clone(),
    ]
    .iter()
    .map(|i| format!("image: {}", i.display()))
    .collect();
    assert_eq!(chain, expected, "{info}");
    for i in [&image, &overlay(1, &image), &overlay(2, &image), &top] {
        if i.extension().is_some_and(|e| e == "qcow2") {
            check_clean(i);
        }
    }
    last_round_in_the_overlays(dir.path(), &top, &image, 5);
}

/// Read through `top`, the chain holds round `rounds`' pattern; the image at its base
/// does not (the writes after the snapshots went to the overlays).
fn last_round_in_the_overlays(dir: &Path, top: &Path, base: &Path, rounds: u64) {
    let flat = dir.join("flat.raw");
    convert_to_raw(top, None, &flat);
    assert_eq!(
        first_mismatch(&flat, 0..SECTORS, |s| pattern_sector(SEED + rounds, s)),
        None
    );
    let below = dir.join("base.raw");
    convert_to_raw(base, None, &below);
    assert!(
        first_mismatch(&below, 0..SECTORS, |s| pattern_sector(SEED + rounds, s)).is_some(),
        "the last round reached the base image"
    );
}

#[test]
fn external_snapshots_of_a_qcow2_disk_while_the_guest_writes() {
    external_snapshots(true);
}

#[test]
fn external_snapshots_of_a_raw_disk_while_the_guest_writes() {
    external_snapshots(false);
}

/// blockdev-snapshot: an overlay qemu-img made over the disk's image, added with
/// `backing: null`, goes over the disk while the guest writes; query-block shows what
/// QEMU 7.2 shows for the same commands; the data lands in the overlay.
/// A daemon serves a chain of at most 64 images: the snapshot that would make it deeper
/// is refused (QEMU has no limit, so the words are ours), and the guest goes on with
/// the chain it has.
#[test]
fn a_snapshot_past_the_deepest_chain_served_is_refused() {
    let dir = TempDir::new("snap-depth");
    let image = disk(dir.path(), "d0", true);
    let mut gw = verifying(&image, 3);
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    round_ok(&mut gw, 1);
    // Paused, so that the guest is still there after 63 snapshots.
    c.ok("stop", json!({}));
    let overlay = |n: usize| p(&dir.path().join(format!("s{n}.qcow2")));
    for n in 1..64 {
        c.ok(
            "blockdev-snapshot-sync",
            json!({"device": "d0", "snapshot-file": overlay(n)}),
        );
    }
    let (class, desc) = c.err(
        "blockdev-snapshot-sync",
        json!({"device": "d0", "snapshot-file": overlay(64)}),
    );
    assert_eq!(class, "GenericError");
    assert!(
        desc.starts_with("the backing chain is deeper than 64 images at "),
        "{desc}"
    );
    assert!(
        !dir.path().join("s64.qcow2").exists(),
        "the refused snapshot left its file"
    );
    let mut depth = 0;
    let mut at = inserted(&mut c, "d0")["image"].clone();
    while at.is_object() {
        depth += 1;
        at = at["backing-image"].clone();
    }
    assert_eq!(depth, 64);
    c.ok("cont", json!({}));
    drop(c);
    gw.vm
        .expect_prefix("GUEST BLK VERIFY DONE rounds=3 errors=0", TIMEOUT);
    gw.expect_clean_exit(vmm, true);
}

#[test]
fn blockdev_snapshot_over_an_added_overlay() {
    let dir = TempDir::new("snap-bd");
    let image = disk(dir.path(), "d0", true);
    let copy = dir.path().join("copy.qcow2");
    std::fs::copy(&image, &copy).unwrap();
    let overlay_for = |base: &Path, name: &str| {
        let o = dir.path().join(name);
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            &p(base),
            "-F",
            "qcow2",
            &p(&o),
        ]);
        o
    };
    let add = |c: &mut QmpClient, o: &Path| {
        c.ok(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "ov", "backing": null,
                   "file": {"driver": "file", "filename": p(o)}}),
        );
    };
    let ov = overlay_for(&image, "ov.qcow2");
    // Rounds enough that the last one comes after the snapshot: with 3, a loaded machine
    // (two busy loops beside it) saw the guest finish before blockdev-add and the snapshot
    // were through (1 run in 12), and the last round then reached the base image.
    let rounds = 6;
    let mut gw = verifying(&image, rounds);
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    round_ok(&mut gw, 1);
    add(&mut c, &ov);
    c.ok("blockdev-snapshot", json!({"node": "d0", "overlay": "ov"}));
    let ours = chain_facts(&inserted(&mut c, "d0"));
    drop(c);
    gw.vm.expect_prefix(
        &format!("GUEST BLK VERIFY DONE rounds={rounds} errors=0"),
        TIMEOUT,
    );
    gw.expect_clean_exit(vmm, true);

    let ov_copy = overlay_for(&copy, "ov-copy.qcow2");
    let qemu = Qemu::try_start(&["-drive", &format!("if=none,{}", drive(&copy, "d0"))])
        .expect("QEMU starts");
    let mut q = qemu.client();
    add(&mut q, &ov_copy);
    q.ok("blockdev-snapshot", json!({"node": "d0", "overlay": "ov"}));
    let theirs = chain_facts(&inserted(&mut q, "d0"));
    drop(q);
    drop(qemu);
    let renamed = serde_json::to_string(&theirs)
        .unwrap()
        .replace("ov-copy", "ov")
        .replace("copy.qcow2", "d0.qcow2");
    assert_eq!(serde_json::to_string(&ours).unwrap(), renamed);
    check_clean(&image);
    check_clean(&ov);
    last_round_in_the_overlays(dir.path(), &ov, &image, rounds.into());
}

/// Internal snapshots taken while the guest writes each hold, sector by sector, one of
/// the patterns the guest wrote around that moment; one qemu-img made is listed and
/// deleted through QMP.
#[test]
fn internal_snapshots_while_the_guest_writes() {
    let dir = TempDir::new("snap-int");
    let image = disk(dir.path(), "d0", true);
    qemu_img_ok(&["snapshot", "-c", "before", &p(&image)]);
    let mut gw = verifying(&image, 4);
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    let names = |c: &mut QmpClient| -> Vec<String> {
        inserted(c, "d0")["image"]["snapshots"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(&mut c), ["before"]);
    let mut taken = Vec::new();
    for n in 1..=2u32 {
        round_ok(&mut gw, n);
        let name = format!("during{n}");
        c.ok(
            "blockdev-snapshot-internal-sync",
            json!({"device": "d0", "name": name}),
        );
        // The guest goes on while the snapshot is taken: it holds rounds from n on, up
        // to the round its writes had reached by the reply (a loaded machine let the
        // guest get two rounds past n before the snapshot).
        taken.push((name, u64::from(n)..=rounds_written(&mut c)));
    }
    // What follows needs the gateway, which ends with the VM: the guest is paused
    // before it can finish.
    c.ok("stop", json!({}));
    assert_eq!(names(&mut c), ["before", "during1", "during2"]);
    let nodes = c.ok("query-named-block-nodes", json!({}));
    let listed = nodes.as_array().unwrap().iter().any(|n| {
        n["image"]["snapshots"]
            .as_array()
            .is_some_and(|s| s.len() == 3)
    });
    assert!(
        listed,
        "query-named-block-nodes lists the snapshots: {nodes}"
    );
    let deleted = c.ok(
        "blockdev-snapshot-delete-internal-sync",
        json!({"device": "d0", "name": "before"}),
    );
    assert_eq!(deleted["name"], "before");
    assert_eq!(deleted["id"], "1");
    assert_eq!(names(&mut c), ["during1", "during2"]);
    c.ok("cont", json!({}));
    drop(c);
    gw.vm
        .expect_prefix("GUEST BLK VERIFY DONE rounds=4 errors=0", TIMEOUT);
    gw.expect_clean_exit(vmm, true);

    check_clean(&image);
    let list = qemu_img_ok(&["snapshot", "-l", &p(&image)]);
    assert!(
        list.contains("during1") && list.contains("during2") && !list.contains("before"),
        "{list}"
    );
    for (name, rounds) in taken {
        let out = dir.path().join(format!("{name}.raw"));
        convert_to_raw(&image, Some(&name), &out);
        let bad = first_mismatch(&out, 0..SECTORS, |s| {
            // A sector holds the pattern of one of `rounds`: the one it is, if any.
            let mut buf = [0u8; 512];
            use std::os::unix::fs::FileExt;
            std::fs::File::open(&out)
                .unwrap()
                .read_exact_at(&mut buf, s * 512)
                .unwrap();
            let mut patterns = rounds.clone().map(|r| pattern_sector(SEED + r, s));
            let first = pattern_sector(SEED + rounds.start(), s);
            patterns.find(|p| *p == buf).unwrap_or(first)
        });
        assert_eq!(
            bad, None,
            "snapshot {name} holds something the guest never wrote in rounds {rounds:?}"
        );
    }
    let flat = dir.path().join("flat.raw");
    convert_to_raw(&image, None, &flat);
    assert_eq!(
        first_mismatch(&flat, 0..SECTORS, |s| pattern_sector(SEED + 4, s)),
        None
    );
}

/// The last round the guest has written to (in part) by now: its bytes written over the
/// disk's size, rounded up (each round writes the whole disk once).
fn rounds_written(c: &mut QmpClient) -> u64 {
    let stats = c.ok("query-blockstats", json!({}));
    let written = stats
        .as_array()
        .and_then(|a| a.iter().find(|d| d["device"] == "d0"))
        .and_then(|d| d["stats"]["wr_bytes"].as_u64())
        .unwrap_or_else(|| panic!("no wr_bytes for d0 in {stats}"));
    written.div_ceil(SECTORS * 512)
}

fn contents(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A transaction whose second action fails leaves no new file, and every image as it
/// was; an abort action undoes an internal snapshot; a transaction of two disks'
/// snapshots takes both.
#[test]
fn transactions_are_all_or_nothing() {
    let dir = TempDir::new("snap-tx");
    let a = disk(dir.path(), "a", true);
    let b = disk(dir.path(), "b", false);
    let gw = Gateway::start_with(
        1,
        "",
        &[
            "-S",
            "--drive",
            &drive(&a, "d0"),
            "--drive",
            &drive(&b, "d1"),
        ],
    );
    let mut c = gw.client();
    let before = (contents(&a), contents(&b));
    let good = dir.path().join("a-s1.qcow2");
    let err = c.err(
        "transaction",
        json!({"actions": [
            {"type": "blockdev-snapshot-sync", "data": {"device": "d0", "snapshot-file": p(&good)}},
            {"type": "blockdev-snapshot-sync", "data": {"device": "d1", "snapshot-file": "/nonexistent/dir/x.qcow2"}},
        ]}),
    );
    assert_eq!(
        err.1,
        "Could not create '/nonexistent/dir/x.qcow2': No such file or directory"
    );
    assert!(
        !good.exists(),
        "the transaction left {} behind",
        good.display()
    );
    assert_eq!(inserted(&mut c, "d0")["file"], p(&a));
    assert_eq!(inserted(&mut c, "d0")["backing_file_depth"], 0);
    c.ok("quit", json!({}));
    drop(c);
    drop(gw);
    assert!(
        contents(&a) == before.0 && contents(&b) == before.1,
        "an image changed"
    );
    check_clean(&a);

    // An internal snapshot undone: qcow2 metadata moved (as in QEMU), but no snapshot
    // is left, the image is clean, and the guest's data is as it was.
    let gw = Gateway::start_with(
        1,
        "",
        &[
            "-S",
            "--drive",
            &drive(&a, "d0"),
            "--drive",
            &drive(&b, "d1"),
        ],
    );
    let mut c = gw.client();
    let err = c.err(
        "transaction",
        json!({"actions": [
            {"type": "blockdev-snapshot-internal-sync", "data": {"device": "d0", "name": "t2"}},
            {"type": "abort", "data": {}},
        ]}),
    );
    assert_eq!(err.1, "Transaction aborted using Abort action");
    assert!(inserted(&mut c, "d0")["image"]["snapshots"]
        .as_array()
        .is_none_or(|s| s.is_empty()));
    let err = c.err(
        "transaction",
        json!({"actions": [
            {"type": "blockdev-snapshot-internal-sync", "data": {"device": "d0", "name": "t3"}},
        ], "properties": {"completion-mode": "grouped"}}),
    );
    assert_eq!(err.1, "Action 'blockdev-snapshot-internal-sync' does not support Transaction property completion-mode = grouped");
    c.ok("quit", json!({}));
    drop(c);
    drop(gw);
    assert!(contents(&b) == before.1, "the raw image changed");
    check_clean(&a);
    let flat = dir.path().join("undone.raw");
    convert_to_raw(&a, None, &flat);
    assert_eq!(
        first_mismatch(&flat, 0..SECTORS, |s| pattern_sector(SEED, s)),
        None
    );
    assert!(qemu_img_ok(&["snapshot", "-l", &p(&a)]).trim().is_empty());

    let gw = Gateway::start_with(
        1,
        "",
        &[
            "-S",
            "--drive",
            &drive(&a, "d0"),
            "--drive",
            &drive(&b, "d1"),
        ],
    );
    let mut c = gw.client();
    let (sa, sb) = (dir.path().join("a-t.qcow2"), dir.path().join("b-t.qcow2"));
    c.ok(
        "transaction",
        json!({"actions": [
            {"type": "blockdev-snapshot-sync", "data": {"device": "d0", "snapshot-file": p(&sa)}},
            {"type": "blockdev-snapshot-sync", "data": {"device": "d1", "snapshot-file": p(&sb), "format": "qcow2"}},
        ]}),
    );
    assert_eq!(inserted(&mut c, "d0")["backing_file"], p(&a));
    assert_eq!(inserted(&mut c, "d1")["backing_file"], p(&b));
    // Two snapshots of one disk in one transaction (QEMU 7.2 aborts when the second
    // fails): undone together when the second fails, one over the other otherwise.
    let (u1, u2) = (dir.path().join("a-u1.qcow2"), dir.path().join("a-u2.qcow2"));
    let err = c.err(
        "transaction",
        json!({"actions": [
            {"type": "blockdev-snapshot-sync", "data": {"device": "d0", "snapshot-file": p(&u1)}},
            {"type": "blockdev-snapshot-sync", "data": {"device": "d0", "snapshot-file": "/nonexistent/dir/u.qcow2"}},
        ]}),
    );
    assert_eq!(
        err.1,
        "Could not create '/nonexistent/dir/u.qcow2': No such file or directory"
    );
    assert!(!u1.exists(), "the transaction left {} behind", u1.display());
    assert_eq!(inserted(&mut c, "d0")["file"], p(&sa));
    assert_eq!(inserted(&mut c, "d0")["backing_file_depth"], 1);
    c.ok(
        "transaction",
        json!({"actions": [
            {"type": "blockdev-snapshot-sync", "data": {"device": "d0", "snapshot-file": p(&u1)}},
            {"type": "blockdev-snapshot-sync", "data": {"device": "d0", "snapshot-file": p(&u2)}},
        ]}),
    );
    assert_eq!(inserted(&mut c, "d0")["file"], p(&u2));
    assert_eq!(inserted(&mut c, "d0")["backing_file"], p(&u1));
    assert_eq!(inserted(&mut c, "d0")["backing_file_depth"], 3);
    c.ok("quit", json!({}));
    drop(c);
    drop(gw);
    let info = qemu_img_ok(&["info", "--backing-chain", &p(&u2)]);
    let chain: Vec<&str> = info.lines().filter(|l| l.starts_with("image: ")).collect();
    assert_eq!(
        chain,
        [&u2, &u1, &sa, &a].map(|i| format!("image: {}", i.display())),
        "{info}"
    );
    for top in [&sa, &sb, &u1, &u2] {
        check_clean(top);
        let flat = dir.path().join("flat.raw");
        convert_to_raw(top, None, &flat);
        assert_eq!(
            first_mismatch(&flat, 0..SECTORS, |s| pattern_sector(SEED, s)),
            None
        );
    }
}

/// The files of `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A snapshot-file that exists already: QEMU 7.2 formats it at prepare (mode
/// absolute-paths) and leaves it formatted when the transaction aborts; here it comes
/// back byte-identical (and with mode existing it is never changed, as in QEMU). A
/// transaction that succeeds replaces it, keeping its permissions, and leaves nothing
/// else behind.
#[test]
fn an_aborted_transaction_puts_back_a_file_it_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("snap-tx-existing");
    let a = disk(dir.path(), "a", true);
    let existing = dir.path().join("existing.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", &p(&existing), "32M"]);
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5c 0 1M", &p(&existing)])
        .output()
        .expect("qemu-io (qemu-utils) is needed by this test");
    assert!(out.status.success(), "qemu-io: {out:?}");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = contents(&existing);
    let files = listing(dir.path());
    let gw = Gateway::start_with(1, "", &["-S", "--drive", &drive(&a, "d0")]);
    let mut c = gw.client();
    for mode in ["absolute-paths", "existing"] {
        let err = c.err(
            "transaction",
            json!({"actions": [
                {"type": "blockdev-snapshot-sync", "data": {"device": "d0", "snapshot-file": p(&existing), "mode": mode}},
                {"type": "abort", "data": {}},
            ]}),
        );
        assert_eq!(err.1, "Transaction aborted using Abort action");
        assert!(
            contents(&existing) == before,
            "mode {mode}: the file changed"
        );
        assert_eq!(listing(dir.path()), files, "mode {mode}");
        assert_eq!(inserted(&mut c, "d0")["file"], p(&a));
    }
    c.ok(
        "transaction",
        json!({"actions": [
            {"type": "blockdev-snapshot-sync", "data": {"device": "d0", "snapshot-file": p(&existing)}},
        ]}),
    );
    assert_eq!(inserted(&mut c, "d0")["file"], p(&existing));
    assert_eq!(inserted(&mut c, "d0")["backing_file"], p(&a));
    assert_eq!(listing(dir.path()), files, "a file was left behind");
    let mode = std::fs::metadata(&existing).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    c.ok("quit", json!({}));
    drop(c);
    drop(gw);
    check_clean(&existing);
    let info = qemu_img_ok(&["info", &p(&existing)]);
    assert!(info.contains(&format!("backing file: {}", p(&a))), "{info}");
}

/// Bad arguments get QEMU 7.2's answers (the same exchanges sent to both).
#[test]
fn bad_arguments_read_like_qemu() {
    let dir = TempDir::new("snap-bad");
    let q = disk(dir.path(), "q", true);
    let r = disk(dir.path(), "r", false);
    let qcopy = dir.path().join("qc.qcow2");
    let rcopy = dir.path().join("rc.raw");
    std::fs::copy(&q, &qcopy).unwrap();
    std::fs::copy(&r, &rcopy).unwrap();
    let f = |n: &str| p(&dir.path().join(n));
    let exchanges = [
        (
            "blockdev-snapshot-sync",
            json!({"device": "d0", "snapshot-file": "/nonexistent/dir/x.qcow2"}),
        ),
        (
            "blockdev-snapshot-sync",
            json!({"device": "nodev", "snapshot-file": f("x1.qcow2")}),
        ),
        (
            "blockdev-snapshot-sync",
            json!({"snapshot-file": f("x1.qcow2")}),
        ),
        (
            "blockdev-snapshot-sync",
            json!({"device": "d0", "snapshot-file": f("x1.qcow2"), "format": "vmdk2"}),
        ),
        (
            "blockdev-snapshot-sync",
            json!({"device": "d1", "snapshot-file": f("x1.raw"), "format": "raw"}),
        ),
        (
            "blockdev-snapshot-sync",
            json!({"device": "d0", "snapshot-file": f("x1.qcow2"), "mode": "existing"}),
        ),
        (
            "blockdev-snapshot-sync",
            json!({"device": "d0", "snapshot-file": f("x1.qcow2"), "mode": "bogus"}),
        ),
        (
            "blockdev-snapshot-sync",
            json!({"node-name": "top", "snapshot-file": f("x1.qcow2")}),
        ),
        (
            "blockdev-snapshot-sync",
            json!({"device": "d0", "snapshot-file": f("x1.qcow2"), "snapshot-node-name": "1bad"}),
        ),
        (
            "blockdev-snapshot-sync",
            json!({"device": "d0", "snapshot-file": f("x2.qcow2"), "snapshot-node-name": "top"}),
        ),
        ("blockdev-snapshot-sync", json!({"device": "d0"})),
        (
            "blockdev-snapshot-internal-sync",
            json!({"device": "d1", "name": "a"}),
        ),
        (
            "blockdev-snapshot-internal-sync",
            json!({"device": "nodev", "name": "a"}),
        ),
        (
            "blockdev-snapshot-internal-sync",
            json!({"device": "d0", "name": ""}),
        ),
        ("blockdev-snapshot-internal-sync", json!({"device": "d0"})),
        (
            "blockdev-snapshot-internal-sync",
            json!({"device": "d0", "name": "x", "extra": 1}),
        ),
        (
            "blockdev-snapshot-internal-sync",
            json!({"device": "top", "name": "dup"}),
        ),
        (
            "blockdev-snapshot-internal-sync",
            json!({"device": "d0", "name": "dup"}),
        ),
        (
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": "d1", "name": "a"}),
        ),
        (
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": "d0"}),
        ),
        (
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": "d0", "id": "7"}),
        ),
        (
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": "d0", "id": "1", "name": "b"}),
        ),
        (
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": "nodev", "id": "1"}),
        ),
        (
            "blockdev-snapshot",
            json!({"node": "nonode", "overlay": "top"}),
        ),
        (
            "blockdev-snapshot",
            json!({"node": "d0", "overlay": "nonode"}),
        ),
        ("blockdev-snapshot", json!({"node": "d0", "overlay": "d1"})),
        ("blockdev-snapshot", json!({"node": "d0"})),
        (
            "blockdev-snapshot",
            json!({"node": "d0", "overlay": "rawov"}),
        ),
        (
            "blockdev-snapshot",
            json!({"node": "d0", "overlay": "withbacking"}),
        ),
        (
            "transaction",
            json!({"actions": [{"type": "blockdev-snapshot", "data": {"node": "d0", "overlay": "nonode"}}]}),
        ),
        ("transaction", json!({})),
        ("transaction", json!({"actions": [{"type": "abort"}]})),
        (
            "transaction",
            json!({"actions": [{"type": "abort", "data": {"x": 1}}]}),
        ),
        ("transaction", json!({"actions": [{"data": {}}]})),
        (
            "transaction",
            json!({"actions": [{"type": "nosuch", "data": {}}]}),
        ),
        (
            "transaction",
            json!({"actions": [{"type": "abort", "data": {}}], "properties": {"completion-mode": "sometimes"}}),
        ),
        ("transaction", json!({"actions": []})),
        // A node no disk uses: the gateway makes and deletes the snapshot itself.
        (
            "blockdev-snapshot-internal-sync",
            json!({"device": "withbacking", "name": "s"}),
        ),
        (
            "blockdev-snapshot-internal-sync",
            json!({"device": "withbacking", "name": "s"}),
        ),
        (
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": "withbacking", "name": "s"}),
        ),
        (
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": "withbacking", "name": "s"}),
        ),
    ];
    let gw = Gateway::start_with(
        1,
        "",
        &[
            "-S",
            "--drive",
            &format!("{},node-name=top", drive(&q, "d0")),
            "--drive",
            &drive(&r, "d1"),
        ],
    );
    let mut ours = gw.client();
    let qemu = Qemu::try_start(&[
        "-drive",
        &format!("if=none,{},node-name=top", drive(&qcopy, "d0")),
        "-drive",
        &format!("if=none,{}", drive(&rcopy, "d1")),
    ])
    .expect("QEMU starts");
    let mut theirs = qemu.client();
    // Overlays that cannot be: a raw node, a qcow2 node with a backing node.
    let raw_ov = dir.path().join("rawov.raw");
    std::fs::write(&raw_ov, vec![0u8; 1 << 20]).unwrap();
    let with_backing = dir.path().join("wb.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        &p(&r),
        "-F",
        "raw",
        &p(&with_backing),
    ]);
    for client in [&mut ours, &mut theirs] {
        client.ok(
            "blockdev-add",
            json!({"driver": "raw", "node-name": "rawov",
                   "file": {"driver": "file", "filename": p(&raw_ov), "locking": "off"}}),
        );
        client.ok(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "withbacking",
                   "file": {"driver": "file", "filename": p(&with_backing), "locking": "off"}}),
        );
    }
    for (command, args) in exchanges {
        let a = ours.execute(command, args.clone());
        let b = theirs.execute(command, args.clone());
        let strip = |v: &Value| -> Value {
            match v.get("error") {
                Some(e) => json!({"error": e}),
                None => json!({"return": v["return"].is_object()}),
            }
        };
        assert_eq!(strip(&a), strip(&b), "{command} {args}");
    }
}

/// change-backing-file on a disk's top (by its daemon) and on an image below it (by
/// the gateway), against QEMU 7.2 doing the same on a copy of the chain: the same
/// answers, errors, query-block chain and headers (qemu-img info).
#[test]
fn change_backing_file_like_qemu() {
    let dir = TempDir::new("snap-cbf");
    let side = |tag: &str| {
        let d = dir.path().join(tag);
        std::fs::create_dir(&d).unwrap();
        let base = d.join("base.raw");
        pattern_image(&base, SEED, SECTORS);
        let mid = d.join("mid.qcow2");
        let top = d.join("top.qcow2");
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            &p(&base),
            "-F",
            "raw",
            &p(&mid),
        ]);
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-b",
            &p(&mid),
            "-F",
            "qcow2",
            &p(&top),
        ]);
        (d, top, mid)
    };
    let (ours_dir, ours_top, ours_mid) = side("ours");
    let (theirs_dir, theirs_top, theirs_mid) = side("theirs");
    let gw = Gateway::start_with(
        1,
        "",
        &[
            "-S",
            "--drive",
            &format!("{},node-name=top", drive(&ours_top, "d0")),
        ],
    );
    let qemu = Qemu::try_start(&[
        "-drive",
        &format!("if=none,{},node-name=top", drive(&theirs_top, "d0")),
    ])
    .expect("QEMU starts");
    let (mut ours, mut theirs) = (gw.client(), qemu.client());
    // The automatic names of the images below differ between the two: found by file.
    let node_of = |c: &mut QmpClient, file: &Path, drv: &str| -> String {
        let nodes = c.ok("query-named-block-nodes", json!({}));
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["file"] == p(file) && n["drv"] == drv)
            .unwrap_or_else(|| panic!("no {drv} node of {}: {nodes}", file.display()))["node-name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ours_base = ours_dir.join("base.raw");
    let theirs_base = theirs_dir.join("base.raw");
    let both = [
        (&mut ours, (ours_mid.clone(), ours_base)),
        (&mut theirs, (theirs_mid.clone(), theirs_base)),
    ];
    let mut answers: Vec<Vec<Value>> = Vec::new();
    for (c, (mid, base)) in both {
        let mid_node = node_of(c, &mid, "qcow2");
        let base_node = node_of(c, &base, "raw");
        let mut got = Vec::new();
        for (image, name) in [
            ("top", "mid.qcow2"),
            (mid_node.as_str(), "base.raw"),
            (base_node.as_str(), "x"),
            ("nonode", "x"),
        ] {
            let r = c.execute(
                "change-backing-file",
                json!({"device": "d0", "image-node-name": image, "backing-file": name}),
            );
            got.push(r.get("error").cloned().unwrap_or(json!("ok")));
        }
        let r = c.execute(
            "change-backing-file",
            json!({"device": "nodev", "image-node-name": "top", "backing-file": "x"}),
        );
        got.push(r["error"].clone());
        let facts = serde_json::to_string(&chain_facts(&inserted(c, "d0"))).unwrap();
        got.push(json!(facts
            .replace(&p(&ours_dir), "DIR")
            .replace(&p(&theirs_dir), "DIR")));
        answers.push(got);
    }
    assert_eq!(answers[0], answers[1]);
    drop(ours);
    drop(theirs);
    drop(gw);
    drop(qemu);
    for (a, b) in [(&ours_top, &theirs_top), (&ours_mid, &theirs_mid)] {
        let info = |i: &Path| {
            qemu_img_ok(&["info", "-U", &p(i)])
                .lines()
                .filter(|l| l.starts_with("backing file"))
                .map(|l| {
                    l.replace(&p(&ours_dir), "DIR")
                        .replace(&p(&theirs_dir), "DIR")
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(info(a), info(b));
    }
}
