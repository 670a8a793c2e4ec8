//! The compress capability, on Flotilla and on QEMU 7.2 with the same guests and
//! settings: the `migrate-dirty` guest moved with its pages deflated at compress-level 1
//! and 9 by two threads, every page it checks intact at the destination; the idle guest,
//! whose pages deflate well, moved in fewer bytes than its pages hold, by 32 threads at
//! each end (the agents sandboxed, as always); query-migrate's "compression" member as
//! QEMU's.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use flotilla_tests::migration::{
    capabilities, guest_goes_on, last_round, start_migration_prepared, wait_for_status,
    wait_migration, Running, Vmm,
};
use flotilla_tests::qmp::QmpClient;
use serde_json::{json, Value};

const PAGE: u64 = 4096;
const BOOT: Duration = Duration::from_secs(30);

/// 4 MiB rewritten at a page a millisecond (4 MiB/s): slow enough for two threads that
/// deflate (a debug build's agent deflates a few MiB/s each) to catch up, sharing two
/// cores with the guest's vCPU.
const DIRTY: &str = "scenario=migrate-dirty dirty-mib=4 dirty-pages-per-ms=1";
const WORKING_SET_PAGES: u64 = 4 << 20 >> 12;

/// One migration at a time: each takes both cores of a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// compress on at the source with `level` and `threads` (and a downtime limit that a
/// slow debug build still meets; convergence is not what is tested here).
fn compress_on(s: &mut QmpClient, level: u8, threads: u8) {
    capabilities(s, &["compress"], &[]);
    s.ok(
        "migrate-set-parameters",
        json!({"compress-level": level, "compress-threads": threads, "downtime-limit": 1000}),
    );
}

/// query-migrate's last answer for a migration that must complete.
fn completed(vmm: Vmm, s: &mut QmpClient, source: &mut Running) -> Value {
    let info = wait_migration(s, &["completed", "failed", "cancelled"]);
    eprintln!("{vmm:?}: {info}");
    assert_eq!(
        info["status"],
        "completed",
        "{vmm:?}: {info}\n{}",
        source.vm().transcript()
    );
    info
}

fn number(info: &Value, group: &str, key: &str) -> u64 {
    info[group][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {group}.{key} in {info}"))
}

/// The migrate-dirty guest moved with compress at `level` (the destination has compress
/// on too, as QEMU's must); it goes on at the destination with every page it checks
/// intact. query-migrate's answer at the end.
fn dirtying_guest(vmm: Vmm, level: u8) -> Value {
    let _serial = one_at_a_time();
    let mut source = vmm.source(DIRTY);
    let mut s = source.client();
    compress_on(&mut s, level, 2);
    let mut destination = start_migration_prepared(vmm, DIRTY, &mut s, |d| {
        capabilities(d, &["compress"], &[]);
    });
    let info = completed(vmm, &mut s, &mut source);
    wait_for_status(&mut s, "postmigrate");
    let last = last_round(&mut source);
    guest_goes_on(vmm, &mut destination, last);
    info
}

/// The member names of query-migrate's "compression", each a number.
fn compression_keys(vmm: Vmm, info: &Value) -> BTreeSet<String> {
    let stats = info["compression"]
        .as_object()
        .unwrap_or_else(|| panic!("{vmm:?}: no compression in {info}"));
    for (key, value) in stats {
        assert!(value.is_number(), "{vmm:?}: {key} in {info}");
    }
    stats.keys().cloned().collect()
}

#[test]
fn a_dirtying_guest_moves_compressed_at_levels_1_and_9_as_on_qemu() {
    for level in [1, 9] {
        let ours = dirtying_guest(Vmm::Flotilla, level);
        let qemu = dirtying_guest(Vmm::Qemu, level);
        assert_eq!(
            compression_keys(Vmm::Flotilla, &ours),
            compression_keys(Vmm::Qemu, &qemu),
            "level {level}"
        );
        // The working set's words are an arithmetic sequence from a random key per page:
        // noise to zlib. QEMU sends them deflated all the same (hardly a page goes
        // whole); we send what does not shrink whole (normal pages), and deflate the rest
        // of the guest (its code and data).
        assert!(
            number(&qemu, "compression", "pages") >= WORKING_SET_PAGES,
            "{qemu}"
        );
        assert!(
            number(&qemu, "ram", "normal") < WORKING_SET_PAGES / 10,
            "{qemu}"
        );
        assert!(
            number(&ours, "ram", "normal") >= WORKING_SET_PAGES,
            "{ours}"
        );
        let ours_pages = number(&ours, "compression", "pages");
        assert!(ours_pages > 0, "{ours}");
        assert!(
            number(&ours, "compression", "compressed-size") * 3 < ours_pages * PAGE * 2,
            "{ours}"
        );
    }
}

/// Workers for the idle guest, each side: more threads that allocate than glibc gives
/// heap arenas before it counts the CPUs (8), which it does by opening a file (a sandbox
/// violation, unless the agent set the limit first).
const MANY_THREADS: u8 = 32;

/// The idle guest moved (with compress at `level`, if any, by MANY_THREADS workers at
/// each end) and running at the destination; query-migrate's answer at the end.
fn idle_guest(vmm: Vmm, level: Option<u8>) -> Value {
    let _serial = one_at_a_time();
    let mut source = vmm.start("");
    source.vm().expect_prefix("GUEST IDLE", BOOT);
    let mut s = source.client();
    if let Some(level) = level {
        compress_on(&mut s, level, MANY_THREADS);
    }
    let destination = start_migration_prepared(vmm, "", &mut s, |d| {
        if level.is_some() {
            capabilities(d, &["compress"], &[]);
            d.ok(
                "migrate-set-parameters",
                json!({"decompress-threads": MANY_THREADS}),
            );
        }
    });
    let info = completed(vmm, &mut s, &mut source);
    let mut d = destination.client();
    vmm.resume(&mut d);
    wait_for_status(&mut d, "running");
    info
}

/// The idle guest's pages that hold anything (its code, data and page tables) deflate
/// well: with compress they go in fewer bytes than they hold, and the migration sends
/// less than without; QEMU's answer has the same "compression" member.
#[test]
fn an_idle_guests_pages_go_deflated_in_fewer_bytes_as_on_qemu() {
    let plain = idle_guest(Vmm::Flotilla, None);
    assert!(plain.get("compression").is_none(), "{plain}");
    let ours = idle_guest(Vmm::Flotilla, Some(1));
    let pages = number(&ours, "compression", "pages");
    let size = number(&ours, "compression", "compressed-size");
    let transferred = number(&ours, "ram", "transferred");
    let normal = number(&ours, "ram", "normal");
    // Deflated to less than two thirds (to 40% today).
    assert!(pages > 0 && size * 3 < pages * PAGE * 2, "{ours}");
    assert!(
        transferred < (pages + normal) * PAGE,
        "sent {transferred} bytes for {pages} deflated and {normal} whole pages: {ours}"
    );
    assert!(
        transferred < number(&plain, "ram", "transferred") * 3 / 4,
        "with compress {ours}\nwithout {plain}"
    );
    let rate = ours["compression"]["compression-rate"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(rate > 1.5, "{ours}");
    let qemu = idle_guest(Vmm::Qemu, Some(1));
    assert_eq!(
        compression_keys(Vmm::Flotilla, &ours),
        compression_keys(Vmm::Qemu, &qemu)
    );
    assert!(number(&qemu, "compression", "pages") > 0, "{qemu}");
}
