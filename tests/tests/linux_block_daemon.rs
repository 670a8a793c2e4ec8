//! A real Linux guest (Debian's kernel under QEMU TCG, QEMU as the vhost-user frontend)
//! against our block-daemon: data written through the daemon reads back intact, and a
//! filesystem made, filled and checked on it is clean, in the guest and on the host.

use std::process::Command;
use std::time::Duration;

use flotilla_tests::linux::{
    expect_filesystem_checked, linux_on_vhost_user_blk, reported, FILL_AND_CHECK_FS,
};
use flotilla_tests::{bin, require_tool, TempDir, Vm};

const LINUX: Duration = Duration::from_secs(180);

fn script() -> String {
    format!(
        r#"#!/bin/sh
set -e
echo "CAPACITY $(cat /sys/block/vda/size)"
echo "QUEUES $(ls /sys/block/vda/mq | wc -l)"
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
echo "SUM-WRITTEN $(md5sum < /tmp/data)"
dd if=/tmp/data of=/dev/vda bs=1M oflag=direct 2>/dev/null
dd if=/dev/vda of=/tmp/back bs=1M count=8 iflag=direct 2>/dev/null
echo "SUM-READ $(md5sum < /tmp/back)"
mkfs.ext4 -q -F /dev/vda
{FILL_AND_CHECK_FS}"#
    )
}

#[test]
fn linux_reads_writes_and_checks_a_filesystem() {
    let dir = TempDir::new("linux-blk");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let sock = dir.path().join("vhost.sock");
    let mut daemon = Command::new(bin("block-daemon"));
    daemon
        .arg("--socket")
        .arg(&sock)
        .arg("--image")
        .arg(&image)
        .args(["--queues", "2", "--once"]);
    let mut daemon = Vm::spawn(daemon);
    daemon.expect_line("the daemon to listen", Duration::from_secs(20), |l| {
        l.contains("serving")
    });
    let mut linux = linux_on_vhost_user_blk(dir.path(), &script(), &sock, false);
    let end = linux.expect_prefix("FLOTILLA-TEST-END", LINUX);
    let transcript = linux.transcript();
    assert_eq!(end, "FLOTILLA-TEST-END rc=0", "{transcript}");
    assert_eq!(reported(&transcript, "CAPACITY "), "131072");
    assert_eq!(reported(&transcript, "QUEUES "), "2");
    let written = reported(&transcript, "SUM-WRITTEN ");
    assert_eq!(reported(&transcript, "SUM-READ "), written);
    expect_filesystem_checked(&transcript);
    assert!(linux.wait(LINUX).success());
    // The daemon ends with its frontend.
    assert!(
        daemon.wait(Duration::from_secs(20)).success(),
        "{}",
        daemon.transcript()
    );
    // And the host agrees the filesystem is clean.
    let fsck = Command::new(require_tool("e2fsck", "e2fsprogs"))
        .arg("-fn")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}
