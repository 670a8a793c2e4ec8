//! Dirty bitmaps through the gateway while the test guest writes and verifies the whole
//! disk round after round (blk-verify-loop): what query-block counts after the guest's
//! writes, a clear (with the VM stopped: nothing is counted until the guest writes
//! again), a disabled bitmap that stays clean, bitmaps kept across a daemon restarted
//! over QMP and one SIGKILLed (the new daemon marks into them from its first request),
//! across block_resize (marks carried over, new memory marked), across an external
//! snapshot (the old top's bitmaps stop counting, as in QEMU), and transactions that
//! fail (marks come back, nothing added) or succeed. QEMU's answers to the same commands
//! are compared in qmp_oracle.rs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_tests::blk::{pattern_image, qcow2_from_raw, two_more_rounds};
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::TempDir;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
const SEED: u64 = 0x0c14_0001;
/// 4 MiB disks.
const SECTORS: u64 = 8192;
const DISK: u64 = SECTORS * 512;
const RESTART: &str = "__io.flotilla_block-daemon-restart";

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// The gateway, stopped (-S), serving `drive` as d0 to an endless verify loop.
fn verifying(drive: &str) -> Gateway {
    flotilla_tests::blk::verifying_gateway(SEED, drive)
}

/// {name: (count, granularity, recording)} of the bitmaps in `list`, checking QEMU's
/// members.
fn summary(list: Option<&Value>) -> Vec<(String, u64, u64, bool)> {
    let Some(list) = list else {
        return Vec::new();
    };
    list.as_array()
        .unwrap_or_else(|| panic!("dirty-bitmaps is not a list: {list}"))
        .iter()
        .map(|b| {
            assert_eq!(b["busy"], false, "{b}");
            assert_eq!(b["persistent"], false, "{b}");
            (
                b["name"].as_str().unwrap().to_string(),
                b["count"].as_u64().unwrap(),
                b["granularity"].as_u64().unwrap(),
                b["recording"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// query-block's bitmaps of d0, newest first.
fn bitmaps(c: &mut QmpClient) -> Vec<(String, u64, u64, bool)> {
    let all = c.ok("query-block", json!({}));
    let d0 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == "d0")
        .unwrap_or_else(|| panic!("no d0 in {all}"));
    summary(d0["inserted"].get("dirty-bitmaps"))
}

/// The count of bitmap `name` of d0.
fn count(c: &mut QmpClient, name: &str) -> u64 {
    bitmaps(c)
        .into_iter()
        .find(|b| b.0 == name)
        .unwrap_or_else(|| panic!("no bitmap {name} on d0"))
        .1
}

/// query-named-block-nodes' bitmaps of node `node`.
fn node_bitmaps(c: &mut QmpClient, node: &str) -> Vec<(String, u64, u64, bool)> {
    let all = c.ok("query-named-block-nodes", json!({}));
    let n = all
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == node)
        .unwrap_or_else(|| panic!("no node {node} in {all}"));
    summary(n.get("dirty-bitmaps"))
}

fn add(c: &mut QmpClient, node: &str, name: &str, more: Value) {
    let mut args = json!({"node": node, "name": name});
    args.as_object_mut()
        .unwrap()
        .extend(more.as_object().unwrap().clone());
    c.ok("block-dirty-bitmap-add", args);
}

fn bitmap(node: &str, name: &str) -> Value {
    json!({"node": node, "name": name})
}

/// The pid of d0's block daemon (a child of the gateway).
fn daemon_pid(gw: &Gateway) -> i32 {
    flotilla_tests::procs::live_child(gw.vm.pid(), "block-daemon", TIMEOUT)
}

#[test]
fn guest_writes_are_counted_cleared_and_kept_across_daemon_restarts() {
    let dir = TempDir::new("bitmaps-raw");
    let image = dir.path().join("d0.raw");
    pattern_image(&image, SEED, SECTORS);
    let mut gw = verifying(&format!("file={},format=raw,id=d0", p(&image)));
    let mut c = gw.client();
    add(&mut c, "d0", "all", json!({}));
    add(&mut c, "d0", "fine", json!({"granularity": 4096}));
    add(&mut c, "d0", "off", json!({"disabled": true}));
    assert_eq!(
        bitmaps(&mut c),
        [
            ("off".to_string(), 0, 65536, false),
            ("fine".to_string(), 0, 4096, true),
            ("all".to_string(), 0, 65536, true),
        ],
        "newest first, QEMU's default granularity for raw, nothing written yet"
    );
    two_more_rounds(&mut gw, &mut c);
    let full = |name: &str, granularity| (name.to_string(), DISK, granularity, true);
    assert_eq!(
        bitmaps(&mut c),
        [
            ("off".to_string(), 0, 65536, false),
            full("fine", 4096),
            full("all", 65536)
        ]
    );

    // A clear with the VM stopped: nothing counts until the guest writes again.
    c.ok("block-dirty-bitmap-clear", bitmap("d0", "all"));
    assert_eq!(count(&mut c, "all"), 0);
    assert_eq!(count(&mut c, "fine"), DISK, "a clear is of one bitmap");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(&mut c, "all"), 0, "marked while the VM was stopped");
    two_more_rounds(&mut gw, &mut c);
    assert_eq!(count(&mut c, "all"), DISK);

    // A daemon restarted over QMP marks into the same bitmaps from its first request.
    c.ok("block-dirty-bitmap-clear", bitmap("d0", "all"));
    c.ok(RESTART, json!({"device": "d0"}));
    // Its event, so that the wait after the SIGKILL below is for that daemon.
    c.event("__io.flotilla_BLOCK_DAEMON_RESTARTED");
    assert_eq!(count(&mut c, "fine"), DISK, "marks outlive the daemon");
    two_more_rounds(&mut gw, &mut c);
    assert_eq!(count(&mut c, "all"), DISK);

    // And one SIGKILLed: the supervisor's new daemon too.
    c.ok("block-dirty-bitmap-clear", bitmap("d0", "all"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon_pid(&gw)),
        nix::sys::signal::Signal::SIGKILL,
    );
    c.event("__io.flotilla_BLOCK_DAEMON_RESTARTED");
    two_more_rounds(&mut gw, &mut c);
    assert_eq!(count(&mut c, "all"), DISK);
    assert_eq!(count(&mut c, "off"), 0, "a disabled bitmap records nothing");

    // block_resize: marks carried over into the grown memory, which the daemon marks.
    c.ok("block-dirty-bitmap-clear", bitmap("d0", "all"));
    c.ok("block_resize", json!({"device": "d0", "size": 2 * DISK}));
    assert_eq!(count(&mut c, "fine"), DISK, "marks carried over");
    assert_eq!(count(&mut c, "all"), 0);
    two_more_rounds(&mut gw, &mut c);
    assert_eq!(
        count(&mut c, "all"),
        DISK,
        "the guest writes the first {DISK} bytes, marked in the grown bitmap"
    );

    c.ok("block-dirty-bitmap-remove", bitmap("d0", "fine"));
    let names: Vec<String> = bitmaps(&mut c).into_iter().map(|b| b.0).collect();
    assert_eq!(names, ["off", "all"]);
    c.ok("cont", json!({}));
    assert!(
        !gw.vm.transcript().contains("FAILED"),
        "the guest saw errors:\n{}",
        gw.vm.transcript()
    );
}

/// A qcow2 image of P(SEED) with 4 KiB clusters.
fn qcow2_disk(dir: &Path) -> PathBuf {
    let raw = dir.join("d0.raw");
    pattern_image(&raw, SEED, SECTORS);
    let image = dir.join("d0.qcow2");
    qcow2_from_raw(&raw, &image, Some("cluster_size=4096"));
    image
}

#[test]
fn transactions_undo_or_keep_bitmaps_and_a_snapshot_leaves_them_on_the_old_top() {
    let dir = TempDir::new("bitmaps-qcow2");
    let image = qcow2_disk(dir.path());
    let mut gw = verifying(&format!(
        "file={},format=qcow2,id=d0,node-name=base",
        p(&image)
    ));
    let mut c = gw.client();
    add(&mut c, "base", "b0", json!({}));
    assert_eq!(
        bitmaps(&mut c),
        [("b0".to_string(), 0, 4096, true)],
        "QEMU's default granularity: the cluster size"
    );
    two_more_rounds(&mut gw, &mut c);
    assert_eq!(count(&mut c, "b0"), DISK);

    // A failing transaction: the clear's marks come back, the add is undone.
    let action = |kind: &str, data: Value| json!({"type": kind, "data": data});
    let failed = c.err(
        "transaction",
        json!({"actions": [
            action("block-dirty-bitmap-clear", bitmap("d0", "b0")),
            action("block-dirty-bitmap-add", bitmap("d0", "b1")),
            action("abort", json!({})),
        ]}),
    );
    assert_eq!(
        failed,
        (
            "GenericError".to_string(),
            "Transaction aborted using Abort action".to_string()
        )
    );
    assert_eq!(bitmaps(&mut c), [("b0".to_string(), DISK, 4096, true)]);

    // "Full backup + new bitmap" as one step: clear and add together.
    c.ok(
        "transaction",
        json!({"actions": [
            action("block-dirty-bitmap-clear", bitmap("d0", "b0")),
            action("block-dirty-bitmap-add", json!({"node": "d0", "name": "b1", "granularity": 65536})),
        ]}),
    );
    assert_eq!(
        bitmaps(&mut c),
        [
            ("b1".to_string(), 0, 65536, true),
            ("b0".to_string(), 0, 4096, true)
        ]
    );

    // An external snapshot: the guest writes to the new top; the old top's bitmaps
    // (listed on their node, no longer on the device) see nothing, as in QEMU.
    let overlay = dir.path().join("top.qcow2");
    c.ok(
        "blockdev-snapshot-sync",
        json!({"device": "d0", "snapshot-file": p(&overlay), "snapshot-node-name": "top", "format": "qcow2"}),
    );
    assert_eq!(bitmaps(&mut c), [], "the new top has none");
    two_more_rounds(&mut gw, &mut c);
    let old_top = [
        ("b1".to_string(), 0, 65536, true),
        ("b0".to_string(), 0, 4096, true),
    ];
    assert_eq!(node_bitmaps(&mut c, "base"), old_top);
    add(&mut c, "d0", "t", json!({}));
    two_more_rounds(&mut gw, &mut c);
    assert_eq!(node_bitmaps(&mut c, "base"), old_top);
    assert_eq!(
        node_bitmaps(&mut c, "top"),
        [("t".to_string(), DISK, 65536, true)]
    );
    // On the old top, by its node name: removed like any other.
    c.ok("block-dirty-bitmap-remove", bitmap("base", "b1"));
    let (_, missing) = c.err("block-dirty-bitmap-remove", bitmap("d0", "b0"));
    assert_eq!(
        missing, "Dirty bitmap 'b0' not found",
        "d0 is the new top now"
    );
    c.ok("cont", json!({}));
    assert!(
        !gw.vm.transcript().contains("FAILED"),
        "the guest saw errors:\n{}",
        gw.vm.transcript()
    );
}

#[test]
fn bitmaps_are_bounded_per_disk_and_in_memory() {
    let dir = TempDir::new("bitmaps-bounds");
    // A sparse 1 TiB disk: a bitmap at 512 bytes per bit takes 256 MiB.
    let image = dir.path().join("big.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let small = dir.path().join("small.raw");
    pattern_image(&small, SEED, SECTORS);
    let gw = Gateway::start(&[
        "-S",
        "--drive",
        &format!("file={},format=raw,id=big", p(&image)),
        "--drive",
        &format!("file={},format=raw,id=d0", p(&small)),
    ]);
    let mut c = gw.client();
    for i in 0..4 {
        add(
            &mut c,
            "big",
            &format!("fine{i}"),
            json!({"granularity": 512}),
        );
    }
    let (class, desc) = c.err(
        "block-dirty-bitmap-add",
        json!({"node": "big", "name": "fine4", "granularity": 512}),
    );
    assert_eq!(class, "GenericError");
    assert_eq!(
        desc,
        "dirty bitmaps would take 1342177280 bytes of memory: at most 1073741824 in all"
    );
    // The bound is on all disks together; removing one makes room again.
    let (_, desc) = c.err(
        "block-dirty-bitmap-add",
        json!({"node": "d0", "name": "b", "granularity": 512}),
    );
    assert!(desc.starts_with("dirty bitmaps would take"), "{desc}");
    c.ok("block-dirty-bitmap-remove", bitmap("big", "fine0"));
    add(&mut c, "d0", "b", json!({"granularity": 512}));

    for i in 1..64 {
        add(&mut c, "d0", &format!("b{i}"), json!({}));
    }
    let (_, desc) = c.err("block-dirty-bitmap-add", bitmap("d0", "one more"));
    assert_eq!(
        desc,
        "disk d0 has 64 dirty bitmaps, as many as a disk may have"
    );
    assert_eq!(bitmaps(&mut c).len(), 64);
}

/// A transaction whose merge is undone (a later action fails): a bitmap nobody marks
/// gets its marks from before back, as in QEMU 7.2; a recording bitmap of a disk keeps
/// the merged marks, since its daemon may have marked writes into it after the merge
/// (QEMU's transaction drains all I/O, ours does not stop the disk): more marks than
/// QEMU's, never fewer, so that an incremental backup from it never misses a write.
#[test]
fn an_undone_merge_restores_only_what_no_daemon_marks() {
    let dir = TempDir::new("bitmaps-merge-abort");
    let image = dir.path().join("d0.raw");
    pattern_image(&image, SEED, SECTORS);
    let mut gw = verifying(&format!("file={},format=raw,id=d0", p(&image)));
    let mut c = gw.client();
    add(&mut c, "d0", "src", json!({}));
    add(&mut c, "d0", "off", json!({"disabled": true}));
    add(&mut c, "d0", "rec", json!({}));
    two_more_rounds(&mut gw, &mut c);
    c.ok("block-dirty-bitmap-clear", bitmap("d0", "rec"));
    assert_eq!((count(&mut c, "src"), count(&mut c, "off")), (DISK, 0));
    assert_eq!(count(&mut c, "rec"), 0);
    for target in ["off", "rec"] {
        let (class, _) = c.err(
            "transaction",
            json!({"actions": [
                {"type": "block-dirty-bitmap-merge",
                 "data": {"node": "d0", "target": target, "bitmaps": ["src"]}},
                // Fails: the name is taken.
                {"type": "block-dirty-bitmap-add", "data": {"node": "d0", "name": "src"}},
            ]}),
        );
        assert_eq!(class, "GenericError");
    }
    assert_eq!(
        count(&mut c, "off"),
        0,
        "the disabled bitmap's marks from before"
    );
    assert_eq!(
        count(&mut c, "rec"),
        DISK,
        "the recording bitmap keeps the merge"
    );
    // Merged for good, both have the source's marks.
    c.ok(
        "block-dirty-bitmap-merge",
        json!({"node": "d0", "target": "off", "bitmaps": ["src"]}),
    );
    assert_eq!(count(&mut c, "off"), DISK);
}
