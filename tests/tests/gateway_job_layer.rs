//! QEMU's generic job layer as libvirt 9.0 drives it, against a live QEMU 7.2: the same
//! exchanges go to both and their transcripts (answers, errors, and the events each
//! command brought, in order) must be equal. blockdev-create's jobs (the file and qcow2
//! drivers: what libvirt creates a snapshot's overlay and a copy's target with, and the
//! errors a job ends with), job-dismiss, job-finalize, job-cancel, job-complete,
//! job-pause and job-resume, and a block-stream started with auto-finalize and
//! auto-dismiss false: pending (BLOCK_JOB_PENDING) until job-finalize, concluded until
//! job-dismiss, each refusing the other verbs in QEMU's words; the transaction action
//! block-dirty-bitmap-remove libvirt ends a pivot with. And the end of libvirt's
//! blockcopy --pivot: dirty bitmaps on nodes no disk uses, kept on their nodes across
//! the pivot, and the copy's source nodes left in the graph until blockdev-del.

use std::path::Path;
use std::time::Duration;

use flotilla_tests::blk::{image_bitmaps, qemu_img_ok};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{require_tool, TempDir};
use serde_json::{json, Value};

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A base and a top over it (16 MiB), and an empty file for a qcow2 blockdev-create.
fn images(dir: &Path) {
    let base = dir.join("base.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", &p(&base), "16M"]);
    let top = dir.join("top.qcow2");
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
    ]);
    std::fs::write(dir.join("new1.qcow2"), b"").unwrap();
}

/// Runs each (command, arguments) and notes its answer and the events that came with
/// it or right after (their data, the paths of `dir` as DIR).
fn transcript(c: &mut QmpClient, dir: &Path, steps: &[(&str, Value)]) -> Vec<String> {
    let mut out = Vec::new();
    for (command, args) in steps {
        let reply = c.execute(command, args.clone());
        let answer = match reply.get("error") {
            Some(e) => format!("error {} {}", e["class"], e["desc"]),
            None => reply["return"].to_string(),
        };
        // The job's own events follow the answer (it runs after it).
        while c
            .event_within("__none__", Duration::from_millis(400))
            .is_some()
        {}
        out.push(format!("{command} {args} -> {answer}"));
        for e in c.events.drain(..) {
            out.push(format!("  {} {}", e["event"], e["data"]));
        }
    }
    out.iter().map(|l| l.replace(&p(dir), "DIR")).collect()
}

fn steps(dir: &Path) -> Vec<(&'static str, Value)> {
    let base = p(&dir.join("base.qcow2"));
    let unknown = json!({"id": "nope"});
    let create = |id: &str, options: Value| json!({"job-id": id, "options": options});
    let qcow2 = |extra: Value| {
        let mut o = json!({"driver": "qcow2", "file": "n1", "size": 16 << 20});
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        o
    };
    vec![
        ("job-dismiss", unknown.clone()),
        ("job-finalize", unknown.clone()),
        ("job-cancel", unknown.clone()),
        ("job-complete", unknown.clone()),
        ("job-pause", unknown.clone()),
        ("job-resume", unknown),
        // The file driver: a file made.
        (
            "blockdev-create",
            create(
                "c0",
                json!({"driver": "file", "filename": p(&dir.join("newf.img")), "size": 1 << 20}),
            ),
        ),
        ("query-jobs", json!({})),
        ("job-dismiss", json!({"id": "c0"})),
        // qcow2 into a file node, as libvirt creates an overlay.
        (
            "blockdev-add",
            json!({"driver": "file", "filename": p(&dir.join("new1.qcow2")),
                   "node-name": "n1", "auto-read-only": true, "discard": "unmap"}),
        ),
        (
            "blockdev-create",
            create(
                "c1",
                qcow2(json!({"cluster-size": 65536, "backing-file": base, "backing-fmt": "qcow2"})),
            ),
        ),
        ("blockdev-create", create("c1", qcow2(json!({})))),
        ("query-jobs", json!({})),
        ("job-finalize", json!({"id": "c1"})),
        ("job-dismiss", json!({"id": "c1"})),
        // Errors the job ends with.
        (
            "blockdev-create",
            create("c2", qcow2(json!({"cluster-size": 1000}))),
        ),
        ("query-jobs", json!({})),
        ("job-dismiss", json!({"id": "c2"})),
        (
            "blockdev-create",
            create("c3", qcow2(json!({"file": "nonode"}))),
        ),
        ("query-jobs", json!({})),
        ("job-dismiss", json!({"id": "c3"})),
        (
            "blockdev-create",
            create("c4", qcow2(json!({"backing-fmt": "qcow2"}))),
        ),
        ("query-jobs", json!({})),
        ("job-dismiss", json!({"id": "c4"})),
        (
            "blockdev-create",
            create("c5", qcow2(json!({"size": 1000}))),
        ),
        ("job-dismiss", json!({"id": "c5"})),
        // Errors of the command itself.
        (
            "blockdev-create",
            json!({"options": {"driver": "qcow2", "file": "n1", "size": 16 << 20}}),
        ),
        (
            "blockdev-create",
            create("c6", json!({"driver": "qcow2", "file": "n1"})),
        ),
        (
            "blockdev-create",
            create("c6", json!({"driver": "raw", "size": 1})),
        ),
        ("blockdev-create", create("c6", qcow2(json!({"bogus": 1})))),
        (
            "blockdev-create",
            create("c6", json!({"driver": "nope", "size": 1})),
        ),
        // libvirt's temporary bitmap around a pivot: added, then removed by a transaction.
        (
            "block-dirty-bitmap-add",
            json!({"node": "d0", "name": "libvirt-tmp-activewrite"}),
        ),
        (
            "transaction",
            json!({"actions": [{"type": "block-dirty-bitmap-remove",
                                "data": {"node": "d0", "name": "libvirt-tmp-activewrite"}}]}),
        ),
        (
            "transaction",
            json!({"actions": [{"type": "block-dirty-bitmap-remove",
                                "data": {"node": "d0", "name": "libvirt-tmp-activewrite"}}]}),
        ),
        // A stream that waits for job-finalize, then for job-dismiss.
        (
            "block-stream",
            json!({"device": "d0", "job-id": "s", "auto-finalize": false, "auto-dismiss": false}),
        ),
        ("query-jobs", json!({})),
        ("query-block-jobs", json!({})),
        ("job-dismiss", json!({"id": "s"})),
        ("job-complete", json!({"id": "s"})),
        ("job-pause", json!({"id": "s"})),
        ("block-stream", json!({"device": "d0", "job-id": "s"})),
        ("job-finalize", json!({"id": "s"})),
        ("query-jobs", json!({})),
        ("query-block-jobs", json!({})),
        ("job-finalize", json!({"id": "s"})),
        ("block-job-cancel", json!({"device": "s"})),
        ("block-job-set-speed", json!({"device": "s", "speed": 1})),
        ("job-cancel", json!({"id": "s"})),
        ("job-dismiss", json!({"id": "s"})),
        ("query-jobs", json!({})),
        ("query-block-jobs", json!({})),
    ]
}

#[test]
fn the_job_layer_answers_as_qemu() {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let qdir = TempDir::new("jobs-qemu");
    images(qdir.path());
    let qemu = Qemu::try_start(&[
        "-blockdev",
        &format!(
            "driver=qcow2,node-name=d0,file.driver=file,file.filename={}",
            p(&qdir.path().join("top.qcow2"))
        ),
    ])
    .unwrap_or_else(|e| panic!("QEMU did not start: {e}"));
    let mut q = qemu.client();
    let theirs = transcript(&mut q, qdir.path(), &steps(qdir.path()));
    drop(q);
    drop(qemu);

    let dir = TempDir::new("jobs-ours");
    images(dir.path());
    let gw = Gateway::start_with(
        1,
        "scenario=idle",
        &[
            "-S",
            "--drive",
            &format!(
                "file={},format=qcow2,id=d0",
                p(&dir.path().join("top.qcow2"))
            ),
        ],
    );
    let mut c = gw.client();
    let ours = transcript(&mut c, dir.path(), &steps(dir.path()));
    assert_eq!(
        ours,
        theirs,
        "\nours:\n{}\nQEMU's:\n{}",
        ours.join("\n"),
        theirs.join("\n")
    );
    // The images the jobs made are QEMU's images.
    let info: Value = serde_json::from_str(&qemu_img_ok(&[
        "info",
        "--output=json",
        "-U",
        &p(&dir.path().join("new1.qcow2")),
    ]))
    .unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], 16 << 20, "{info}");
    assert_eq!(
        std::fs::metadata(dir.path().join("newf.img"))
            .unwrap()
            .len(),
        1 << 20
    );
}

/// libvirt's source disk (a qcow2 image over a file node, as its -blockdev pair) and a
/// copy's target, 16 MiB each, and a raw file for a node no disk uses.
fn copy_images(dir: &Path) {
    for name in ["disk.qcow2", "copy.qcow2"] {
        qemu_img_ok(&["create", "-q", "-f", "qcow2", &p(&dir.join(name)), "16M"]);
    }
    std::fs::write(dir.join("loose.raw"), vec![0u8; 1 << 20]).unwrap();
}

/// libvirt's -blockdev pair for image `file` of `dir`: libvirt-N-storage, libvirt-N-format.
fn libvirt_pair(dir: &Path, n: u32, file: &str) -> [Value; 2] {
    let storage = format!("libvirt-{n}-storage");
    [
        json!({"driver": "file", "filename": p(&dir.join(file)), "node-name": storage,
               "auto-read-only": true, "discard": "unmap"}),
        json!({"node-name": format!("libvirt-{n}-format"), "read-only": false,
               "driver": "qcow2", "file": storage}),
    ]
}

/// The command line of a VM with libvirt's disk 1 on a virtio-blk device (QEMU's
/// options; ours take `--`).
fn copy_command_line(dir: &Path, dashes: &str) -> Vec<String> {
    let mut out = Vec::new();
    for node in libvirt_pair(dir, 1, "disk.qcow2") {
        out.push(format!("{dashes}blockdev"));
        out.push(node.to_string());
    }
    out.push(format!("{dashes}device"));
    out.push("virtio-blk-pci,drive=libvirt-1-format,id=virtio-disk0".into());
    out
}

/// What the queries say of the nodes and their bitmaps: query-named-block-nodes as
/// (node, its bitmaps), query-block as (device, its node, its bitmaps).
fn nodes_and_bitmaps(command: &str, answer: &Value) -> Value {
    let list = answer.as_array().cloned().unwrap_or_default();
    match command {
        "query-named-block-nodes" => list
            .iter()
            .map(|n| json!([n["node-name"], n.get("dirty-bitmaps")]))
            .collect(),
        "query-block" => list
            .iter()
            .map(|b| {
                json!([
                    b["qdev"],
                    b["inserted"]["node-name"],
                    b["inserted"].get("dirty-bitmaps")
                ])
            })
            .collect(),
        _ => answer.clone(),
    }
}

/// `transcript` with a step ("wait", {"event": NAME}) that waits for that event (a
/// mirror's READY), and the queries' answers cut to `nodes_and_bitmaps`.
fn copy_transcript(c: &mut QmpClient, dir: &Path, steps: &[(&str, Value)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut drained = false;
    for (command, args) in steps {
        if *command == "wait" {
            let name = args["event"].as_str().unwrap();
            // It may have come with the last command's events already.
            let noted = format!("  \"{name}\" ");
            let seen = out.iter().any(|l: &String| l.starts_with(&noted))
                || (0..100).any(|_| {
                    c.event_within("__none__", Duration::from_millis(100));
                    c.events.iter().any(|e| e["event"] == name)
                });
            assert!(seen, "no {name}: {:?}", c.events);
        } else {
            let reply = c.execute(command, args.clone());
            let answer = match reply.get("error") {
                Some(e) => format!("error {} {}", e["class"], e["desc"]),
                None => nodes_and_bitmaps(command, &reply["return"]).to_string(),
            };
            while c
                .event_within("__none__", Duration::from_millis(400))
                .is_some()
            {}
            out.push(format!("{command} {args} -> {answer}"));
        }
        for e in c.events.drain(..) {
            // QEMU's transaction drains every node: a ready job goes to standby and back
            // (not modelled: a difference of its own, libvirt 9.0 does not look).
            if e["event"] == "JOB_STATUS_CHANGE" && e["data"]["status"] == "standby" {
                drained = true;
                continue;
            }
            if std::mem::take(&mut drained) && e["data"]["status"] == "ready" {
                continue;
            }
            out.push(format!("  {} {}", e["event"], e["data"]));
        }
    }
    out.iter()
        .map(|l| automatic_names(&l.replace(&p(dir), "DIR")))
        .collect()
}

/// `line` with the automatic node names ("#block" and digits, QEMU's differ from ours)
/// as "#block".
fn automatic_names(line: &str) -> String {
    let mut parts = line.split("#block");
    let mut out = parts.next().unwrap_or_default().to_string();
    for rest in parts {
        out.push_str("#block");
        out.push_str(rest.trim_start_matches(|c: char| c.is_ascii_digit()));
    }
    out
}

/// The end of libvirt's `virsh blockcopy --pivot`: bitmaps on a node no disk uses (add,
/// clear, remove, listed; gone with a node blockdev-del deletes), the temporary bitmap on
/// the copy's target kept on it when it becomes the disk's top, the source's bitmap kept
/// on the source, and the source's nodes left in the graph after the pivot until
/// blockdev-del, refused while in use.
fn copy_steps(dir: &Path) -> Vec<(&'static str, Value)> {
    let [storage2, format2] = libvirt_pair(dir, 2, "copy.qcow2");
    let loose = json!({"driver": "raw", "node-name": "loose",
                       "file": {"driver": "file", "filename": p(&dir.join("loose.raw"))}});
    let bitmap = |node: &str, name: &str| json!({"node": node, "name": name});
    let add = |node: &str, name: &str, extra: Value| {
        let mut a = bitmap(node, name);
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let nodes = || ("query-named-block-nodes", json!({"flat": true}));
    let del = |node: &str| ("blockdev-del", json!({"node-name": node}));
    vec![
        // A node no disk uses.
        ("blockdev-add", loose),
        ("block-dirty-bitmap-add", bitmap("loose", "b0")),
        ("block-dirty-bitmap-add", bitmap("loose", "b0")),
        (
            "block-dirty-bitmap-add",
            add(
                "loose",
                "b1",
                json!({"granularity": 4096, "disabled": true}),
            ),
        ),
        ("block-dirty-bitmap-add", bitmap("loose", "")),
        (
            "block-dirty-bitmap-add",
            add("loose", "b2", json!({"granularity": 1000})),
        ),
        nodes(),
        ("block-dirty-bitmap-clear", bitmap("loose", "b0")),
        ("block-dirty-bitmap-clear", bitmap("loose", "nope")),
        ("block-dirty-bitmap-remove", bitmap("loose", "b1")),
        ("block-dirty-bitmap-remove", bitmap("loose", "b1")),
        (
            "transaction",
            json!({"actions": [
                {"type": "block-dirty-bitmap-add", "data": bitmap("loose", "t0")},
                {"type": "block-dirty-bitmap-clear", "data": bitmap("loose", "b0")}]}),
        ),
        (
            "transaction",
            json!({"actions": [
                {"type": "block-dirty-bitmap-add", "data": bitmap("loose", "t1")},
                {"type": "block-dirty-bitmap-clear", "data": bitmap("loose", "nope")}]}),
        ),
        nodes(),
        // Its bitmaps go with it.
        del("loose"),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "loose",
                   "file": {"driver": "file", "filename": p(&dir.join("loose.raw"))}}),
        ),
        nodes(),
        del("loose"),
        // libvirt's copy: the target's nodes, a bitmap on the source (the disk's top).
        ("blockdev-add", storage2),
        ("blockdev-add", format2),
        ("block-dirty-bitmap-add", bitmap("libvirt-1-format", "src")),
        (
            "block-dirty-bitmap-add",
            bitmap("libvirt-2-format", "early"),
        ),
        (
            "block-dirty-bitmap-remove",
            bitmap("libvirt-2-format", "early"),
        ),
        (
            "blockdev-mirror",
            json!({"job-id": "copy-vda-libvirt-1-format", "device": "libvirt-1-format",
                   "target": "libvirt-2-format", "sync": "full",
                   "auto-finalize": true, "auto-dismiss": false}),
        ),
        ("wait", json!({"event": "BLOCK_JOB_READY"})),
        // The pivot as libvirt 9.0 makes it.
        (
            "transaction",
            json!({"actions": [{"type": "block-dirty-bitmap-add",
                                "data": {"node": "libvirt-2-format",
                                         "name": "libvirt-tmp-activewrite",
                                         "persistent": false, "disabled": false}}]}),
        ),
        // (No query while the job runs: QEMU lists its implicit mirror_top filter node.)
        ("job-complete", json!({"id": "copy-vda-libvirt-1-format"})),
        ("query-block", json!({})),
        nodes(),
        ("job-dismiss", json!({"id": "copy-vda-libvirt-1-format"})),
        (
            "transaction",
            json!({"actions": [{"type": "block-dirty-bitmap-remove",
                                "data": bitmap("libvirt-2-format", "libvirt-tmp-activewrite")}]}),
        ),
        (
            "block-dirty-bitmap-clear",
            bitmap("libvirt-1-format", "src"),
        ),
        ("query-block", json!({})),
        nodes(),
        // The source's nodes: deleted by blockdev-del, in libvirt's order; refused while
        // a node uses them; the disk's new top refused.
        del("libvirt-1-storage"),
        del("libvirt-2-format"),
        del("libvirt-2-storage"),
        del("libvirt-1-format"),
        del("libvirt-1-format"),
        del("libvirt-1-storage"),
        del("libvirt-1-storage"),
        ("block-dirty-bitmap-add", bitmap("libvirt-1-format", "src")),
        ("query-block", json!({})),
        nodes(),
    ]
}

/// `steps` on libvirt's disk (copy_command_line) in a directory of `images`, on QEMU 7.2
/// and on the gateway, each ended before the next starts: (QEMU's transcript, its
/// directory), then ours.
fn on_both(
    tag: &str,
    images: fn(&Path),
    steps: fn(&Path) -> Vec<(&'static str, Value)>,
) -> ((Vec<String>, TempDir), (Vec<String>, TempDir)) {
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let qdir = TempDir::new(&format!("{tag}-qemu"));
    images(qdir.path());
    let line = copy_command_line(qdir.path(), "-");
    let qemu = Qemu::try_start(&line.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("QEMU did not start: {e}"));
    let mut q = qemu.client();
    let theirs = copy_transcript(&mut q, qdir.path(), &steps(qdir.path()));
    drop(q);
    drop(qemu);

    let dir = TempDir::new(&format!("{tag}-ours"));
    images(dir.path());
    let mut args = vec!["-S".to_string()];
    args.extend(copy_command_line(dir.path(), "--"));
    let gw = Gateway::start_with(
        1,
        "scenario=idle",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut c = gw.client();
    let ours = copy_transcript(&mut c, dir.path(), &steps(dir.path()));
    drop(c);
    drop(gw);
    ((theirs, qdir), (ours, dir))
}

#[test]
fn a_copys_pivot_keeps_nodes_and_bitmaps_as_qemu() {
    let ((theirs, _qdir), (ours, _dir)) = on_both("pivot", copy_images, copy_steps);
    assert_eq!(
        ours,
        theirs,
        "\nours:\n{}\nQEMU's:\n{}",
        ours.join("\n"),
        theirs.join("\n")
    );
}

/// The images of `persistent_steps`: libvirt's disk and copy target, a qcow2 image for a
/// node deleted with persistent bitmaps on it, one opened read-only, a qcow2 v2 image
/// and a raw file.
fn persistent_images(dir: &Path) {
    copy_images(dir);
    for name in ["keep.qcow2", "ro.qcow2", "late.qcow2"] {
        qemu_img_ok(&["create", "-q", "-f", "qcow2", &p(&dir.join(name)), "16M"]);
    }
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        &p(&dir.join("v2.qcow2")),
        "16M",
    ]);
}

/// Persistent bitmaps on nodes no disk uses, as libvirt 9.0's blockcopy --pivot of a
/// disk with a checkpoint adds them on the copy's target: refused where QEMU refuses
/// (qcow2 v2, raw, a name too long), taken on a read-only node (QEMU loses them at the
/// close), stored in the image of a node blockdev-del deletes, and the target's persistent
/// in the disk once the pivot made it its top (stored at the VM's end).
fn persistent_steps(dir: &Path) -> Vec<(&'static str, Value)> {
    let [storage2, format2] = libvirt_pair(dir, 2, "copy.qcow2");
    let qcow2 = |node: &str, file: &str, read_only: bool| {
        json!({"driver": "qcow2", "node-name": node, "read-only": read_only,
               "file": {"driver": "file", "filename": p(&dir.join(file)),
                        "read-only": read_only}})
    };
    let add = |node: &str, name: &str, extra: Value| {
        let mut a = json!({"node": node, "name": name, "persistent": true});
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        ("block-dirty-bitmap-add", a)
    };
    let nodes = || ("query-named-block-nodes", json!({"flat": true}));
    let del = |node: &str| ("blockdev-del", json!({"node-name": node}));
    let long = "x".repeat(1024);
    let merge = |node: &str, target: &str, bitmaps: Value| {
        (
            "block-dirty-bitmap-merge",
            json!({"node": node, "target": target, "bitmaps": bitmaps}),
        )
    };
    vec![
        ("blockdev-add", qcow2("v2", "v2.qcow2", false)),
        add("v2", "p", json!({})),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "loose",
                   "file": {"driver": "file", "filename": p(&dir.join("loose.raw"))}}),
        ),
        add("loose", "p", json!({})),
        add("loose", "r1", json!({"persistent": false})),
        ("blockdev-add", qcow2("ro", "ro.qcow2", true)),
        add("ro", "p", json!({})),
        ("blockdev-add", qcow2("keep", "keep.qcow2", false)),
        add("keep", &long, json!({})),
        add("keep", "k1", json!({})),
        add("keep", "k1", json!({})),
        add(
            "keep",
            "k2",
            json!({"granularity": 131072, "disabled": true}),
        ),
        add("keep", "k3", json!({"persistent": false})),
        // block-dirty-bitmap-merge, as libvirt merges a checkpoint's bitmaps.
        merge("keep", "k1", json!(["k3", {"node": "keep", "name": "k2"}])),
        merge("keep", "k1", json!([{"node": "loose", "name": "r1"}])),
        merge("keep", "k1", json!(["k3", "nope"])),
        merge("keep", "nope", json!(["k3"])),
        merge("keep", "k1", json!([{"node": "nowhere", "name": "k3"}])),
        nodes(),
        // Stored in keep.qcow2 as it closes.
        del("keep"),
        // libvirt's checkpoint on the disk, then its copy with the checkpoint's bitmap
        // on the target (by transaction, as libvirt adds it before job-complete).
        add("libvirt-1-format", "cp1", json!({})),
        ("blockdev-add", storage2),
        ("blockdev-add", format2),
        (
            "blockdev-mirror",
            json!({"job-id": "copy-vda-libvirt-1-format", "device": "libvirt-1-format",
                   "target": "libvirt-2-format", "sync": "full",
                   "auto-finalize": true, "auto-dismiss": false}),
        ),
        ("wait", json!({"event": "BLOCK_JOB_READY"})),
        (
            "transaction",
            json!({"actions": [
                {"type": "block-dirty-bitmap-add",
                 "data": {"node": "libvirt-2-format", "name": "cp1", "persistent": true,
                          "disabled": false, "granularity": 65536}},
                {"type": "block-dirty-bitmap-merge",
                 "data": {"node": "libvirt-2-format", "target": "cp1",
                          "bitmaps": [{"node": "libvirt-1-format", "name": "cp1"}]}},
                {"type": "block-dirty-bitmap-add",
                 "data": {"node": "libvirt-2-format", "name": "cp0", "persistent": true,
                          "disabled": true, "granularity": 131072}},
                {"type": "block-dirty-bitmap-add",
                 "data": {"node": "libvirt-2-format", "name": "libvirt-tmp-activewrite",
                          "persistent": false, "disabled": false}}]}),
        ),
        ("job-complete", json!({"id": "copy-vda-libvirt-1-format"})),
        ("query-block", json!({})),
        ("job-dismiss", json!({"id": "copy-vda-libvirt-1-format"})),
        (
            "transaction",
            json!({"actions": [{"type": "block-dirty-bitmap-remove",
                                "data": {"node": "libvirt-2-format",
                                         "name": "libvirt-tmp-activewrite"}}]}),
        ),
        ("query-block", json!({})),
        nodes(),
        // The source, with the checkpoint's bitmap, deleted: stored in disk.qcow2.
        del("libvirt-1-format"),
        del("libvirt-1-storage"),
        nodes(),
        // Loose at the VM's end: stored as it ends.
        ("blockdev-add", qcow2("late", "late.qcow2", false)),
        add("late", "l1", json!({"granularity": 4096})),
    ]
}

/// The persistent bitmaps each image of `dir` stores, as qemu-img info shows them (by
/// name: QEMU stores a node's newest first, our daemons in the order they were added).
fn stored_bitmaps(dir: &Path) -> Vec<String> {
    ["disk", "copy", "keep", "ro", "v2", "late"]
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.qcow2"));
            let mut bitmaps = (image_bitmaps(&path).as_array())
                .cloned()
                .unwrap_or_default();
            bitmaps.sort_by_key(|b| b["name"].as_str().unwrap_or_default().to_string());
            format!("{name}: {}", Value::Array(bitmaps))
        })
        .collect()
}

#[test]
fn persistent_bitmaps_on_a_copys_target_follow_it_as_qemu() {
    // Each emulator's end stores the disk's bitmaps before its images are read.
    let ((theirs, qdir), (ours, dir)) = on_both("persistent", persistent_images, persistent_steps);
    let their_images = stored_bitmaps(qdir.path());
    let our_images = stored_bitmaps(dir.path());
    assert_eq!(
        ours,
        theirs,
        "\nours:\n{}\nQEMU's:\n{}",
        ours.join("\n"),
        theirs.join("\n")
    );
    assert_eq!(
        our_images,
        their_images,
        "\nours:\n{}\nQEMU's:\n{}",
        our_images.join("\n"),
        their_images.join("\n")
    );
    // Something was stored at all: the test sees the stores it compares.
    assert!(their_images[2].contains("k2"), "{their_images:?}");
    assert!(their_images[1].contains("cp1"), "{their_images:?}");
    assert!(their_images[5].contains("l1"), "{their_images:?}");
}
