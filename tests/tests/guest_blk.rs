//! The test guest's virtio-blk driver on vmm-core (virtio-pci, vhost-user-blk frontend)
//! against block-daemon, and against qemu-storage-daemon as a peer backend: it finds the
//! disk by PCI enumeration, reads a pattern the host wrote, writes one the host checks
//! after power-off, flushes, discards, uses several queues.

use std::time::Duration;

use flotilla_tests::blk::{
    block_daemon, disk_backed_dir, empty_image, first_mismatch, pattern_image, pattern_sector,
    qemu_storage_daemon, vmm_with_disk, FourKSectorDevice,
};
use flotilla_tests::{TempDir, Vm};

const TIMEOUT: Duration = Duration::from_secs(60);
const SECTORS: u64 = 16 << 11; // 16 MiB
const SEED: u64 = 0x5eed_f10a;

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn expect_clean_end(vm: &mut Vm) {
    let status = vm.wait(TIMEOUT);
    assert!(status.success(), "vmm-core: {status}\n{}", vm.transcript());
    assert!(
        !vm.transcript().contains("GUEST ERROR"),
        "the guest reported errors:\n{}",
        vm.transcript()
    );
}

/// The guest's blk-pattern on a disk holding P(SEED): it checks that, writes P(SEED+1),
/// discards [8,16) and zeroes [16,24). `discard_frees`: the backend deallocates (so the
/// discarded range reads back as zeroes).
fn pattern_round_trip(vm: &mut Vm, image: &std::path::Path, discard_frees: bool) {
    vm.expect_prefix("GUEST BLK DISCARD done", TIMEOUT);
    vm.expect_prefix("GUEST BLK WRITE_ZEROES done", TIMEOUT);
    let ok = vm.expect_prefix("GUEST BLK PATTERN OK", TIMEOUT);
    assert_eq!(field(&ok, "sectors="), SECTORS.to_string());
    expect_clean_end(vm);
    let written = |s| pattern_sector(SEED + 1, s);
    assert_eq!(first_mismatch(image, 0..8, written), None);
    assert_eq!(first_mismatch(image, 24..SECTORS, written), None);
    assert_eq!(first_mismatch(image, 16..24, |_| [0; 512]), None);
    if discard_frees {
        assert_eq!(first_mismatch(image, 8..16, |_| [0; 512]), None);
    }
}

#[test]
fn guest_finds_the_disk_and_reads_its_serial() {
    let dir = TempDir::new("guest-blk-info");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    empty_image(&image, SECTORS * 512);
    let _daemon = block_daemon(
        &sock,
        &image,
        &["--queues", "4", "--id", "flotilla-serial-1"],
    );
    let mut vm = vmm_with_disk(&sock, 4, 2, "scenario=blk-info");
    let line = vm.expect_prefix("GUEST BLK dev=0", TIMEOUT);
    assert_eq!(field(&line, "capacity="), SECTORS.to_string());
    assert_eq!(field(&line, "queues="), "4");
    let features = u64::from_str_radix(field(&line, "features=0x"), 16).unwrap();
    for (bit, name) in [(32, "VERSION_1"), (28, "INDIRECT_DESC"), (29, "EVENT_IDX")] {
        assert!(features & (1 << bit) != 0, "{name} not negotiated: {line}");
    }
    for (bit, name) in [
        (9, "FLUSH"),
        (12, "MQ"),
        (13, "DISCARD"),
        (14, "WRITE_ZEROES"),
    ] {
        assert!(features & (1 << bit) != 0, "{name} not negotiated: {line}");
    }
    assert_eq!(
        vm.expect_prefix("GUEST BLK ID", TIMEOUT),
        "GUEST BLK ID flotilla-serial-1"
    );
    vm.expect_prefix("GUEST INFO blk GET_ID completion=irq", TIMEOUT);
    expect_clean_end(&mut vm);
}

#[test]
fn pattern_written_by_the_host_and_by_the_guest() {
    let dir = TempDir::new("guest-blk-pattern");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    pattern_image(&image, SEED, SECTORS);
    let _daemon = block_daemon(&sock, &image, &["--queues", "2"]);
    let mut vm = vmm_with_disk(&sock, 2, 2, &format!("scenario=blk-pattern seed={SEED:#x}"));
    pattern_round_trip(&mut vm, &image, true);
}

#[test]
fn pattern_with_the_one_at_a_time_engine_and_o_direct() {
    let dir = disk_backed_dir("guest-blk-direct");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    pattern_image(&image, SEED, SECTORS);
    let _daemon = block_daemon(&sock, &image, &["--engine", "sync", "--cache", "none"]);
    let mut vm = vmm_with_disk(&sock, 1, 1, &format!("scenario=blk-pattern seed={SEED:#x}"));
    pattern_round_trip(&mut vm, &image, true);
}

/// A disk on a device with 4 KiB logical sectors, O_DIRECT, io_uring: the daemon asks
/// the device its block size (BLKSSZGET) and serves the pattern round trip.
#[test]
fn pattern_on_a_4k_sector_device_with_o_direct() {
    let dir = disk_backed_dir("guest-blk-4k");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    pattern_image(&image, SEED, SECTORS);
    let dev = FourKSectorDevice::over(&image);
    let _daemon = block_daemon(&sock, std::path::Path::new(&dev.0), &["--cache", "none"]);
    let mut vm = vmm_with_disk(&sock, 1, 1, &format!("scenario=blk-pattern seed={SEED:#x}"));
    pattern_round_trip(&mut vm, &image, true);
}

#[test]
fn ignored_discards_keep_the_data() {
    let dir = TempDir::new("guest-blk-discard-ignore");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    pattern_image(&image, SEED, SECTORS);
    let _daemon = block_daemon(&sock, &image, &["--discard-ignore"]);
    let mut vm = vmm_with_disk(&sock, 1, 1, &format!("scenario=blk-pattern seed={SEED:#x}"));
    pattern_round_trip(&mut vm, &image, false);
    // discard=ignore: the guest's discard succeeded and the data stayed.
    assert_eq!(
        first_mismatch(&image, 8..16, |s| pattern_sector(SEED + 1, s)),
        None
    );
}

#[test]
fn every_queue_completes_its_own_requests() {
    let dir = TempDir::new("guest-blk-queues");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    empty_image(&image, SECTORS * 512);
    let _daemon = block_daemon(&sock, &image, &["--queues", "4"]);
    let mut vm = vmm_with_disk(&sock, 4, 2, "scenario=blk-queues");
    let ok = vm.expect_prefix("GUEST BLK QUEUES OK", TIMEOUT);
    assert_eq!(ok, "GUEST BLK QUEUES OK queues=4 requests=256");
    assert_eq!(
        vm.expect_prefix("GUEST BLK IRQ OK", TIMEOUT),
        "GUEST BLK IRQ OK queues=4"
    );
    expect_clean_end(&mut vm);
}

#[test]
fn qemu_storage_daemon_as_the_backend() {
    let dir = TempDir::new("guest-blk-qsd");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    pattern_image(&image, SEED, SECTORS);
    let _qsd = qemu_storage_daemon(&sock, &image, 2);
    let mut vm = vmm_with_disk(&sock, 2, 2, &format!("scenario=blk-pattern seed={SEED:#x}"));
    // qemu-storage-daemon's raw node ignores discards unless asked (discard=ignore).
    pattern_round_trip(&mut vm, &image, false);
}

#[test]
fn qemu_storage_daemon_serves_several_queues() {
    let dir = TempDir::new("guest-blk-qsd-queues");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    empty_image(&image, SECTORS * 512);
    let _qsd = qemu_storage_daemon(&sock, &image, 4);
    let mut vm = vmm_with_disk(&sock, 4, 2, "scenario=blk-queues");
    vm.expect_prefix("GUEST BLK QUEUES OK queues=4", TIMEOUT);
    vm.expect_prefix("GUEST BLK IRQ OK queues=4", TIMEOUT);
    expect_clean_end(&mut vm);
}

#[test]
fn one_daemon_serves_two_disks_to_two_vms() {
    let dir = TempDir::new("guest-blk-exports");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    pattern_image(&a, SEED, SECTORS);
    pattern_image(&b, SEED + 100, SECTORS);
    let mut cmd = std::process::Command::new(flotilla_tests::bin("block-daemon"));
    cmd.arg("--once")
        .arg("--export")
        .arg(format!(
            "socket={},image={},id=disk-a",
            sa.display(),
            a.display()
        ))
        .arg("--export")
        .arg(format!(
            "socket={},image={},id=disk-b,queues=2,engine=sync",
            sb.display(),
            b.display()
        ));
    let mut daemon = Vm::spawn(cmd);
    for _ in 0..2 {
        daemon.expect_line("an export to listen", TIMEOUT, |l| l.contains("serving"));
    }
    let mut vm_a = vmm_with_disk(&sa, 1, 1, &format!("scenario=blk-pattern seed={SEED:#x}"));
    let mut vm_b = vmm_with_disk(
        &sb,
        2,
        1,
        &format!("scenario=blk-pattern seed={:#x}", SEED + 100),
    );
    pattern_round_trip(&mut vm_a, &a, true);
    vm_b.expect_prefix("GUEST BLK PATTERN OK", TIMEOUT);
    expect_clean_end(&mut vm_b);
    assert_eq!(
        first_mismatch(&b, 24..SECTORS, |s| pattern_sector(SEED + 101, s)),
        None
    );
    // Both frontends gone: the daemon's work is done, and its sockets with it.
    let status = daemon.wait(TIMEOUT);
    assert!(status.success(), "{status}:\n{}", daemon.transcript());
    assert!(!sa.exists() && !sb.exists(), "sockets left behind");
}

#[test]
fn a_bad_export_fails_the_start() {
    let dir = TempDir::new("guest-blk-bad-export");
    let good = dir.path().join("good.img");
    empty_image(&good, 1 << 20);
    let mut cmd = std::process::Command::new(flotilla_tests::bin("block-daemon"));
    cmd.arg("--export")
        .arg(format!(
            "socket={},image={}",
            dir.path().join("a.sock").display(),
            good.display()
        ))
        .arg("--export")
        .arg(format!(
            "socket={},image={}",
            dir.path().join("b.sock").display(),
            dir.path().join("missing.img").display()
        ));
    let (status, _, err) = flotilla_tests::run_to_end(cmd, TIMEOUT);
    assert!(!status.success());
    assert!(
        err.contains("missing.img") && err.contains("No such file"),
        "{err}"
    );
    assert!(!dir.path().join("a.sock").exists(), "socket left behind");
}

#[test]
fn a_daemon_serves_the_next_frontend_after_a_disconnect() {
    let dir = TempDir::new("guest-blk-next-frontend");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    pattern_image(&image, SEED, SECTORS);
    let mut daemon = block_daemon(&sock, &image, &["--id", "kept"]);
    let mut first = vmm_with_disk(&sock, 1, 1, "scenario=blk-info");
    assert_eq!(
        first.expect_prefix("GUEST BLK ID", TIMEOUT),
        "GUEST BLK ID kept"
    );
    expect_clean_end(&mut first);
    // A fresh connection: nothing of the first one's state is left in the way.
    daemon.expect_line("the first frontend to go", TIMEOUT, |l| {
        l.contains("waiting for the next one")
    });
    let mut second = vmm_with_disk(&sock, 1, 1, &format!("scenario=blk-pattern seed={SEED:#x}"));
    pattern_round_trip(&mut second, &image, true);
}
