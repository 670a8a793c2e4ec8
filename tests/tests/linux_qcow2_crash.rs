//! SIGKILL of block-daemon at random moments while a real Linux guest (Debian's kernel
//! under QEMU TCG; QEMU's vhost-user-blk frontend reconnects and hands back the
//! inflight region) makes allocating writes to a qcow2 image over a raw backing file
//! qemu-img made: partial clusters (copy-on-write from the backing file), each write
//! flushed, and a writer in the background that keeps allocating. 20 kills; the guest
//! sees no error and its final verify of everything it wrote passes; after, qemu-img
//! check finds no corruption (a kill may leak clusters, never more) and every write the
//! guest made is in the image as qemu-img reads it, the backing file's data everywhere
//! else the guest did not write.
//!
//! This is the issue's crash test with the daemon on its own; under the gateway the
//! daemon is restarted by the gateway instead of by the test.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_tests::blk::{block_daemon, md5_hex, pattern_image, qemu_img_ok, SECTOR};
use flotilla_tests::linux::linux_on_vhost_user_blk;
use flotilla_tests::{require_tool, TempDir};

const LINUX: Duration = Duration::from_secs(300);
const MIB: u64 = 1 << 20;
const KILLS: u32 = 20;
const LOOPS: u32 = KILLS + 2;
/// Loop i writes 1 MiB at i * STRIDE + 3 KiB (not cluster-aligned).
const STRIDE: u64 = 1280 * 1024;
/// The background writer's region (random data at odd places; not checked).
const BACKGROUND: u64 = 32 * MIB;

fn script() -> String {
    format!(
        r#"#!/bin/sh
set -e
# Allocating writes in the background, each flushed, so that kills land in the middle
# of allocations: 12 KiB at odd places of the disk's second half.
(j=0; while :; do dd if=/dev/urandom of=/dev/vda bs=4k seek=$(({bg} / 4096 + j * 37 % 8000)) count=3 oflag=direct,dsync 2>/dev/null || true; j=$((j + 1)); done) &
i=0
while [ $i -lt {LOOPS} ]; do
  dd if=/dev/urandom of=/tmp/w$i bs=1M count=1 2>/dev/null
  dd if=/tmp/w$i of=/dev/vda bs=1k seek=$((i * {stride_k} + 3)) oflag=direct conv=fsync 2>/dev/null
  dd if=/dev/vda of=/tmp/r bs=1k skip=$((i * {stride_k} + 3)) count=1024 iflag=direct 2>/dev/null
  if [ "$(md5sum < /tmp/w$i)" = "$(md5sum < /tmp/r)" ]; then echo "LOOP $i OK $(md5sum < /tmp/w$i)"; else echo "LOOP $i BAD"; fi
  i=$((i + 1))
done
kill $(jobs -p) 2>/dev/null || true
wait 2>/dev/null || true
# Everything written, read back once more.
i=0; bad=0
while [ $i -lt {LOOPS} ]; do
  dd if=/dev/vda of=/tmp/r bs=1k skip=$((i * {stride_k} + 3)) count=1024 iflag=direct 2>/dev/null
  [ "$(md5sum < /tmp/w$i)" = "$(md5sum < /tmp/r)" ] || bad=$((bad + 1))
  i=$((i + 1))
done
echo "FINAL-BAD $bad"
echo "IO-ERRORS $(dmesg | grep -ci -e 'i/o error' -e 'blk_update_request' || true)"
"#,
        bg = BACKGROUND,
        stride_k = STRIDE / 1024,
    )
}

/// A small generator for the kills' timing (seeded from the clock, printed).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn a_qcow2_image_survives_sigkill_during_allocating_writes() {
    let dir = TempDir::new("linux-qcow2-crash");
    let base = dir.path().join("base.raw");
    let top = dir.path().join("top.qcow2");
    pattern_image(&base, 29, 64 * MIB / SECTOR);
    let (b, t) = (base.to_str().unwrap(), top.to_str().unwrap());
    qemu_img_ok(&["create", "-q", "-f", "qcow2", "-b", b, "-F", "raw", t]);
    let expected = std::fs::read(&base).unwrap();
    let sock = dir.path().join("vhost.sock");
    let args = ["--format", "qcow2", "--queues", "2"];
    let mut daemon = block_daemon(&sock, &top, &args);
    let mut linux = linux_on_vhost_user_blk(dir.path(), &script(), &sock, true);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    eprintln!("kill timing seed {seed}");
    let mut rng = Lcg(seed);
    let mut logs = String::new();
    let mut written = Vec::new();
    for i in 0..LOOPS {
        let line = linux.expect_prefix("LOOP ", LINUX);
        assert!(line.contains(" OK "), "{line}\n{}", linux.transcript());
        written.push(
            line.split_whitespace()
                .nth(3)
                .unwrap_or_default()
                .to_string(),
        );
        if i < KILLS {
            // Some time into the next loop's writes (and the background writer's).
            std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
            daemon.signal(nix::sys::signal::Signal::SIGKILL);
            daemon.wait(Duration::from_secs(20));
            let log = daemon.transcript();
            // Shown if the test fails, a hang included: what each daemon started again.
            eprintln!("--- daemon before kill {} ---\n{}", i + 1, log.trim_end());
            logs.push_str(&log);
            daemon = block_daemon(&sock, &top, &args);
        }
    }
    let end = linux.expect_prefix("FLOTILLA-TEST-END", LINUX);
    let transcript = linux.transcript();
    assert_eq!(end, "FLOTILLA-TEST-END rc=0", "{transcript}");
    assert!(transcript.contains("FINAL-BAD 0"), "{transcript}");
    assert!(
        transcript.contains("IO-ERRORS 0"),
        "the guest's kernel logged I/O errors:\n{transcript}"
    );
    assert!(linux.wait(LINUX).success());
    // The last daemon, told to end, leaves the image clean.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(20)).success());
    logs.push_str(&daemon.transcript());
    assert!(!logs.contains("panicked"), "{logs}");
    let resumed = logs
        .lines()
        .filter(|l| l.contains("starting again") && l.contains("in flight"))
        .count();
    eprintln!("{KILLS} kills; {resumed} queue(s) resumed requests in flight");

    // qemu-img: no corruption (leaks from the kills are allowed: exit 3).
    let check = Command::new(require_tool("qemu-img", "qemu-utils"))
        .args(["check", t])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).into_owned();
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        matches!(check.status.code(), Some(0 | 3)),
        "qemu-img check ({}):\n{out}{err}",
        check.status
    );
    assert!(
        !out.contains("ERROR") && !out.contains("corruption"),
        "{out}"
    );
    eprintln!("qemu-img check: {}", out.trim());
    // Every write the guest made, as qemu-img reads the image; the backing file's data
    // where the guest did not write.
    let got_path = dir.path().join("got.raw");
    qemu_img_ok(&["convert", "-O", "raw", t, got_path.to_str().unwrap()]);
    let got = std::fs::read(&got_path).unwrap();
    let mut at = 0usize;
    for (i, sum) in written.iter().enumerate() {
        let start = (i as u64 * STRIDE + 3 * 1024) as usize;
        assert!(
            got[at..start] == expected[at..start],
            "backing data before loop {i}'s write"
        );
        assert_eq!(
            &md5_hex(&got[start..start + MIB as usize]),
            sum,
            "loop {i}'s write"
        );
        at = start + MIB as usize;
    }
    let bg = BACKGROUND as usize;
    assert!(
        got[at..bg] == expected[at..bg],
        "backing data after the loops' writes"
    );
}
