//! A real Linux guest (Debian's kernel under QEMU TCG, QEMU as the vhost-user frontend)
//! on a qcow2 image served by a standalone block-daemon, over a backing chain qemu-img
//! made (qcow2 over qcow2 over raw, the backing files named relative to their
//! overlays): the guest reads back what qemu-img wrote into the chain, copies it with
//! allocating, partial-cluster writes (copy-on-write from the backing files), makes,
//! fills and checks a filesystem. qemu-img is the oracle after: `check` finds no
//! corruption and no leak, `compare` finds what the guest wrote, and the backing files
//! are unchanged.

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::blk::{
    block_daemon, md5_hex, pattern_image, qcow2_over, qemu_img, qemu_img_ok, SECTOR,
};
use flotilla_tests::linux::{
    expect_filesystem_checked, linux_on_vhost_user_blk, reported, FILL_AND_CHECK_FS,
};
use flotilla_tests::{path_arg as s, require_tool, TempDir};

const LINUX: Duration = Duration::from_secs(240);
const MIB: u64 = 1 << 20;
/// Where the guest copies the chain's first 8 MiB to: not cluster-aligned.
const COPY_TO: u64 = 40 * MIB + 3 * 1024;
const COPY_LEN: u64 = 8 * MIB;
/// The filesystem's size (4 KiB blocks).
const FS_BYTES: u64 = 32 * MIB;

fn script() -> String {
    format!(
        r#"#!/bin/sh
set -e
echo "CAPACITY $(cat /sys/block/vda/size)"
echo "SUM-CHAIN $(dd if=/dev/vda bs=1M count=8 iflag=direct 2>/dev/null | md5sum)"
dd if=/dev/vda of=/dev/vda bs=1k count=8192 seek=40963 iflag=direct oflag=direct 2>/dev/null
sync
echo "SUM-COPY $(dd if=/dev/vda bs=1k skip=40963 count=8192 iflag=direct 2>/dev/null | md5sum)"
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
echo "SUM-WRITTEN $(md5sum < /tmp/data)"
mkfs.ext4 -q -F -b 4096 /dev/vda 8192
{FILL_AND_CHECK_FS}"#
    )
}

#[test]
fn linux_on_a_qcow2_chain() {
    let qemu_io = require_tool("qemu-io", "qemu-utils");
    let dir = TempDir::new("linux-qcow2");
    let base = dir.path().join("base.raw");
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    pattern_image(&base, 13, 64 * MIB / SECTOR);
    // The backing files are named relative to their overlays (resolved as QEMU does).
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=16384",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&mid),
    ]);
    let io = Command::new(&qemu_io)
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 4M 1M",
            "-c",
            "write -P 0xa5 41M 64k",
        ])
        .arg(&mid)
        .output()
        .unwrap();
    assert!(io.status.success(), "{io:?}");
    qcow2_over(&top, "mid.qcow2");
    let expected = dir.path().join("expected.raw");
    qemu_img_ok(&["convert", "-O", "raw", s(&top), s(&expected)]);
    let expected = std::fs::read(&expected).unwrap();
    let backing_before = (std::fs::read(&base).unwrap(), std::fs::read(&mid).unwrap());

    let sock = dir.path().join("vhost.sock");
    let args = ["--format", "qcow2", "--queues", "2", "--once"];
    let mut daemon = block_daemon(&sock, &top, &args);
    let mut linux = linux_on_vhost_user_blk(dir.path(), &script(), &sock, false);
    let end = linux.expect_prefix("FLOTILLA-TEST-END", LINUX);
    let transcript = linux.transcript();
    assert_eq!(end, "FLOTILLA-TEST-END rc=0", "{transcript}");
    assert_eq!(reported(&transcript, "CAPACITY "), "131072");
    // What qemu-img wrote into the chain reads back in the guest.
    let chain = md5_hex(&expected[..COPY_LEN as usize]);
    assert_eq!(reported(&transcript, "SUM-CHAIN "), chain, "{transcript}");
    assert_eq!(reported(&transcript, "SUM-COPY "), chain, "{transcript}");
    expect_filesystem_checked(&transcript);
    assert!(linux.wait(LINUX).success());
    assert!(
        daemon.wait(Duration::from_secs(20)).success(),
        "{}",
        daemon.transcript()
    );

    // qemu-img: no corruption, no leak.
    let (ok, out, err) = qemu_img(&["check", s(&top)]);
    assert!(ok, "qemu-img check:\n{out}{err}");
    assert!(out.contains("No errors were found on the image."), "{out}");
    assert!(!out.contains("leaked"), "{out}");
    // What the guest wrote, as qemu-img reads it: the copy where it went, the backing
    // chain's data everywhere the guest did not write, a clean filesystem in front.
    let got_path = dir.path().join("got.raw");
    qemu_img_ok(&["convert", "-O", "raw", s(&top), s(&got_path)]);
    let got = std::fs::read(&got_path).unwrap();
    let (to, len, fs) = (COPY_TO as usize, COPY_LEN as usize, FS_BYTES as usize);
    assert!(got[to..to + len] == expected[..len], "the copy differs");
    assert!(
        got[fs..to] == expected[fs..to],
        "data before the copy changed"
    );
    assert!(
        got[to + len..] == expected[to + len..],
        "data after the copy changed"
    );
    let fsck = Command::new(require_tool("e2fsck", "e2fsprogs"))
        .arg("-fn")
        .arg(&got_path)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");
    // The image as a whole against the expected content, by qemu-img compare.
    let mut want = expected.clone();
    want[to..to + len].copy_from_slice(&expected[..len]);
    want[..fs].copy_from_slice(&got[..fs]);
    let want_path = dir.path().join("want.raw");
    std::fs::File::create(&want_path)
        .unwrap()
        .write_all_at(&want, 0)
        .unwrap();
    let (same, out, err) = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        s(&top),
        s(&want_path),
    ]);
    assert!(same, "qemu-img compare:\n{out}{err}");
    // The backing files were only read.
    let after = (std::fs::read(&base).unwrap(), std::fs::read(&mid).unwrap());
    assert!(after == backing_before, "a backing file changed");
}
