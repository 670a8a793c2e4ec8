//! block-daemon on its own with qcow2 images it opens itself (the one place the daemon
//! opens paths): the test guest on vmm-core reads a backing file's pattern through a
//! qcow2 overlay, writes, discards and zeroes, and the daemon ended by a signal leaves
//! the image clean (qemu-img check and convert); damaged images and broken backing
//! chains fail the start with QEMU's words for the same chain (qemu-io and qemu-img are
//! the oracles, run on the same files from the same directory), and the daemon ends
//! without a panic.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::blk::{
    block_daemon, disk_backed_dir, first_mismatch, pattern_image, pattern_sector, qemu_img,
    qemu_img_ok, vmm_with_disk,
};
use flotilla_tests::{bin, require_tool, run_to_end, TempDir};

const TIMEOUT: Duration = Duration::from_secs(20);

/// What QEMU says when it cannot open `image` (relative to `dir`) with its backing
/// chain: qemu-io's error, without "qemu-io: can't open device IMAGE: ".
fn qemu_refusal(dir: &Path, image: &str) -> String {
    let out = Command::new(require_tool("qemu-io", "qemu-utils"))
        .current_dir(dir)
        .args(["-f", "qcow2", "-c", "quit", image])
        .output()
        .expect("running qemu-io");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let first = err.lines().next().unwrap_or_default();
    let prefix = format!("qemu-io: can't open device {image}: ");
    assert!(first.starts_with(&prefix), "qemu-io opened {image}: {err}");
    first[prefix.len()..].to_string()
}

/// The daemon's start on `image` (relative to `dir`) as qcow2: it must fail, saying
/// `expected`.
fn daemon_refuses(dir: &Path, image: &str, expected: &str) {
    let mut cmd = Command::new(bin("block-daemon"));
    cmd.current_dir(dir)
        .args(["--socket", "s.sock", "--image", image, "--format", "qcow2"]);
    let (status, out, err) = run_to_end(cmd, TIMEOUT);
    assert!(
        !status.success(),
        "the daemon started on {image}:\n{out}{err}"
    );
    assert!(err.contains(expected), "no '{expected}' in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.join("s.sock").exists(), "socket left behind");
}

fn create(dir: &Path, args: &[&str]) {
    let dir = dir.to_str().unwrap();
    let mut all = vec!["create", "-q", "-f", "qcow2"];
    all.extend_from_slice(args);
    let out = Command::new(require_tool("qemu-img", "qemu-utils"))
        .current_dir(dir)
        .args(&all)
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img {all:?}: {out:?}");
}

#[test]
fn a_missing_backing_file() {
    let dir = TempDir::new("qcow2-standalone-missing");
    let d = dir.path();
    std::fs::File::create(d.join("base.raw"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    create(d, &["-b", "base.raw", "-F", "raw", "top.qcow2"]);
    std::fs::remove_file(d.join("base.raw")).unwrap();
    let expected = qemu_refusal(d, "top.qcow2");
    daemon_refuses(d, "top.qcow2", &expected);
}

#[test]
fn a_damaged_image_and_a_damaged_backing_file() {
    let dir = TempDir::new("qcow2-standalone-damaged");
    let d = dir.path();
    create(d, &["base.qcow2", "1M"]);
    create(d, &["-b", "base.qcow2", "-F", "qcow2", "top.qcow2"]);
    // Version 4, in the backing file, then in the top too.
    for image in ["base.qcow2", "top.qcow2"] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join(image))
            .unwrap();
        f.write_all_at(&[0, 0, 0, 4], 4).unwrap();
        drop(f);
        let expected = qemu_refusal(d, "top.qcow2");
        daemon_refuses(d, "top.qcow2", &expected);
    }
}

/// A chain that comes back to itself: qemu-img's words for it (QEMU itself trips over
/// its own image lock there, so only qemu-img info --backing-chain names the loop).
#[test]
fn a_backing_chain_that_loops() {
    let dir = TempDir::new("qcow2-standalone-loop");
    let d = dir.path();
    create(d, &["a.qcow2", "1M"]);
    create(d, &["-b", "a.qcow2", "-F", "qcow2", "b.qcow2"]);
    let (a, b) = (d.join("a.qcow2"), d.join("b.qcow2"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    qemu_img_ok(&[
        "rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a,
    ]);
    let (ok, out, err) = qemu_img(&["info", "--backing-chain", b]);
    assert!(!ok, "{out}");
    let said = err
        .lines()
        .find_map(|l| l.strip_prefix("qemu-img: "))
        .unwrap_or_else(|| panic!("{err}"));
    // qemu-img names the file as the chain names it, relative to b's directory.
    let expected = said.replace(&format!("{}/", d.display()), "");
    daemon_refuses(d, "b.qcow2", &expected);
}

/// The test guest's blk-pattern (check P(seed), write P(seed + 1), discard sectors 8..16,
/// zero 16..24) on a qcow2 overlay (lazy refcounts) over a raw backing file holding
/// P(seed); then the daemon, ended by SIGTERM, leaves an image qemu-img finds clean: not
/// dirty, no leak.
/// Whether each of `paths` is open in process `pid` with O_DIRECT (from /proc: the
/// flags of the first descriptor open on it).
fn opened_direct(pid: i32, paths: &[&Path]) -> Vec<bool> {
    let fds: Vec<(std::path::PathBuf, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's fds")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            let fd = e.file_name().to_string_lossy().into_owned();
            Some((target, fd))
        })
        .collect();
    paths
        .iter()
        .map(|p| {
            let (_, fd) = fds
                .iter()
                .find(|(t, _)| t == p)
                .unwrap_or_else(|| panic!("{} is not open in {pid}", p.display()));
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .expect("flags in fdinfo");
            flags & libc::O_DIRECT as u32 != 0
        })
        .collect()
}

fn guest_on_a_qcow2_overlay(tag: &str, daemon_args: &[&str]) {
    const SECTORS: u64 = 16 << 11;
    const SEED: u64 = 0x0c02_0002;
    // On a real filesystem: O_DIRECT does not work on tmpfs.
    let dir = disk_backed_dir(tag);
    let (base, top, sock) = (
        dir.path().join("base.raw"),
        dir.path().join("top.qcow2"),
        dir.path().join("s"),
    );
    pattern_image(&base, SEED, SECTORS);
    let t = top.to_str().unwrap();
    // Lazy refcounts: the image is dirty while it is written, clean only once closed.
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        "-b",
        "base.raw",
        "-F",
        "raw",
        t,
    ]);
    let mut args = vec!["--format", "qcow2", "--queues", "2"];
    args.extend_from_slice(daemon_args);
    let mut daemon = block_daemon(&sock, &top, &args);
    let mut vm = vmm_with_disk(&sock, 2, 2, &format!("scenario=blk-pattern seed={SEED:#x}"));
    vm.expect_prefix("GUEST BLK PATTERN OK", TIMEOUT);
    let status = vm.wait(TIMEOUT);
    assert!(status.success(), "vmm-core: {status}\n{}", vm.transcript());
    assert!(
        !vm.transcript().contains("GUEST ERROR"),
        "{}",
        vm.transcript()
    );
    // The overlay and its backing file bypass the page cache as the node says.
    let direct = daemon_args.contains(&"none");
    assert_eq!(
        opened_direct(daemon.pid(), &[&top, &base]),
        [direct, direct]
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = daemon.wait(TIMEOUT);
    assert!(status.success(), "{status}:\n{}", daemon.transcript());
    let (ok, out, err) = qemu_img(&["check", t]);
    assert!(ok, "qemu-img check:\n{out}{err}");
    assert!(out.contains("No errors were found on the image."), "{out}");
    let info = qemu_img_ok(&["info", "--output=json", t]);
    assert!(info.contains("\"dirty-flag\": false"), "{info}");
    let raw = dir.path().join("got.raw");
    qemu_img_ok(&["convert", "-O", "raw", t, raw.to_str().unwrap()]);
    let written = |s| pattern_sector(SEED + 1, s);
    assert_eq!(first_mismatch(&raw, 0..8, written), None);
    assert_eq!(first_mismatch(&raw, 24..SECTORS, written), None);
    assert_eq!(first_mismatch(&raw, 16..24, |_| [0; 512]), None);
    // The backing file was only read.
    assert_eq!(
        first_mismatch(&base, 0..SECTORS, |s| pattern_sector(SEED, s)),
        None
    );
}

#[test]
fn the_test_guest_on_a_qcow2_overlay_and_a_clean_end() {
    guest_on_a_qcow2_overlay("qcow2-guest-writeback", &[]);
}

/// The same with O_DIRECT (the overlay and its backing file), by either engine.
#[test]
fn the_test_guest_on_a_qcow2_overlay_with_o_direct() {
    guest_on_a_qcow2_overlay("qcow2-guest-direct", &["--cache", "none"]);
    guest_on_a_qcow2_overlay(
        "qcow2-guest-direct-sync",
        &["--cache", "none", "--engine", "sync"],
    );
}
