//! The block daemon can die, be killed or be replaced while the guest runs: the guest
//! sees a pause, never an I/O error or lost data. The test guest on vmm-core writes and
//! verifies its whole disk round after round with many requests in flight while the
//! daemon is SIGKILLed at random moments, restarted over QMP, replaced by a binary that
//! fails, and by one that keeps dying.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_tests::blk::{expect_verify_done, first_mismatch, pattern_image, pattern_sector};
use flotilla_tests::qmp::Gateway;
use flotilla_tests::{bin, TempDir, Vm};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
/// 32 MiB: a round is long enough for kills to land in the middle of it.
const SECTORS: u64 = 32 << 11;
const SEED: u64 = 0xdead_0001;
const RESTART: &str = "__io.flotilla_block-daemon-restart";
const EXITED: &str = "__io.flotilla_BLOCK_DAEMON_EXITED";
const RESTARTED: &str = "__io.flotilla_BLOCK_DAEMON_RESTARTED";

fn start(dir: &TempDir, rounds: u32) -> Gateway {
    let image = dir.path().join("d0.img");
    pattern_image(&image, SEED, SECTORS);
    let drive = format!("file={},format=raw,id=d0,queues=2", image.display());
    Gateway::start_with(
        1,
        &format!("scenario=blk-verify-loop seed={SEED:#x} rounds={rounds}"),
        &["--drive", &drive],
    )
}

/// The current daemon's pid, from its process list entry (our grandchild).
fn daemon_pid(gw: &Gateway) -> i32 {
    let me = gw.vm.pid();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let found = std::fs::read_dir("/proc").ok().and_then(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .find(|pid| {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let cmd =
                        std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    // Field 4 of stat is the parent pid (after "pid (comm) state").
                    let ppid = stat
                        .rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        .and_then(|p| p.parse::<i32>().ok());
                    ppid == Some(me) && cmd.contains("block-daemon") && !stat.contains(") Z")
                })
        });
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no block daemon under the gateway"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn round_of(line: &str) -> u32 {
    line.split_whitespace()
        .nth(3)
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no round number in {line}"))
}

/// The guest finished every round without an error, and the disk holds its last pattern.
fn expect_clean_finish(gw: &mut Gateway, image: &Path, rounds: u32) {
    expect_verify_done(&mut gw.vm, image, SEED, SECTORS, rounds);
}

#[test]
fn twenty_sigkills_lose_nothing() {
    let dir = TempDir::new("restart-sigkill");
    // Enough rounds that the guest is still at it after the kills (about 10 s of them).
    let rounds = 450;
    let mut gw = start(&dir, rounds);
    let mut c = gw.client();
    gw.vm.expect_prefix("GUEST BLK ROUND 1 OK", TIMEOUT);
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ u64::from(std::process::id());
    let mut random_ms = |max: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % max
    };
    // Twenty kills at random moments (requests are in flight on both queues most of the
    // time), each daemon living past what the supervisor counts as a crash loop (300 ms).
    for kill in 0..20 {
        std::thread::sleep(Duration::from_millis(350 + random_ms(250)));
        assert!(
            !gw.vm.transcript().contains("VERIFY DONE"),
            "the guest finished before kill {kill}: give it more rounds"
        );
        kill9(daemon_pid(&gw));
        let exited = c.event(EXITED);
        assert_eq!(exited["data"]["device"], "d0");
        assert_eq!(exited["data"]["reason"], "killed by signal 9");
        assert!(exited["data"].get("restart-in-ms").is_some(), "{exited}");
        c.event(RESTARTED);
    }
    let rounds_by_then = gw
        .vm
        .transcript()
        .lines()
        .filter(|l| l.starts_with("GUEST BLK ROUND"))
        .count();
    eprintln!("20 kills within {rounds_by_then} rounds");
    expect_clean_finish(&mut gw, &dir.path().join("d0.img"), rounds);
}

#[test]
fn restart_over_qmp_while_io_runs() {
    let dir = TempDir::new("restart-qmp");
    let rounds = 8;
    let mut gw = start(&dir, rounds);
    let mut c = gw.client();
    gw.vm.expect_prefix("GUEST BLK ROUND 1 OK", TIMEOUT);
    let before = daemon_pid(&gw);
    let reply = c.ok(RESTART, json!({"device": "d0"}));
    let after = reply["pid"].as_i64().expect("pid") as i32;
    assert_ne!(before, after);
    assert_eq!(c.event(RESTARTED)["data"]["pid"], after);
    assert!(
        !Path::new(&format!("/proc/{before}")).exists(),
        "the old daemon is still there"
    );
    // By id (the device's QOM path), with the binary named explicitly (an upgrade).
    gw.vm.expect_prefix("GUEST BLK ROUND", TIMEOUT);
    c.ok(
        RESTART,
        json!({"id": "/machine/peripheral-anon/device[0]/virtio-backend",
               "binary": bin("block-daemon").to_string_lossy()}),
    );
    assert_eq!(
        c.err(RESTART, json!({"device": "nope"})),
        ("DeviceNotFound".into(), "Device 'nope' not found".into())
    );
    expect_clean_finish(&mut gw, &dir.path().join("d0.img"), rounds);
}

#[test]
fn a_binary_that_fails_pauses_io_until_a_good_one() {
    let dir = TempDir::new("restart-bad-binary");
    let rounds = 6;
    let mut gw = start(&dir, rounds);
    let mut c = gw.client();
    let line = gw.vm.expect_prefix("GUEST BLK ROUND", TIMEOUT);
    let (class, desc) = c.err(RESTART, json!({"device": "d0", "binary": "/bin/false"}));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("block-daemon of d0"), "{desc}");
    let exited = c.event(EXITED);
    assert!(
        exited["data"]["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("failed to start"),
        "{exited}"
    );
    // No daemon: the guest waits (its requests sit in the rings), nothing completes.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = c.ok("query-blockstats", json!({}));
    assert_eq!(stats[0]["stats"]["wr_operations"], 0, "{stats}");
    let rounds_so_far = gw
        .vm
        .transcript()
        .lines()
        .filter(|l| l.starts_with("GUEST BLK ROUND"))
        .count();
    assert!(
        rounds_so_far <= round_of(&line) as usize + 1,
        "rounds went on without a daemon"
    );
    // A good daemon comes back: the guest carries on without an error.
    c.ok(
        RESTART,
        json!({"device": "d0", "binary": bin("block-daemon").to_string_lossy()}),
    );
    expect_clean_finish(&mut gw, &dir.path().join("d0.img"), rounds);
}

#[test]
fn a_daemon_that_keeps_dying_is_given_up_on() {
    let dir = TempDir::new("restart-give-up");
    // A build of the daemon that dies 100 ms after every start. (timeout kills it and
    // exits 137: in its own PID namespace the daemon would be init, which nothing inside
    // the namespace can SIGKILL.)
    let flaky = dir.path().join("flaky-daemon");
    std::fs::write(
        &flaky,
        format!(
            "#!/bin/sh\nexec timeout -s KILL 0.1 {} \"$@\"\n",
            bin("block-daemon").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &flaky,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    // Each of the ten flaky daemons serves for up to 100 ms, a second in all, in which a
    // guest does up to ~40 rounds here: enough rounds that it is still running when the
    // supervisor gives up (with 30 it sometimes finished first, and powered off).
    let rounds = 150;
    let mut gw = start(&dir, rounds);
    let mut c = gw.client();
    gw.vm.expect_prefix("GUEST BLK ROUND 1 OK", TIMEOUT);
    c.ok(
        RESTART,
        json!({"device": "d0", "binary": flaky.to_string_lossy()}),
    );
    // It dies, is restarted with backoff, dies again... and after ten quick deaths the
    // supervisor stops and says so (no restart-in-ms).
    let mut restarts_announced = 0;
    let gave_up = loop {
        let e = c.event(EXITED);
        assert_eq!(e["data"]["reason"], "exit status 137", "{e}");
        match e["data"].get("restart-in-ms") {
            Some(_) => restarts_announced += 1,
            None => break e,
        }
    };
    assert_eq!(restarts_announced, 9, "{gave_up}");
    // The disk cannot serve now: clients are told, and from then on its I/O status
    // says so. (The supervisor announces the exit first, then tells the block layer: the
    // event, not the exit, is the moment the status changes.)
    let error = c
        .event_within("BLOCK_IO_ERROR", Duration::from_secs(5))
        .expect("a BLOCK_IO_ERROR event for the disk given up on");
    assert_eq!(error["data"]["device"], "d0", "{error}");
    assert_eq!(error["data"]["action"], "report", "{error}");
    let block = c.ok("query-block", json!({}));
    assert_eq!(block[0]["io-status"], "failed", "{block}");
    // Fixed: the good build serves again and the guest finishes cleanly.
    c.ok(
        RESTART,
        json!({"device": "d0", "binary": bin("block-daemon").to_string_lossy()}),
    );
    let block = c.ok("query-block", json!({}));
    assert_eq!(block[0]["io-status"], "ok", "{block}");
    expect_clean_finish(&mut gw, &dir.path().join("d0.img"), rounds);
}

/// vmm-core on its own reconnects to the daemon's socket path when a new daemon listens
/// there again (what an init system restarting the daemon would do).
#[test]
fn standalone_vmm_core_reconnects_to_the_path() {
    let dir = TempDir::new("restart-standalone");
    let image = dir.path().join("d.img");
    let sock = dir.path().join("s");
    pattern_image(&image, SEED, SECTORS);
    let daemon = |image: &Path, sock: &Path| {
        flotilla_tests::blk::block_daemon(sock, image, &["--queues", "2"])
    };
    let mut d: Vm = daemon(&image, &sock);
    let rounds: u32 = 8;
    let mut vm = flotilla_tests::blk::vmm_with_disk(
        &sock,
        2,
        1,
        &format!("scenario=blk-verify-loop seed={SEED:#x} rounds={rounds}"),
    );
    for _ in 0..3 {
        vm.expect_prefix("GUEST BLK ROUND", TIMEOUT);
        d.signal(nix::sys::signal::Signal::SIGKILL);
        d.wait(TIMEOUT);
        d = daemon(&image, &sock);
    }
    vm.expect_prefix("GUEST BLK VERIFY DONE", TIMEOUT);
    let status = vm.wait(TIMEOUT);
    assert!(status.success(), "{status}:\n{}", vm.transcript());
    let t = vm.transcript();
    assert!(!t.contains("GUEST ERROR") && !t.contains("FAILED"), "{t}");
    assert_eq!(
        first_mismatch(&image, 0..SECTORS, |s| pattern_sector(
            SEED + u64::from(rounds),
            s
        )),
        None
    );
}
