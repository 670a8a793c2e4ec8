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

use flotilla_tests::blk::{
    empty_image, first_mismatch, pattern_image, pattern_sector, qemu_img, qemu_img_ok,
};
use flotilla_tests::qemu::{qemu_whole_refusal, Qemu};
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{bin, require_tool, run_to_end, test_guest, TempDir};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);
const SEED: u64 = 0x0c02_0001;
/// The chain's virtual size: 4 MiB.
const SECTORS: u64 = 8192;
const WRITE: &str = "Failed to get \"write\" lock";
const SHARED_WRITE: &str = "Failed to get shared \"write\" lock";

/// qemu-img creates a qcow2 overlay `out` over `backing` in `format`; with a `size`,
/// unsafely (the backing file is not opened: it may be missing or not what it says).
fn overlay(out: &str, backing: &str, format: &str, size: Option<&str>) {
    let mut args = vec!["create", "-q", "-f", "qcow2", "-b", backing, "-F", format];
    if size.is_some() {
        args.push("-u");
    }
    args.push(out);
    args.extend(size);
    qemu_img_ok(&args);
}

/// qemu-img's chain in `dir`: base.raw (zeros), mid.qcow2 over it holding P(SEED)
/// (written by `qemu-img convert`), top.qcow2 over mid.qcow2 with snapshot "snap1".
/// Returns the top's path.
fn chain(dir: &Path) -> PathBuf {
    let p = |n: &str| dir.join(n).display().to_string();
    pattern_image(&dir.join("pattern.raw"), SEED, SECTORS);
    qemu_img_ok(&["create", "-f", "raw", &p("base.raw"), "4M"]);
    overlay(&p("mid.qcow2"), "base.raw", "raw", None);
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
    overlay(&p("top.qcow2"), "mid.qcow2", "qcow2", None);
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

/// Where `a` and `b` first differ (a path and both values), if they do.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).find_map(|k| {
            let (p, q) = (x.get(k), y.get(k));
            match (p, q) {
                (Some(p), Some(q)) => first_difference(p, q, &format!("{at}.{k}")),
                _ => Some(format!("{at}.{k}: {p:?} / {q:?}")),
            }
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}[{i}]"))),
        (Value::Array(x), Value::Array(y)) => {
            let nodes = |v: &[Value]| -> Vec<String> {
                v.iter()
                    .map(|n| format!("{} {} {}", n["node-name"], n["drv"], n["file"]))
                    .collect()
            };
            Some(format!(
                "{at}: {} / {} elements:\n{:#?}\n{:#?}",
                x.len(),
                y.len(),
                nodes(x),
                nodes(y)
            ))
        }
        _ if a == b => None,
        _ => Some(format!("{at}: {a} / {b}")),
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
        if let Some(d) = first_difference(&normalized(&ours[i]), &normalized(&theirs[i]), "") {
            panic!("{name}: Flotilla's answer / QEMU 7.2's: {d}");
        }
    }
}

#[test]
fn blockdev_add_graphs_answer_as_qemus() {
    let dir = TempDir::new("qcow2-graphs");
    let top = chain(dir.path());
    let p = |n: &str| dir.path().join(n).display().to_string();
    // Other header variants: compat 0.10; small clusters, 8-bit refcounts, lazy refcounts.
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        &p("v2.qcow2"),
        "1M",
    ]);
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096,refcount_bits=8,lazy_refcounts=on",
        &p("small.qcow2"),
        "3M",
    ]);
    let gw = Gateway::start(&["-S"]);
    // No drive: its nodes would be listed too.
    let q = Qemu::try_start(&[]).expect("QEMU starts");
    let (mut ours, mut theirs) = (gw.client(), q.client());
    let file = |path: &str| json!({"driver": "file", "filename": path});
    // Read-only: QEMU holds the images it opens, and may open one image twice so.
    let t = top.display().to_string();
    for args in [
        json!({"driver": "raw", "node-name": "b1", "read-only": true, "file": file(&p("base.raw"))}),
        json!({"driver": "qcow2", "node-name": "m1", "read-only": true, "backing": "b1",
               "file": file(&p("mid.qcow2"))}),
        json!({"driver": "qcow2", "node-name": "t1", "read-only": true, "backing": null,
               "file": file(&t)}),
        json!({"driver": "qcow2", "node-name": "t2", "read-only": true,
               "backing": {"driver": "qcow2", "file": file(&p("mid.qcow2"))}, "file": file(&t)}),
        json!({"driver": "qcow2", "node-name": "t3", "read-only": true, "file": file(&t)}),
        json!({"driver": "qcow2", "node-name": "v2", "read-only": true, "file": file(&p("v2.qcow2"))}),
        json!({"driver": "qcow2", "node-name": "small", "read-only": true,
               "file": file(&p("small.qcow2"))}),
    ] {
        ours.ok("blockdev-add", args.clone());
        theirs.ok("blockdev-add", args);
    }
    let compare = |ours: &mut QmpClient, theirs: &mut QmpClient, what: &str| {
        for (command, args) in [
            ("query-named-block-nodes", json!({})),
            ("query-named-block-nodes", json!({"flat": true})),
            ("query-blockstats", json!({"query-nodes": true})),
        ] {
            let (a, b) = (
                normalized(&ours.ok(command, args.clone())),
                normalized(&theirs.ok(command, args.clone())),
            );
            if let Some(d) = first_difference(&a, &b, "") {
                panic!("{what}: {command} {args}: Flotilla's answer / QEMU 7.2's: {d}");
            }
        }
    };
    compare(&mut ours, &mut theirs, "five nodes");
    let del = json!({"node-name": "b1"});
    assert_eq!(
        ours.err("blockdev-del", del.clone()),
        theirs.err("blockdev-del", del)
    );
    for name in ["t2", "m1"] {
        ours.ok("blockdev-del", json!({"node-name": name}));
        theirs.ok("blockdev-del", json!({"node-name": name}));
    }
    compare(&mut ours, &mut theirs, "t2 and m1 deleted");
}

#[test]
fn a_qcow2_disk_grows_and_qemu_img_sees_it() {
    let dir = TempDir::new("qcow2-resize");
    let top = chain(dir.path());
    let bytes = 8u64 << 20;
    {
        let gw = flotilla(&drive(&top, ""));
        let mut c = gw.client();
        c.ok("block_resize", json!({"device": "d0", "size": bytes}));
        let block = c.ok("query-block", json!({}));
        assert_eq!(
            block[0]["inserted"]["image"]["virtual-size"], bytes,
            "{block:#}"
        );
    }
    let t = top.display().to_string();
    let info: Value = serde_json::from_str(&qemu_img_ok(&["info", "--output=json", &t]))
        .expect("qemu-img's JSON");
    assert_eq!(info["virtual-size"], bytes, "{info:#}");
    let check = qemu_img_ok(&["check", &t]);
    assert!(check.contains("No errors were found"), "{check}");
}

/// Whether some process holds a lock on byte `byte` of `path` (QEMU's lock bytes: 100 +
/// a permission it uses, 200 + one it does not share).
fn byte_locked(path: &Path, byte: i64) -> bool {
    let file = std::fs::File::open(path).expect("opening the image");
    let mut lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: F_OFD_GETLK on our own fd fills the struct it is given.
    let r = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_OFD_GETLK,
            &mut lock,
        )
    };
    assert_eq!(r, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    lock.l_type != libc::F_UNLCK as libc::c_short
}

/// block_resize of the file node under a qcow2 node (which shares no resize) is refused
/// with QEMU's words, and leaves the file and the qcow2 node's locks as they were; under
/// a raw node (which shares it) the file is resized, as by QEMU.
#[test]
fn resizing_the_file_under_a_format_node_answers_as_qemu() {
    let dir = TempDir::new("qcow2-resize-file");
    let image = |side: &str, ext: &str| dir.path().join(format!("{side}.{ext}"));
    for side in ["ours", "theirs"] {
        let path = image(side, "qcow2").display().to_string();
        qemu_img_ok(&["create", "-q", "-f", "qcow2", &path, "1M"]);
        empty_image(&image(side, "raw"), 1 << 20);
    }
    let gw = Gateway::start(&["-S"]);
    let q = Qemu::try_start(&[]).expect("QEMU starts");
    let (mut ours, mut theirs) = (gw.client(), q.client());
    for (c, side) in [(&mut ours, "ours"), (&mut theirs, "theirs")] {
        let file = |node: &str, ext: &str| {
            json!({"driver": "file", "node-name": node,
                   "filename": image(side, ext).display().to_string()})
        };
        c.ok("blockdev-add", file("f", "qcow2"));
        c.ok(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": "q", "file": "f"}),
        );
        c.ok("blockdev-add", file("b", "raw"));
        c.ok(
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r", "file": "b"}),
        );
    }
    let length = |side: &str, ext: &str| std::fs::metadata(image(side, ext)).unwrap().len();
    let qcow2_length = length("ours", "qcow2");
    let resize = json!({"node-name": "f", "size": 4 << 20});
    assert_eq!(
        ours.err("block_resize", resize.clone()),
        theirs.err("block_resize", resize),
        "block_resize of the file under a qcow2 node"
    );
    assert_eq!(
        length("ours", "qcow2"),
        qcow2_length,
        "the file was resized"
    );
    let ours_qcow2 = image("ours", "qcow2");
    assert!(
        byte_locked(&ours_qcow2, 103) && byte_locked(&ours_qcow2, 203),
        "the qcow2 node no longer holds its resize locks"
    );
    let resize = json!({"node-name": "b", "size": 2 << 20});
    assert_eq!(
        ours.execute("block_resize", resize.clone()),
        theirs.execute("block_resize", resize),
        "block_resize of the file under a raw node"
    );
    assert_eq!(
        (length("ours", "raw"), length("theirs", "raw")),
        (2 << 20, 2 << 20)
    );
    // The resize let go of the lock it took: a raw node nothing uses holds none.
    assert!(!byte_locked(&image("ours", "raw"), 103));
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
fn blockdev_add_locks_as_qemu_does() {
    let dir = TempDir::new("qcow2-add-locks");
    let top = chain(dir.path()).display().to_string();
    let file = |locking: &str| json!({"driver": "file", "filename": top, "locking": locking});
    for args in [
        json!({"driver": "qcow2", "node-name": "t", "file": file("auto")}),
        json!({"driver": "qcow2", "node-name": "t", "read-only": true, "file": file("on")}),
        json!({"driver": "qcow2", "node-name": "t", "file": file("off")}),
        // A raw node nobody uses takes no locks.
        json!({"driver": "raw", "node-name": "t", "file": file("on")}),
    ] {
        let with_qemu = {
            let q = Qemu::try_start(&[]).expect("QEMU starts");
            q.client().ok("blockdev-add", args.clone());
            beside(dir.path())
        };
        let with_flotilla = {
            let gw = Gateway::start(&["-S"]);
            gw.client().ok("blockdev-add", args.clone());
            beside(dir.path())
        };
        assert_eq!(
            with_flotilla, with_qemu,
            "{args}: the qemu tools beside Flotilla (left) and beside QEMU 7.2 (right)"
        );
    }
}

#[test]
fn an_image_someone_writes_is_refused_as_qemu_refuses_it() {
    let dir = TempDir::new("qcow2-held");
    let top = chain(dir.path());
    let mid = dir.path().join("mid.qcow2");
    let base = dir.path().join("base.raw");
    for (held, format) in [(&top, "qcow2"), (&mid, "qcow2"), (&base, "raw")] {
        let _w = Writer::open(held, format);
        // A raw image held is the drive itself; a qcow2 one, a layer of the chain.
        let (image, on_top) = if format == "raw" {
            (held, true)
        } else {
            (&top, held == &top)
        };
        let d = format!("file={},format={format},id=d0", image.display());
        let theirs = qemu(&d).err().expect("QEMU took an image qemu-io writes");
        let ours = flotilla_refusal(&d);
        // QEMU's word: qemu-io shares writes of a raw image (so the refusal is ours to
        // share them) but its qcow2 driver refuses writes by others to its file.
        let lock = if theirs.contains(SHARED_WRITE) {
            SHARED_WRITE
        } else {
            WRITE
        };
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
        // locking=off lets Flotilla beside the writer; the top's does not reach a
        // backing file (as on QEMU).
        let unlocked = format!("{d},file.locking=off");
        if on_top {
            flotilla(&unlocked);
        } else {
            flotilla_refusal(&unlocked);
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
    overlay(&p("nob.qcow2"), &p("nosuch.qcow2"), "qcow2", Some("1M"));
    overlay(&p("wrongfmt.qcow2"), &p("plain.raw"), "qcow2", Some("1M"));
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

/// `--drive`'s dotted `backing` options, as QEMU 7.2's -drive takes them: another
/// backing file (with its node name), none, and the refusals in QEMU's words.
#[test]
fn drive_backing_options_as_qemus() {
    let dir = TempDir::new("qcow2-drive-backing");
    let top = chain(dir.path());
    let p = |n: &str| dir.path().join(n).display().to_string();
    qemu_img_ok(&["create", "-q", "-f", "qcow2", &p("alt.qcow2"), "4M"]);
    let facts = |c: &mut QmpClient| {
        let inserted = c.ok("query-block", json!({}))[0]["inserted"].clone();
        let backing = &inserted["image"]["backing-image"];
        let mut nodes: Vec<String> = c
            .ok("query-named-block-nodes", json!({}))
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["node-name"].as_str())
                    .filter(|n| !n.starts_with('#'))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        nodes.sort();
        json!({
            "backing_file": inserted["backing_file"],
            "depth": inserted["backing_file_depth"],
            "backing": [backing["filename"], backing["format"], backing["virtual-size"]],
            "named": nodes,
        })
    };
    for options in [
        format!(
            ",backing.driver=qcow2,backing.file.filename={},backing.node-name=bk",
            p("alt.qcow2")
        ),
        format!(
            ",backing.driver=raw,backing.file.driver=file,backing.file.filename={}",
            p("base.raw")
        ),
        ",backing=".to_string(),
    ] {
        let d = drive(&top, &options);
        let ours = facts(&mut flotilla(&d).client());
        let theirs = facts(&mut qemu(&d).expect("QEMU starts").client());
        assert_eq!(ours, theirs, "{options}");
    }
    let alt = p("alt.qcow2");
    for options in [
        ",backing=nosuch".to_string(),
        ",backing=x,backing.driver=qcow2".to_string(),
        format!(",backing.driver=qcow2,backing.file.filename={alt},backing.foo=1"),
        format!(",backing.driver=qcow2,backing.file.filename={alt},backing.read-only=bogus"),
        format!(",backing.driver=qcow2,backing.file.filename={alt},backing.file.bogus=1"),
        format!(",backing.driver=qcow2,backing.file.filename={alt},backing.l2-cache-size=1Q"),
        format!(
            ",backing.driver=raw,backing.file.filename={},backing.l2-cache-size=1M",
            p("base.raw")
        ),
        format!(
            ",backing.driver=qcow2,backing.file.filename={}",
            p("nosuch.qcow2")
        ),
        format!(
            ",backing.driver=qcow2,backing.file.filename={alt},backing.backing.driver=qcow2,\
             backing.backing.file.filename={}",
            p("nosuch.qcow2")
        ),
    ] {
        let d = drive(&top, &options);
        let theirs = qemu_whole_refusal(&[
            "-drive",
            &format!("{d},if=none"),
            "-device",
            "virtio-blk-device,drive=d0",
        ]);
        let ours = flotilla_refusal(&d);
        assert!(
            ours.contains(&theirs),
            "{options}: QEMU: {theirs}\nFlotilla: {ours}"
        );
    }
    let raw = format!(
        "file={},format=raw,id=d0,backing.driver=qcow2,backing.file.filename={alt}",
        p("base.raw")
    );
    let theirs = qemu_whole_refusal(&["-drive", &format!("{raw},if=none")]);
    assert_eq!(theirs, "Driver doesn't support backing files");
    assert!(flotilla_refusal(&raw).contains(&theirs));
}
