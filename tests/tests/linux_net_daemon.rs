//! A real Linux guest (Debian's kernel under QEMU TCG, QEMU's vhost-user-net frontend)
//! against our net daemon on a tap: it pings the host, and moves several MiB each way
//! over TCP with busybox nc, with checksums that match on both ends.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::linux::{initrd_with_script, qemu_tcg_linux};
use flotilla_tests::net::Tap;
use flotilla_tests::{bin, TempDir, Vm};

const LINUX: Duration = Duration::from_secs(240);
const MIB: usize = 4;

fn md5(bytes: &[u8]) -> String {
    let mut child = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn linux_pings_and_moves_data_over_tcp() {
    let dir = TempDir::new("linux-net");
    let tap = Tap::create("fltln0", "10.77.40.1/24");
    let host = "10.77.40.1";
    // Host side: a receiver for what the guest sends, and a sender for what it fetches.
    let sink = TcpListener::bind((host, 5001)).unwrap();
    let source = TcpListener::bind((host, 5002)).unwrap();
    let payload: Vec<u8> = (0..MIB << 20).map(|i| (i * 31 % 251) as u8).collect();
    let expected_down = md5(&payload);
    let sender = std::thread::spawn(move || {
        let (mut s, _) = source.accept().unwrap();
        s.write_all(&payload).unwrap();
    });
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = sink.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let sock = dir.path().join("net.sock");
    let mut daemon = Command::new(bin("net-daemon"));
    daemon
        .arg("--socket")
        .arg(&sock)
        .args(["--tap", tap.name()]);
    let mut daemon = Vm::spawn(daemon);
    daemon.expect_line("the daemon to listen", Duration::from_secs(20), |l| {
        l.contains("serving a NIC")
    });
    let script = format!(
        r#"#!/bin/sh
set -e
ip link set eth0 up
ip addr add 10.77.40.2/24 dev eth0
ping -c 3 -W 5 {host} >/tmp/ping && echo PING-OK
dd if=/dev/urandom of=/tmp/up bs=1M count={MIB} 2>/dev/null
echo "SUM-UP $(md5sum < /tmp/up)"
nc {host} 5001 < /tmp/up
nc {host} 5002 > /tmp/down
echo "SUM-DOWN $(md5sum < /tmp/down)"
"#
    );
    let initrd = dir.path().join("initrd");
    initrd_with_script(&initrd, &script);
    let mut linux = qemu_tcg_linux(
        &initrd,
        512,
        1,
        &[
            "-chardev".into(),
            format!("socket,id=c,path={}", sock.display()),
            "-netdev".into(),
            "vhost-user,id=n0,chardev=c".into(),
            // QEMU 7.2 under TCG crashes with MSI-X on vhost-user-net (HOST.md).
            "-device".into(),
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,vectors=0".into(),
        ],
    );
    let end = linux.expect_prefix("FLOTILLA-TEST-END", LINUX);
    let transcript = linux.transcript();
    assert_eq!(end, "FLOTILLA-TEST-END rc=0", "{transcript}");
    assert!(transcript.contains("PING-OK"), "{transcript}");
    let up = receiver.join().unwrap();
    assert_eq!(up.len(), MIB << 20);
    let sum_up = transcript
        .lines()
        .find_map(|l| l.strip_prefix("SUM-UP "))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sum_up, md5(&up), "what the guest sent");
    sender.join().unwrap();
    let sum_down = transcript
        .lines()
        .find_map(|l| l.strip_prefix("SUM-DOWN "))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sum_down, expected_down, "what the guest fetched");
    assert!(linux.wait(LINUX).success());
    drop(daemon);
}
