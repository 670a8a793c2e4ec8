//! The test guest's blk-bench, which bench/blk and bench/sandbox quote: only requests the
//! backend completed with S_OK count as I/Os, failed ones are counted apart. The disk is a
//! sparse image on a tmpfs far smaller than it, so reads (of holes) succeed and most random
//! writes fail with ENOSPC; block-daemon serves it with polling off (`--poll-us 0`).

use std::time::Duration;

use flotilla_tests::blk::{block_daemon, vmm_with_disk};
use flotilla_tests::qemu::SmallFs;

const TIMEOUT: Duration = Duration::from_secs(60);

fn number(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
}

#[test]
fn blk_bench_counts_only_requests_that_succeeded() {
    // 64 KiB of room under a 16 MiB image: once 16 pages are written, a random write
    // lands on one of them one time in 256 and fails otherwise (so failures outnumber
    // successes after a few dozen requests, however slow the machine).
    let fs = SmallFs::mount("guest-blk-bench", 64 << 10);
    let (image, sock) = (fs.path().join("d.img"), fs.path().join("s"));
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let daemon = block_daemon(&sock, &image, &["--poll-us", "0"]);
    let mut vm = vmm_with_disk(&sock, 1, 1, "scenario=blk-bench bench_ms=200");
    let mut lines = Vec::new();
    for _ in 0..6 {
        lines.push(vm.expect_prefix("GUEST BENCH rw=", TIMEOUT));
    }
    let status = vm.wait(TIMEOUT);
    assert!(status.success(), "vmm-core: {status}\n{}", vm.transcript());
    for line in &lines {
        let (ios, errors, iops) = (
            number(line, "ios="),
            number(line, "errors="),
            number(line, "iops="),
        );
        if line.contains("rw=randread") || line.contains("rw=seqread") {
            assert!(ios > 0 && errors == 0, "reads of holes succeed: {line}");
            assert!(iops > 0, "{line}");
        } else if line.contains("rw=randwrite") {
            // Counting every completion would make ios exceed errors.
            assert!(
                errors > 0 && ios < errors,
                "most random writes fail and are not counted as I/Os: {line}\n{}",
                vm.transcript()
            );
            assert!(
                vm.transcript()
                    .contains(&format!("blk-bench rw=randwrite errors={errors}")),
                "the guest says the run failed: {line}\n{}",
                vm.transcript()
            );
        }
    }
    let kinds = |rw: &str| lines.iter().filter(|l| l.contains(rw)).count();
    assert_eq!(
        (
            kinds("rw=randread"),
            kinds("rw=randwrite"),
            kinds("rw=seqread")
        ),
        (2, 2, 1),
        "{lines:?}"
    );
    drop(daemon);
}

#[test]
fn blk_bench_runs_one_workload_in_slices() {
    let dir = flotilla_tests::TempDir::new("guest-blk-bench-slices");
    let (image, sock) = (dir.path().join("d.img"), dir.path().join("s"));
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let daemon = block_daemon(&sock, &image, &[]);
    // Workload 2: random 4 KiB reads at queue depth 32, three slices of 50 ms.
    let mut vm = vmm_with_disk(
        &sock,
        1,
        1,
        "scenario=blk-bench bench_ms=50 workload=2 repeat=3",
    );
    let status = vm.wait(TIMEOUT);
    assert!(status.success(), "vmm-core: {status}\n{}", vm.transcript());
    let t = vm.transcript();
    let results: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("GUEST BENCH rw="))
        .collect();
    let starts = t
        .lines()
        .filter(|l| l.starts_with("GUEST BENCH START"))
        .count();
    assert_eq!((results.len(), starts), (3, 3), "{t}");
    for line in results {
        assert!(
            line.starts_with("GUEST BENCH rw=randread bs=4096 qd=32 ") && number(line, "ios=") > 0,
            "{line}"
        );
    }
    drop(daemon);
}
