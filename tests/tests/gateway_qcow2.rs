//! qcow2 disks and backing chains through the gateway, with QEMU 7.2 and qemu-img as
//! the oracles. The chain is qemu-img's: a qcow2 overlay over a qcow2 image over a raw
//! one, backing files named relative to their overlays, an internal snapshot in the
//! top. The gateway opens the chain from the headers as QEMU does; its queries answer
//! as QEMU's do for the same images (automatic node names compared by rule); its locks
//! keep qemu-img, qemu-io and QEMU off the chain as QEMU's own locks do, and theirs keep
//! it off; the test guest's write-verify rounds on the top leave an image `qemu-img
//! check` finds clean and `qemu-img compare` finds right, after reading the data
//! qemu-img wrote into the backing file; bad images and arguments get QEMU's words.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use flotilla_tests::blk::{first_mismatch, pattern_image, pattern_sector, qemu_img, qemu_img_ok};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{bin, require_tool, run_to_end, test_guest, TempDir};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);
const SEED: u64 = 0x0c02_0001;
/// The chain's virtual size: 4 MiB.
const SECTORS: u64 = 8192;
const WRITE: &str = "Failed to get \"write\" lock";
const SHARED_WRITE: &str = "Failed to get shared \"write\" lock";

/// qemu-img's chain in `dir`: base.raw (zeros), mid.qcow2 over it holding P(SEED)
/// (written by `qemu-img convert`), top.qcow2 over mid.qcow2 with snapshot "snap1".
/// Returns the top's path.
fn chain(dir: &Path) -> PathBuf {
    let p = |n: &str| dir.join(n).display().to_string();
    pattern_image(&dir.join("pattern.raw"), SEED, SECTORS);
    qemu_img_ok(&["create", "-f", "raw", &p("base.raw"), "4M"]);
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        &p("mid.qcow2"),
    ]);
    qemu_img_ok(&[
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &p("pattern.raw"),
        &p("mid.qcow2"),
    ]);
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        &p("top.qcow2"),
    ]);
    qemu_img_ok(&["snapshot", "-c", "snap1", &p("top.qcow2")]);
    dir.join("top.qcow2")
}

fn drive(top: &Path, options: &str) -> String {
    format!("file={},format=qcow2,id=d0{options}", top.display())
}

/// Flotilla serving `drive`, paused, up once it answers.
fn flotilla(drive: &str) -> Gateway {
    let gw = Gateway::start_with(1, "", &["-S", "--drive", drive]);
    gw.client().ok("query-block", json!({}));
    gw
}

/// QEMU 7.2 with `drive` (QEMU's -drive syntax) on a virtio-blk device, paused.
fn qemu(drive: &str) -> Result<Qemu, String> {
    Qemu::try_start(&[
        "-drive",
        &format!("{drive},if=none"),
        "-device",
        "virtio-blk-device,drive=d0",
    ])
}

/// The gateway's error output when it refuses `drive`.
fn flotilla_refusal(drive: &str) -> String {
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--serial", "none", "--drive", drive]);
    let (status, _, err) = run_to_end(cmd, TIMEOUT);
    assert!(!status.success(), "{drive} was accepted");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The three block queries.
fn queries(c: &mut QmpClient) -> [Value; 3] {
    [
        c.ok("query-block", json!({})),
        c.ok("query-named-block-nodes", json!({})),
        c.ok("query-blockstats", json!({})),
    ]
}

/// Rules for what legitimately differs: automatic node names (QEMU's counter) become
/// "#auto"; the counters' values (no guest ran, but which members exist must agree)
/// become null; query-block's qdev (the device's QOM path differs: Flotilla's disk is
/// a PCI function, QEMU's here a virtio-mmio device).
fn normalized(v: &Value) -> Value {
    match v {
        Value::String(s) if s.starts_with("#block") => json!("#auto"),
        Value::Object(m) => m
            .iter()
            .filter(|(k, _)| k.as_str() != "qdev")
            .map(|(k, v)| {
                let v = match k.as_str() {
                    "stats" => match v {
                        Value::Object(s) => s.keys().map(|k| (k.clone(), Value::Null)).collect(),
                        other => other.clone(),
                    },
                    _ => normalized(v),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(a) => a.iter().map(normalized).collect(),
        other => other.clone(),
    }
}

#[test]
fn queries_answer_as_qemu_does_for_the_same_chain() {
    let dir = TempDir::new("qcow2-queries");
    let top = chain(dir.path());
    let d = drive(&top, "");
    let ours = {
        let gw = flotilla(&d);
        queries(&mut gw.client())
    };
    let theirs = {
        let q = qemu(&format!("file={},format=qcow2,id=d0", top.display())).expect("QEMU starts");
        queries(&mut q.client())
    };
    // What the test relies on is there at all (a mismatch in these is easier to read).
    let inserted = &ours[0][0]["inserted"];
    assert_eq!(inserted["backing_file_depth"], 2, "{inserted:#}");
    assert_eq!(
        inserted["image"]["backing-image"]["backing-image"]["format"],
        "raw"
    );
    assert_eq!(inserted["image"]["snapshots"][0]["name"], "snap1");
    assert_eq!(ours[1].as_array().map(Vec::len), Some(6), "{:#}", ours[1]);
    for (i, name) in ["query-block", "query-named-block-nodes", "query-blockstats"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            normalized(&ours[i]),
            normalized(&theirs[i]),
            "{name}: Flotilla's answer (left) differs from QEMU 7.2's (right)"
        );
    }
}

/// qemu-io holding `image` open for writing until dropped (a pipe kept open).
struct Writer {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Writer {
    fn open(image: &Path, format: &str) -> Writer {
        let mut child = Command::new(require_tool("qemu-io", "qemu-utils"))
            .args(["-f", format])
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running qemu-io");
        let mut stdin = child.stdin.take();
        // It holds the image once it has written through it.
        if let Some(s) = stdin.as_mut() {
            s.write_all(b"write 0 512\n").expect("talking to qemu-io");
        }
        let out = child.stdout.take().expect("qemu-io's stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(out);
        loop {
            line.clear();
            let n = reader.read_line(&mut line).expect("reading qemu-io");
            assert!(n > 0, "qemu-io ended before it wrote");
            if line.contains("wrote 512/512") {
                break;
            }
        }
        Writer { child, stdin }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// qemu-io's answer to writing one sector of `image`: Ok, or its error.
fn qemu_io_write(image: &Path, format: &str) -> Result<(), String> {
    let out = Command::new(require_tool("qemu-io", "qemu-utils"))
        .args(["-f", format, "-c", "write 0 512"])
        .arg(image)
        .output()
        .expect("running qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("wrote 512/512") {
        Ok(())
    } else {
        Err(text)
    }
}

/// What qemu-img info does beside the holder of the chain: ok, or its first line.
fn qemu_img_info(image: &Path) -> Result<(), String> {
    let (ok, _, err) = qemu_img(&["info", image.to_str().expect("a UTF-8 path")]);
    if ok {
        Ok(())
    } else {
        Err(err.lines().next().unwrap_or_default().to_string())
    }
}

/// What the qemu tools may do beside a holder of the chain, as (info on top, write to
/// top, write to mid), with paths replaced by their file names.
fn beside(dir: &Path) -> [Result<(), String>; 3] {
    let top = dir.join("top.qcow2");
    let mid = dir.join("mid.qcow2");
    let strip =
        |r: Result<(), String>| r.map_err(|e| e.replace(&format!("{}/", dir.display()), ""));
    [
        strip(qemu_img_info(&top)),
        strip(qemu_io_write(&top, "qcow2")),
        strip(qemu_io_write(&mid, "qcow2")),
    ]
}

#[test]
fn locks_keep_the_qemu_tools_off_as_qemus_do() {
    let dir = TempDir::new("qcow2-locks");
    let top = chain(dir.path());
    for options in ["", ",file.locking=off"] {
        let with_qemu = {
            let _q = qemu(&format!(
                "file={},format=qcow2,id=d0{options}",
                top.display()
            ))
            .expect("QEMU starts");
            beside(dir.path())
        };
        let with_flotilla = {
            let _gw = flotilla(&drive(&top, options));
            beside(dir.path())
        };
        assert_eq!(
            with_flotilla, with_qemu,
            "{options}: the qemu tools beside Flotilla (left) and beside QEMU 7.2 (right)"
        );
        if options.is_empty() {
            let [_, top_write, mid_write] = &with_flotilla;
            for refused in [top_write, mid_write] {
                assert!(
                    refused.as_ref().is_err_and(|e| e.contains(WRITE)),
                    "{refused:?}"
                );
            }
        } else {
            assert!(
                with_flotilla[1].is_ok(),
                "locking=off: the top is not locked"
            );
        }
    }
}

#[test]
fn a_chain_someone_writes_is_refused_as_qemu_refuses_it() {
    let dir = TempDir::new("qcow2-held");
    let top = chain(dir.path());
    let mid = dir.path().join("mid.qcow2");
    for (held, format) in [(&top, "qcow2"), (&mid, "qcow2")] {
        let _w = Writer::open(held, format);
        let theirs = qemu(&format!("file={},format=qcow2,id=d0", top.display()))
            .err()
            .expect("QEMU took a chain qemu-io writes");
        let ours = flotilla_refusal(&drive(&top, ""));
        let lock = if held == &top { WRITE } else { SHARED_WRITE };
        let hint = format!("Is another process using the image [{}]?", held.display());
        for text in [&theirs, &ours] {
            assert!(text.contains(lock) && text.contains(&hint), "{text}");
        }
        let backing = "Could not open backing file: ";
        assert_eq!(
            ours.contains(backing),
            theirs.contains(backing),
            "Flotilla:\n{ours}\nQEMU:\n{theirs}"
        );
        // The top's locking=off does not reach the backing file (as on QEMU).
        if held == &top {
            flotilla(&drive(&top, ",file.locking=off"));
        } else {
            flotilla_refusal(&drive(&top, ",file.locking=off"));
        }
    }
}

#[test]
fn the_guest_reads_the_chain_and_writes_its_top_and_qemu_img_finds_it_right() {
    let dir = TempDir::new("qcow2-guest");
    let top = chain(dir.path());
    // blk-pattern: the disk must hold P(SEED) (qemu-img wrote it into mid.qcow2); the
    // guest writes P(SEED + 1) over it, then discards [8, 16) and zeroes [16, 24).
    let mut gw = Gateway::start_with(
        1,
        &format!("scenario=blk-pattern seed={SEED:#x}"),
        &["--drive", &drive(&top, "")],
    );
    let ok = gw
        .vm
        .expect_prefix("GUEST BLK PATTERN OK", Duration::from_secs(120));
    assert!(ok.contains(&format!("sectors={SECTORS}")), "{ok}");
    let status = gw.vm.wait(TIMEOUT);
    assert!(status.success(), "{status}:\n{}", gw.vm.transcript());
    let transcript = gw.vm.transcript();
    assert!(
        !transcript.contains("GUEST ERROR") && !transcript.contains("FAILED"),
        "{transcript}"
    );
    drop(gw);
    let t = |p: &Path| p.display().to_string();
    let check = qemu_img_ok(&["check", &t(&top)]);
    assert!(check.contains("No errors were found"), "{check}");
    // What the guest sees, as qemu-img reads the chain.
    let seen = dir.path().join("seen.raw");
    qemu_img_ok(&["convert", "-f", "qcow2", "-O", "raw", &t(&top), &t(&seen)]);
    let written = |s| pattern_sector(SEED + 1, s);
    assert_eq!(first_mismatch(&seen, 0..8, written), None);
    assert_eq!(first_mismatch(&seen, 24..SECTORS, written), None);
    assert_eq!(first_mismatch(&seen, 16..24, |_| [0; 512]), None);
    // Discard is ignored without discard=unmap: [8, 16) holds what was written.
    assert_eq!(first_mismatch(&seen, 8..16, written), None);
    // The backing files are as qemu-img left them.
    let mid = dir.path().join("mid.qcow2");
    let pattern = dir.path().join("pattern.raw");
    let same = qemu_img_ok(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        &t(&mid),
        &t(&pattern),
    ]);
    assert!(same.contains("Images are identical"), "{same}");
}

#[test]
fn bad_chains_and_arguments_get_qemus_words() {
    let dir = TempDir::new("qcow2-bad");
    let p = |n: &str| dir.path().join(n).display().to_string();
    qemu_img_ok(&["create", "-f", "raw", &p("plain.raw"), "1M"]);
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        &p("nosuch.qcow2"),
        "-F",
        "qcow2",
        &p("nob.qcow2"),
        "1M",
    ]);
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-u",
        "-b",
        &p("plain.raw"),
        "-F",
        "qcow2",
        &p("wrongfmt.qcow2"),
        "1M",
    ]);
    qemu_img_ok(&["create", "-f", "qcow2", &p("badver.qcow2"), "1M"]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(p("badver.qcow2"))
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &7u32.to_be_bytes(), 4))
        .expect("damaging the header");
    qemu_img_ok(&["create", "-f", "qcow2", &p("good.qcow2"), "1M"]);
    qemu_img_ok(&["create", "-f", "raw", &p("qemu-own.raw"), "1M"]);
    let gw = Gateway::start(&["-S"]);
    let q = qemu(&format!("file={},format=raw,id=d0", p("qemu-own.raw"))).expect("QEMU starts");
    let (mut ours, mut theirs) = (gw.client(), q.client());
    let file = |n: &str| json!({"driver": "file", "filename": p(n)});
    let mut cases = vec![
        json!({"driver": "qcow2", "node-name": "a1", "file": file("nob.qcow2")}),
        json!({"driver": "qcow2", "node-name": "a2", "file": file("wrongfmt.qcow2")}),
        json!({"driver": "qcow2", "node-name": "a3", "file": file("badver.qcow2")}),
        json!({"driver": "qcow2", "node-name": "a4", "read-only": true, "file": file("plain.raw")}),
        json!({"driver": "qcow2", "node-name": "a5", "bogus": 1, "file": file("good.qcow2")}),
        json!({"driver": "qcow2", "node-name": "a6", "backing": "nosuch", "file": file("good.qcow2")}),
        json!({"driver": "qcow2", "node-name": "a7", "backing": 5, "file": file("good.qcow2")}),
        json!({"driver": "qcow2", "node-name": "a8", "file": file("good.qcow2"),
               "cache-size": 1000, "l2-cache-size": 2000}),
        json!({"driver": "qcow2", "node-name": "a9", "file": file("good.qcow2"),
               "refcount-cache-size": 1_099_511_627_776_000u64}),
        json!({"driver": "qcow2", "node-name": "a10", "file": file("good.qcow2"),
               "l2-cache-size": -1}),
        json!({"driver": "qcow2", "node-name": "a11"}),
    ];
    for args in cases.drain(..) {
        let (class, text) = ours.err("blockdev-add", args.clone());
        let (qclass, qtext) = theirs.err("blockdev-add", args.clone());
        assert_eq!((class, text), (qclass, qtext), "blockdev-add {args}");
    }
    // A node used as a backing file stays while it is one.
    for args in [
        json!({"driver": "raw", "node-name": "b1", "file": file("plain.raw"), "read-only": true}),
        json!({"driver": "qcow2", "node-name": "m1", "backing": "b1", "file": file("good.qcow2")}),
    ] {
        ours.ok("blockdev-add", args.clone());
    }
    let (_, text) = ours.err("blockdev-del", json!({"node-name": "b1"}));
    assert_eq!(
        text,
        "Node 'b1' is busy: node is used as backing hd of 'm1'"
    );
    ours.ok("blockdev-del", json!({"node-name": "m1"}));
    ours.ok("blockdev-del", json!({"node-name": "b1"}));
}
