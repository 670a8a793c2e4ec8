//! A real Linux guest (Debian's kernel under QEMU TCG; QEMU's vhost-user-blk frontend
//! reconnects and hands back the inflight region) while our block daemon is SIGKILLed
//! again and again: the guest's write/read/checksum loop never fails, its kernel logs no
//! I/O error, and kills land with requests in flight (each is timed for when one of the
//! daemon's threads waits on the disk; writers and readers in the background keep it
//! busy), which the next daemon starts again.

use std::time::Duration;

use flotilla_tests::blk::{block_daemon, empty_image};
use flotilla_tests::linux::linux_on_vhost_user_blk;
use flotilla_tests::TempDir;

const LINUX: Duration = Duration::from_secs(240);
const LOOPS: u32 = 14;

fn script() -> String {
    format!(
        r#"#!/bin/sh
set -e
# Load that keeps requests in the daemon whatever the checked loop is doing (generating
# or summing data), so that kills land with requests in flight, on the half of the disk
# the loop does not use: writers whose every write is flushed (a flush is a real
# fdatasync on the host, the longest a request stays in the daemon) and readers.
for r in 0 1; do
  (while :; do dd if=/dev/zero of=/dev/vda bs=64k seek=$((512 + r * 128)) count=128 oflag=direct,dsync 2>/dev/null || true; done) &
  (while :; do dd if=/dev/vda of=/dev/null bs=1M skip=$((48 + r * 8)) count=8 iflag=direct 2>/dev/null || true; done) &
done
i=0
while [ $i -lt {LOOPS} ]; do
  dd if=/dev/urandom of=/tmp/a bs=1M count=4 2>/dev/null
  dd if=/tmp/a of=/dev/vda bs=1M seek=$((i % 8 * 4)) oflag=direct conv=fsync 2>/dev/null
  dd if=/dev/vda of=/tmp/b bs=1M skip=$((i % 8 * 4)) count=4 iflag=direct 2>/dev/null
  if [ "$(md5sum < /tmp/a)" = "$(md5sum < /tmp/b)" ]; then echo "LOOP $i OK"; else echo "LOOP $i BAD"; fi
  i=$((i + 1))
done
kill $(jobs -p) 2>/dev/null || true
echo "IO-ERRORS $(dmesg | grep -ci -e 'i/o error' -e 'blk_update_request' || true)"
"#
    )
}

#[test]
fn linux_sees_no_error_while_the_daemon_is_killed() {
    let dir = TempDir::new("linux-blk-restart");
    let image = dir.path().join("disk.img");
    empty_image(&image, 64 << 20);
    let sock = dir.path().join("vhost.sock");
    let mut daemon = block_daemon(&sock, &image, &["--queues", "2"]);
    let mut linux = linux_on_vhost_user_blk(dir.path(), &script(), &sock, true);
    // A kill during every other loop, some time into its dd's.
    let mut kills = 0;
    let mut busy_kills = 0;
    let mut logs = String::new();
    for i in 0..LOOPS - 2 {
        let line = linux.expect_prefix("LOOP ", LINUX);
        assert!(line.ends_with(" OK"), "{line}\n{}", linux.transcript());
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(150 + 100 * u64::from(i % 3)));
            if waits_on_the_disk(daemon.pid(), Duration::from_secs(5)) {
                busy_kills += 1;
            }
            daemon.signal(nix::sys::signal::Signal::SIGKILL);
            daemon.wait(Duration::from_secs(20));
            logs.push_str(&daemon.transcript());
            daemon = block_daemon(&sock, &image, &["--queues", "2"]);
            kills += 1;
        }
    }
    let end = linux.expect_prefix("FLOTILLA-TEST-END", LINUX);
    let transcript = linux.transcript();
    assert_eq!(end, "FLOTILLA-TEST-END rc=0", "{transcript}");
    assert_eq!(
        transcript
            .lines()
            .filter(|l| l.starts_with("LOOP ") && l.ends_with(" OK"))
            .count(),
        LOOPS as usize,
        "{transcript}"
    );
    assert!(
        transcript.contains("IO-ERRORS 0"),
        "the guest's kernel logged I/O errors:\n{transcript}"
    );
    assert!(linux.wait(LINUX).success());
    // Kills that landed with requests in flight: QEMU handed the inflight region back and
    // the new daemon started them again (it logs each queue's; there is no gateway here
    // to raise an event). A kill is timed to land while one of the daemon's threads
    // waits on the disk, so some must have.
    logs.push_str(&daemon.transcript());
    let resumed = logs
        .lines()
        .filter(|l| l.contains("starting again") && l.contains("in flight"))
        .count();
    eprintln!("{kills} kills, {busy_kills} while the daemon waited on the disk; {resumed} queue(s) resumed requests in flight");
    assert!(
        resumed > 0,
        "no kill of {kills} ({busy_kills} while the daemon waited on the disk) landed with \
         requests in flight:\n{logs}"
    );
}

/// Waits (up to `limit`) until one of `pid`'s threads, io_uring's workers included, is
/// in uninterruptible sleep: waiting on the disk for a request the daemon took from a
/// queue and has not completed. False if none did in time.
fn waits_on_the_disk(pid: i32, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        let waiting = tasks.filter_map(Result::ok).any(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    == Some("D")
            })
        });
        if waiting {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}
