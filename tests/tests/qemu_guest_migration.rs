//! The test guest's `migrate-dirty` scenario (tests/guest/src/scenarios/migrate/) under QEMU
//! 7.2 with KVM, the peer that live-migration tests and benchmarks compare Flotilla with: it
//! reports its working set and its rounds, keeps to a rate limit, reports a stale word (its
//! self-test), and survives a live migration between two QEMU processes over loopback TCP
//! with its pages, disk writes and network echoes intact.

use std::time::{Duration, Instant};

use flotilla_tests::migration::{
    count, expect_mig, field, free_port, mib_s, wait_for_status, Reflector, MIGRATION,
};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::QmpClient;
use flotilla_tests::TempDir;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(30);
/// Between two progress lines (rounds are reported every 100 ms; the block and network lines
/// about every second).
const PROGRESS: Duration = Duration::from_secs(15);
const PAGE: u64 = 4096;

/// The test guest on QEMU (paused), with `extra` devices, and a QMP client.
fn start(cmdline: &str, extra: &[&str]) -> (Qemu, QmpClient) {
    let qemu = Qemu::guest(cmdline, extra);
    let client = qemu.client();
    (qemu, client)
}

#[test]
fn reports_its_working_set_and_its_rounds() {
    let (mut qemu, mut client) = start("scenario=migrate-dirty dirty-mib=32", &[]);
    client.ok("cont", json!({}));
    let ready = expect_mig(&mut qemu.vm, "GUEST MIG ready", BOOT);
    assert!(
        ready.starts_with("GUEST MIG ready dirty-mib=32 pages=8192 gpa="),
        "{ready}"
    );
    assert!(
        ready.contains(" dirty-pages-per-ms=unlimited seed=0x") && ready.ends_with(" blk=0 net=0"),
        "{ready}"
    );
    let mut last = 0;
    for _ in 0..5 {
        let line = expect_mig(&mut qemu.vm, "GUEST MIG round ", PROGRESS);
        let round = count(&line, "round");
        assert!(
            round > last,
            "rounds go backwards: {line} after round {last}"
        );
        assert!(mib_s(&line) > 0.0, "{line}");
        last = round;
    }
}

#[test]
fn keeps_to_the_rate_limit_and_stops_after_the_rounds_asked_for() {
    // 8 pages per ms is 31.25 MiB/s; 1024 pages a round, so about 130 ms per round.
    let (mut qemu, mut client) = start(
        "scenario=migrate-dirty dirty-mib=4 dirty-pages-per-ms=8 mig-rounds=6 mig-report-ms=1",
        &[],
    );
    client.ok("cont", json!({}));
    let ready = expect_mig(&mut qemu.vm, "GUEST MIG ready", BOOT);
    assert!(
        ready.starts_with("GUEST MIG ready dirty-mib=4 pages=1024 ")
            && ready.contains(" dirty-pages-per-ms=8 "),
        "{ready}"
    );
    let limit = 8.0 * PAGE as f64 * 1000.0 / f64::from(1 << 20);
    for round in 1..=6 {
        let line = expect_mig(&mut qemu.vm, "GUEST MIG round ", PROGRESS);
        assert_eq!(count(&line, "round"), round, "{line}");
        // The TSC calibration is good to a few per cent; an unpaced loop goes 100x faster.
        assert!(
            mib_s(&line) <= limit * 1.1,
            "over the limit of {limit}: {line}"
        );
    }
    expect_mig(&mut qemu.vm, "GUEST MIG done rounds=6", PROGRESS);
    qemu.vm.expect_prefix("GUEST POWEROFF", PROGRESS);
    let status = qemu.vm.wait(PROGRESS);
    assert!(status.success(), "{status}:\n{}", qemu.vm.transcript());
}

#[test]
fn the_self_test_stale_word_is_reported() {
    let (mut qemu, mut client) = start("scenario=migrate-dirty dirty-mib=16 mig-selftest=1", &[]);
    client.ok("cont", json!({}));
    let ready = expect_mig(&mut qemu.vm, "GUEST MIG ready", BOOT);
    // gpa=0xSTART-0xEND
    let base = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("gpa=0x"))
        .and_then(|range| u64::from_str_radix(range.split('-').next()?, 16).ok())
        .unwrap_or_else(|| panic!("no gpa= range in {ready}"));
    let selftest = expect_mig(&mut qemu.vm, "GUEST MIG selftest ", PROGRESS);
    let (page, word) = (field(&selftest, "page"), field(&selftest, "word"));
    assert_eq!(field(&selftest, "round"), 3, "{selftest}");
    let error = qemu.vm.expect_prefix("GUEST ERROR mig mismatch ", PROGRESS);
    assert_eq!(field(&error, "page"), page, "{error}");
    assert_eq!(field(&error, "word"), word, "{error}");
    assert_eq!(field(&error, "gpa"), base + page * PAGE, "{error}");
    assert_eq!(field(&error, "round"), 3, "{error}");
    assert_eq!(field(&error, "page_round"), 3, "{error}");
    assert_eq!(field(&error, "bad_pages"), 1, "{error}");
    assert_ne!(field(&error, "expected"), field(&error, "found"), "{error}");
    qemu.vm.expect_prefix("GUEST POWEROFF", PROGRESS);
    let status = qemu.vm.wait(PROGRESS);
    assert!(status.success(), "{status}:\n{}", qemu.vm.transcript());
}

/// `-netdev` and `-device` for a NIC whose frames go to `reflector`. Each QEMU sends from a
/// port of its own; the reflector answers where a frame came from.
fn nic(reflector: &Reflector) -> [String; 4] {
    [
        "-netdev".into(),
        format!(
            "socket,id=n0,udp=127.0.0.1:{},localaddr=127.0.0.1:0",
            reflector.port
        ),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ]
}

/// `-drive` and `-device` for a virtio-blk disk on the raw image `image`.
fn disk(image: &std::path::Path) -> [String; 4] {
    [
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=d0,node-name=disk0",
            image.display()
        ),
        "-device".into(),
        "virtio-blk-pci,drive=d0".into(),
    ]
}

fn empty_image(dir: &TempDir) -> std::path::PathBuf {
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(8 << 20))
        .unwrap();
    image
}

#[test]
fn bad_parameters_and_missing_devices_are_reported() {
    let cases = [
        (
            "dirty-mib=0",
            "mig: bad dirty-mib=0 (a number from 1 to 1024)",
        ),
        (
            "dirty-mib=4096",
            "mig: bad dirty-mib=4096 (a number from 1 to 1024)",
        ),
        (
            "dirty-pages-per-ms=fast",
            "mig: bad dirty-pages-per-ms=fast (a number from 1 to 4294967296)",
        ),
        (
            "dirty-words=0",
            "mig: bad dirty-words=0 (a number from 1 to 512)",
        ),
        (
            "dirty-words=513",
            "mig: bad dirty-words=513 (a number from 1 to 512)",
        ),
        (
            "mig-rounds=0",
            "mig: bad mig-rounds=0 (a number from 1 to 18446744073709551615)",
        ),
        (
            "mig-selftest=yes",
            "mig: bad mig-selftest=yes (a number from 0 to 1)",
        ),
        (
            "seed=0xg",
            "mig: bad seed=0xg (hexadecimal, at most 16 digits)",
        ),
        (
            "mig-blk=1",
            "mig: mig-blk=1 but no usable virtio-blk device",
        ),
        (
            "mig-net=1",
            "mig: mig-net=1 but no usable virtio-net device",
        ),
    ];
    for (parameter, error) in cases {
        let (mut qemu, mut client) = start(&format!("scenario=migrate-dirty {parameter}"), &[]);
        client.ok("cont", json!({}));
        let line = qemu.vm.expect_prefix("GUEST ERROR ", BOOT);
        assert_eq!(line, format!("GUEST ERROR {error}"), "{parameter}");
        qemu.vm.expect_prefix("GUEST POWEROFF", BOOT);
        let status = qemu.vm.wait(BOOT);
        assert!(status.success(), "{parameter}: {status}");
        assert!(!qemu.vm.transcript().contains("GUEST MIG"), "{parameter}");
    }
    // 1000 MiB is a valid size, but not in a 128 MiB guest.
    let (mut qemu, mut client) = start("scenario=migrate-dirty dirty-mib=1000", &[]);
    client.ok("cont", json!({}));
    let line = qemu.vm.expect_prefix("GUEST ERROR ", BOOT);
    assert!(
        line.starts_with("GUEST ERROR mig: dirty-mib=1000 does not fit in the free RAM left ("),
        "{line}"
    );
    qemu.vm.expect_prefix("GUEST POWEROFF", BOOT);
}

#[test]
fn a_changed_echo_is_reported() {
    let reflector = Reflector::start(Some(40));
    let nic = nic(&reflector);
    let extra: Vec<&str> = nic.iter().map(String::as_str).collect();
    let (mut qemu, mut client) = start("scenario=migrate-dirty dirty-mib=8 mig-net=1", &extra);
    client.ok("cont", json!({}));
    expect_mig(&mut qemu.vm, "GUEST MIG ready", BOOT);
    let line = qemu.vm.expect_prefix("GUEST ERROR ", PROGRESS);
    let want = (1 + 40) & 0xff;
    assert_eq!(
        line,
        format!(
            "GUEST ERROR mig net bad echo seq=1 offset=40 got={:#x} want={want:#x}",
            !want & 0xff
        )
    );
    qemu.vm.expect_prefix("GUEST POWEROFF", PROGRESS);
}

#[test]
fn a_sector_changed_behind_the_guest_is_reported() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("qemu-mig-blk");
    let image = empty_image(&dir);
    let disk = disk(&image);
    let extra: Vec<&str> = disk.iter().map(String::as_str).collect();
    let (mut qemu, mut client) = start("scenario=migrate-dirty dirty-mib=8 mig-blk=1", &extra);
    client.ok("cont", json!({}));
    expect_mig(&mut qemu.vm, "GUEST MIG ready", BOOT);
    expect_mig(&mut qemu.vm, "GUEST MIG blk ", PROGRESS);
    // QEMU reads the image through the page cache (cache=writeback), so a write here is what
    // the guest reads next. Sector 100 is rewritten by the guest once a pass (about 50 ms):
    // keep spoiling it until the guest notices, at its read-back or on the next pass.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let spoiler = std::thread::spawn(move || {
        while rx.recv_timeout(Duration::from_millis(2)).is_err() {
            file.write_all_at(&[0x5a; 512], 100 * 512).unwrap();
        }
    });
    let line = qemu.vm.expect_prefix("GUEST ERROR ", PROGRESS);
    tx.send(()).unwrap();
    spoiler.join().unwrap();
    assert!(
        line.starts_with("GUEST ERROR mig blk mismatch read=")
            && line.contains(" sector=100 word=")
            && line.contains(" got=0x5a5a5a5a5a5a5a5a want=0x"),
        "{line}"
    );
    qemu.vm.expect_prefix("GUEST POWEROFF", PROGRESS);
}

/// `query-migrate` on the source until the migration ends; its last answer. Fails on a
/// migration that fails or does not end within MIGRATION.
fn migration_result(client: &mut QmpClient, qemu: &Qemu) -> Value {
    let deadline = Instant::now() + MIGRATION;
    loop {
        let info = client.ok("query-migrate", json!({}));
        match info["status"].as_str() {
            Some("completed") => return info,
            Some("failed" | "cancelled") => panic!(
                "the migration ended with {info}\n--- source ---\n{}",
                qemu.vm.transcript()
            ),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no end of the migration within {MIGRATION:?}: {info}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn live_migration_to_a_second_qemu_keeps_pages_disk_and_network_intact() {
    let dir = TempDir::new("qemu-migration");
    let image = empty_image(&dir);
    let reflector = Reflector::start(None);
    let (disk, nic) = (disk(&image), nic(&reflector));
    let devices: Vec<&str> = disk.iter().chain(&nic).map(String::as_str).collect();
    let cmdline = "scenario=migrate-dirty dirty-mib=64 mig-blk=1 mig-net=1";
    let (mut source, mut from) = start(cmdline, &devices);
    let port = free_port();
    let incoming = format!("tcp:127.0.0.1:{port}");
    let mut with_incoming = devices.to_vec();
    with_incoming.extend(["-incoming", &incoming]);
    let (mut destination, mut to) = start(cmdline, &with_incoming);

    from.ok("cont", json!({}));
    let ready = expect_mig(&mut source.vm, "GUEST MIG ready", BOOT);
    assert!(
        ready.contains(" blk=1 net=1 blk_sectors=2048 mac="),
        "{ready}"
    );
    expect_mig(&mut source.vm, "GUEST MIG round ", PROGRESS);
    let blk_before = count(
        &expect_mig(&mut source.vm, "GUEST MIG blk ", PROGRESS),
        "blk",
    );
    let net_before = count(
        &expect_mig(&mut source.vm, "GUEST MIG net ", PROGRESS),
        "net",
    );
    let round_before = count(
        &expect_mig(&mut source.vm, "GUEST MIG round ", PROGRESS),
        "round",
    );

    // QEMU 7.2 caps migration at 128 MiB/s by default, below what the guest dirties (it
    // converges here all the same, in seconds: kvm-pvm's dirty logging slows the guest's
    // writes). Without the cap it takes a fraction of a second; the downtime limit stays 300 ms.
    from.ok(
        "migrate-set-parameters",
        json!({"max-bandwidth": 10u64 << 30}),
    );
    from.ok("migrate", json!({"uri": incoming}));
    let info = migration_result(&mut from, &source);
    let ram = &info["ram"];
    eprintln!(
        "QEMU migrated the dirtying guest: downtime {} ms, total-time {} ms, setup-time {} ms, \
         {} bytes at {:.0} Mbit/s, {} dirty syncs",
        info["downtime"],
        info["total-time"],
        info["setup-time"],
        ram["transferred"],
        ram["mbps"].as_f64().unwrap_or_default(),
        ram["dirty-sync-count"]
    );
    wait_for_status(&mut from, "postmigrate");
    // Started with -S, the destination waits paused once the state is in.
    wait_for_status(&mut to, "paused");
    to.ok("cont", json!({}));

    // The first round the destination reports may have ended on the source just before the
    // switch-over; the next one ran whole on the destination and checked every page.
    let first = count(
        &expect_mig(&mut destination.vm, "GUEST MIG round ", PROGRESS),
        "round",
    );
    assert!(
        first > round_before,
        "round {first} after round {round_before}"
    );
    let mut last = first;
    while last < first + 3 {
        let line = expect_mig(&mut destination.vm, "GUEST MIG round ", PROGRESS);
        last = count(&line, "round");
    }
    let blk_after = count(
        &expect_mig(&mut destination.vm, "GUEST MIG blk ", PROGRESS),
        "blk",
    );
    assert!(blk_after > blk_before, "blk {blk_after} after {blk_before}");
    let net_after = count(
        &expect_mig(&mut destination.vm, "GUEST MIG net ", PROGRESS),
        "net",
    );
    assert!(net_after > net_before, "net {net_after} after {net_before}");
    // Two more rounds, now that the block and network loads went on after the switch-over.
    let round_now = last;
    while last < round_now + 2 {
        last = count(
            &expect_mig(&mut destination.vm, "GUEST MIG round ", PROGRESS),
            "round",
        );
    }
    assert_eq!(
        reflector.senders(),
        2,
        "echoes should have gone to both QEMUs' sockets"
    );
    let transcript = destination.vm.transcript();
    assert!(
        !transcript.contains("GUEST READY") && !transcript.contains("GUEST ERROR"),
        "the destination booted or reported an error instead of resuming:\n{transcript}"
    );
}
