//! Block test helpers: the test guest's disk pattern (written and checked on the host),
//! images, and block-daemon / qemu-storage-daemon as standalone vhost-user backends.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{bin, require_tool, Vm};

pub const SECTOR: u64 = 512;

/// Sector `s` of the guest's pattern P(seed): 64 little-endian words, word i =
/// (seed ^ (s << 16) ^ i) * 0x9E3779B97F4A7C15 (tests/guest/README.md).
pub fn pattern_sector(seed: u64, s: u64) -> [u8; 512] {
    let mut out = [0u8; 512];
    for (i, w) in out.chunks_exact_mut(8).enumerate() {
        let v = (seed ^ (s << 16) ^ i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        w.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// A raw image of `sectors` sectors holding P(seed).
pub fn pattern_image(path: &Path, seed: u64, sectors: u64) {
    let f = File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = Vec::with_capacity(1 << 20);
    for s in 0..sectors {
        buf.extend_from_slice(&pattern_sector(seed, s));
        if buf.len() == 1 << 20 || s + 1 == sectors {
            f.write_all_at(&buf, (s + 1) * SECTOR - buf.len() as u64)
                .expect("writing the pattern");
            buf.clear();
        }
    }
    f.sync_all().expect("sync");
}

/// The first sector of `path` in `range` that does not hold what `expected` says.
pub fn first_mismatch(
    path: &Path,
    range: std::ops::Range<u64>,
    expected: impl Fn(u64) -> [u8; 512],
) -> Option<u64> {
    let f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut buf = [0u8; 512];
    range.into_iter().find(|&s| {
        f.read_exact_at(&mut buf, s * SECTOR)
            .expect("reading the image");
        buf != expected(s)
    })
}

/// The test guest's `blk-verify-loop` finished `rounds` rounds without an error, the VM
/// ended well, and `sectors` of `image` hold the last round's pattern, P(seed + rounds).
pub fn expect_verify_done(vm: &mut Vm, image: &Path, seed: u64, sectors: u64, rounds: u32) {
    let timeout = Duration::from_secs(60);
    let done = vm.expect_prefix("GUEST BLK VERIFY DONE", timeout);
    assert_eq!(
        done,
        format!("GUEST BLK VERIFY DONE rounds={rounds} errors=0"),
        "{}",
        vm.transcript()
    );
    let status = vm.wait(timeout);
    assert!(status.success(), "{status}:\n{}", vm.transcript());
    let transcript = vm.transcript();
    let errors: Vec<&str> = transcript
        .lines()
        .filter(|l| l.contains("GUEST ERROR") || l.contains("FAILED"))
        .collect();
    assert!(errors.is_empty(), "the guest saw errors: {errors:?}");
    let last = seed + u64::from(rounds);
    assert_eq!(
        first_mismatch(image, 0..sectors, |s| pattern_sector(last, s)),
        None,
        "a block does not hold what the guest last wrote"
    );
}

/// A sparse image of `bytes`.
pub fn empty_image(path: &Path, bytes: u64) {
    File::create(path)
        .and_then(|f| f.set_len(bytes))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// block-daemon serving `image` on `socket` (waits until it listens).
pub fn block_daemon(socket: &Path, image: &Path, args: &[&str]) -> Vm {
    let mut cmd = Command::new(bin("block-daemon"));
    cmd.arg("--socket")
        .arg(socket)
        .arg("--image")
        .arg(image)
        .args(args);
    let mut daemon = Vm::spawn(cmd);
    daemon.expect_line("block-daemon to listen", Duration::from_secs(20), |l| {
        l.contains("serving")
    });
    daemon
}

/// qemu-storage-daemon exporting raw `image` over vhost-user-blk on `socket`.
pub fn qemu_storage_daemon(socket: &Path, image: &Path, queues: u32) -> Vm {
    let qsd = require_tool("qemu-storage-daemon", "qemu-system-common");
    let mut cmd = Command::new(qsd);
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct=off",
            image.display()
        ))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
            socket.display()
        ));
    let vm = Vm::spawn(cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-storage-daemon did not create {}:\n{}",
            socket.display(),
            vm.transcript()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    vm
}

/// vmm-core running the test guest with one vhost-user-blk disk.
pub fn vmm_with_disk(socket: &Path, queues: u32, cpus: usize, cmdline: &str) -> Vm {
    let mut cmd = Command::new(bin("vmm-core"));
    cmd.arg("--kernel")
        .arg(crate::test_guest())
        .args(["--memory", "256", "--cpus", &cpus.to_string()])
        .args(["--cmdline", cmdline])
        .arg("--vhost-user-blk")
        .arg(format!("{},queues={queues}", socket.display()));
    Vm::spawn(cmd)
}

/// A scratch directory on a real filesystem (O_DIRECT does not work on tmpfs, which
/// /tmp may be): under the workspace's target directory.
pub fn disk_backed_dir(tag: &str) -> crate::TempDir {
    let base: PathBuf = crate::repo_root().join("target").join("test-tmp");
    crate::TempDir::new_in(&base, tag)
}

/// Runs qemu-img (the oracle for image formats) with `args`: whether it succeeded, and
/// its stdout and stderr.
pub fn qemu_img(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(require_tool("qemu-img", "qemu-utils"))
        .args(args)
        .output()
        .expect("running qemu-img");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// qemu-img with `args`, which must succeed; its stdout.
pub fn qemu_img_ok(args: &[&str]) -> String {
    let (ok, out, err) = qemu_img(args);
    assert!(ok, "qemu-img {args:?} failed:\n{out}{err}");
    out
}

/// The persistent bitmaps the image at `image` stores, as `qemu-img info` lists them
/// (its `format-specific.data.bitmaps`; null when it lists none). `-U`: a VM may hold it.
pub fn image_bitmaps(image: &Path) -> serde_json::Value {
    let path = image.to_str().expect("a UTF-8 path");
    let out = qemu_img_ok(&["info", "-U", "--output=json", path]);
    let info: serde_json::Value = serde_json::from_str(&out).expect("qemu-img info's JSON");
    info["format-specific"]["data"]["bitmaps"].clone()
}

/// A new qcow2 image at `image` over the qcow2 image `backing` (named as given: a
/// relative name is relative to `image`'s directory), of its size.
pub fn qcow2_over(image: &Path, backing: &str) {
    let path = image.to_str().expect("a UTF-8 path");
    qemu_img_ok(&[
        "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", path,
    ]);
}

/// `raw` converted into a new qcow2 image at `image`, with `-o options` if any.
pub fn qcow2_from_raw(raw: &Path, image: &Path, options: Option<&str>) {
    let (raw, image) = (
        raw.to_str().expect("a UTF-8 path"),
        image.to_str().expect("a UTF-8 path"),
    );
    let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
    if let Some(o) = options {
        args.extend(["-o", o]);
    }
    args.extend([raw, image]);
    qemu_img_ok(&args);
}

/// What qemu-img says about opening `image` as `format` when it refuses it: its error
/// without the "qemu-img: Could not open 'PATH': " prefix (QEMU's words for the damage).
pub fn qemu_img_refusal(image: &Path, format: &str) -> String {
    let path = image.to_str().expect("a UTF-8 path");
    let (ok, out, err) = qemu_img(&["info", "-f", format, path]);
    assert!(!ok, "qemu-img opened {path}:\n{out}");
    let first = err.lines().next().unwrap_or_default();
    let prefix = format!("qemu-img: Could not open '{path}': ");
    first.strip_prefix(&prefix).unwrap_or(first).to_string()
}

/// The MD5 of `bytes` in hex, as md5sum prints it (the Linux guests print theirs).
pub fn md5_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new(require_tool("md5sum", "coreutils"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running md5sum");
    let mut stdin = child.stdin.take().expect("md5sum's stdin");
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("md5sum's output");
    writer
        .join()
        .expect("feeding md5sum")
        .expect("writing to md5sum");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// block-daemon in gateway mode with `theirs` as its control socket (fd 3), as the
/// gateway starts it; the test is its gateway.
pub fn block_daemon_under_control(theirs: std::os::unix::net::UnixStream) -> Vm {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(bin("block-daemon"));
    cmd.args(["--control-fd", "3"]);
    // SAFETY: only dup2/fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let vm = Vm::spawn(cmd);
    drop(theirs);
    vm
}

/// The Open call a test's gateway sends for node "n0" serving `layers` (top first): one
/// queue, the default cache, discard passed down, read errors reported, ENOSPC waits
/// (QEMU's -drive defaults); a test changes what it needs with `..open_call(layers)`.
pub fn open_call(layers: Vec<ipc::ImageLayer>) -> ipc::BlockOpen {
    ipc::BlockOpen {
        node_name: "n0".into(),
        serial: "s".into(),
        read_only: false,
        cache: ipc::CacheFlags::default(),
        discard_unmap: true,
        detect_zeroes: ipc::DetectZeroes::Off,
        queues: 1,
        stats_intervals: vec![],
        on_read_error: ipc::OnError::Report,
        on_write_error: ipc::OnError::Enospc,
        layers,
        dirty_bitmaps: vec![],
        stored_bitmaps: ipc::StoredBitmaps::NotKept,
        job: None,
        inactive: false,
    }
}

/// A loop device over `file` with 4 KiB logical sectors (`losetup`, root), detached
/// when dropped; `.0` is its path.
pub struct FourKSectorDevice(pub String);

impl FourKSectorDevice {
    pub fn over(file: &Path) -> FourKSectorDevice {
        let losetup = require_tool("losetup", "util-linux");
        let out = Command::new(losetup)
            .args(["--find", "--show", "--sector-size", "4096"])
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("losetup: {e}"));
        assert!(
            out.status.success(),
            "losetup (needs root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FourKSectorDevice(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for FourKSectorDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The last round of blk-verify-loop the guest finished, in a VM's transcript.
pub fn last_round(transcript: &str) -> u32 {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix("GUEST BLK ROUND "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The gateway, stopped (-S), serving `drive` as d0 to the test guest's endless
/// verify loop of P(`seed`) (blk-verify-loop).
pub fn verifying_gateway(seed: u64, drive: &str) -> crate::qmp::Gateway {
    crate::qmp::Gateway::start_with(
        1,
        &format!("scenario=blk-verify-loop seed={seed:#x} rounds=0"),
        &["-S", "--drive", drive],
    )
}

/// Runs the verify loop's VM until the guest has written the whole disk after now (two
/// more rounds: the first may have begun before), then stops it.
pub fn two_more_rounds(gw: &mut crate::qmp::Gateway, c: &mut crate::qmp::QmpClient) {
    let target = last_round(&gw.vm.transcript()) + 2;
    c.ok("cont", serde_json::json!({}));
    gw.vm.expect_prefix(
        &format!("GUEST BLK ROUND {target} OK"),
        Duration::from_secs(60),
    );
    c.ok("stop", serde_json::json!({}));
}
