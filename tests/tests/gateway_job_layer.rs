//! QEMU's generic job layer as libvirt 9.0 drives it, against a live QEMU 7.2: the same
//! exchanges go to both and their transcripts (answers, errors, and the events each
//! command brought, in order) must be equal. blockdev-create's jobs (the file and qcow2
//! drivers: what libvirt creates a snapshot's overlay and a copy's target with, and the
//! errors a job ends with), job-dismiss, job-finalize, job-cancel, job-complete,
//! job-pause and job-resume, and a block-stream started with auto-finalize and
//! auto-dismiss false: pending (BLOCK_JOB_PENDING) until job-finalize, concluded until
//! job-dismiss, each refusing the other verbs in QEMU's words; the transaction action
//! block-dirty-bitmap-remove libvirt ends a pivot with.

use std::path::Path;
use std::time::Duration;

use flotilla_tests::blk::qemu_img_ok;
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
