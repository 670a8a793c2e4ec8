//! Postcopy migration (the postcopy-ram capability and migrate-start-postcopy): the
//! dirtying test guest moves while its precopy cannot converge, runs at the destination
//! with pages missing, and goes on there with every page it checks intact, its disk and
//! NIC busy (the daemons touch guest RAM there too); beside it, QEMU 7.2 moving the same
//! guest with the same commands, whose events, statuses and refusals ours must match.

use std::time::{Duration, Instant};

use flotilla_tests::migration::{
    capabilities, count, destination, expect_mig, free_port, guest_goes_on, last_round, status,
    wait_for_status, wait_migration, IoSetup, Running, Vmm, MIGRATION,
};
use flotilla_tests::procs::{descendants, ProcId};
use flotilla_tests::qmp::{Gateway, QmpClient};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(30);
const PROGRESS: Duration = Duration::from_secs(15);
const DIRTY: &str = "scenario=migrate-dirty dirty-mib=64";
const MIB: u64 = 1 << 20;

/// Precopy at 32 MiB/s cannot keep up with the guest; the postcopy phase at 16 MiB/s
/// lasts seconds, so the guest at the destination touches pages not there yet.
fn slow_migration(s: &mut QmpClient) {
    s.ok(
        "migrate-set-parameters",
        json!({"max-bandwidth": 32 * MIB, "max-postcopy-bandwidth": 16 * MIB}),
    );
}

/// Waits until the migration sent `bytes` of RAM in precopy (it is still active).
fn wait_transferred(s: &mut QmpClient, bytes: u64) {
    let deadline = Instant::now() + MIGRATION;
    loop {
        let info = s.ok("query-migrate", json!({}));
        assert!(
            matches!(info["status"].as_str(), Some("setup" | "active")),
            "{info}"
        );
        if info["ram"]["transferred"].as_u64() >= Some(bytes) {
            return;
        }
        assert!(Instant::now() < deadline, "precopy stalls: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every event `c` got so far (and within a short while), in order, as (name, status).
fn events(c: &mut QmpClient) -> Vec<(String, String)> {
    c.event_within("NO-SUCH-EVENT", Duration::from_millis(300));
    c.events
        .drain(..)
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_string(),
                e["data"]["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(name, _)| matches!(name.as_str(), "MIGRATION" | "STOP" | "RESUME"))
        .collect()
}

/// What a postcopy migration looked like from outside.
struct Seen {
    source_events: Vec<(String, String)>,
    destination_events: Vec<(String, String)>,
    source_state: String,
    destination_state: String,
    info: Value,
}

/// Moves the dirtying guest from `source` to a new destination of `vmm`, switching to
/// postcopy once the first pass sent 16 MiB; the guest must go on there, intact.
fn postcopy_move(vmm: Vmm, source: &mut Running) -> Seen {
    let mut s = source.client();
    capabilities(&mut s, &["postcopy-ram", "events"], &[]);
    slow_migration(&mut s);
    let last = last_round(source);
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let mut destination = vmm.destination(DIRTY, &uri);
    // One client throughout: its events are all the destination's.
    let mut d = destination.client();
    capabilities(&mut d, &["postcopy-ram", "events"], &[]);
    // QEMU's destination (-S) runs the VM once it arrives only after a cont.
    if let Vmm::Qemu = vmm {
        d.ok("cont", json!({}));
    }
    s.ok("migrate", json!({"uri": uri}));
    wait_transferred(&mut s, 16 * MIB);
    s.ok("migrate-start-postcopy", json!({}));
    // The destination runs the VM before its memory is all there.
    wait_for_status(&mut d, "running");
    let during = s.ok("query-migrate", json!({}));
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(
        info["status"],
        "completed",
        "{info}\n--- source ---\n{}",
        source.vm().transcript()
    );
    eprintln!("{vmm:?} during postcopy: {during}\n{vmm:?} at its end: {info}");
    let seen = Seen {
        source_events: events(&mut s),
        destination_events: events(&mut d),
        source_state: status(&mut s),
        destination_state: status(&mut d),
        info,
    };
    // QEMU's monitor takes one client at a time.
    drop(d);
    // Both run the VM already (QEMU's was continued): Flotilla's resume only waits.
    guest_goes_on(Vmm::Flotilla, &mut destination, last);
    seen
}

#[test]
fn a_guest_that_dirties_memory_moves_in_postcopy_as_with_qemu() {
    let mut qemu_source = Vmm::Qemu.source(DIRTY);
    let qemu = postcopy_move(Vmm::Qemu, &mut qemu_source);
    let mut ours_source = Vmm::Flotilla.source(DIRTY);
    let ours = postcopy_move(Vmm::Flotilla, &mut ours_source);

    let migration = |events: &[(String, String)]| -> Vec<String> {
        events
            .iter()
            .filter(|(name, _)| name == "MIGRATION")
            .map(|(_, s)| s.clone())
            .collect()
    };
    // QEMU 7.2's source sometimes misses its postcopy-active event (its status is set
    // from the migration thread racing the event's emission); ours always sends it.
    let qemu_source = migration(&qemu.source_events);
    assert!(
        qemu_source == ["setup", "active", "postcopy-active", "completed"]
            || qemu_source == ["setup", "active", "completed"],
        "QEMU: {qemu_source:?}"
    );
    assert_eq!(
        migration(&ours.source_events),
        ["setup", "active", "postcopy-active", "completed"]
    );
    // The status comes before the stop, on both.
    for (vmm, events) in [("QEMU", &qemu.source_events), ("ours", &ours.source_events)] {
        let stop = events.iter().position(|(n, _)| n == "STOP");
        let completed = events.iter().position(|(_, s)| s == "completed");
        assert!(stop.is_some() && stop < completed, "{vmm}: {events:?}");
        if let Some(pa) = events.iter().position(|(_, s)| s == "postcopy-active") {
            assert!(Some(pa) < stop, "{vmm}: {events:?}");
        }
    }
    // The destination: active, postcopy-active, the VM running, completed.
    assert_eq!(
        ours.destination_events, qemu.destination_events,
        "ours, then QEMU's"
    );
    assert_eq!(
        (ours.source_state.as_str(), ours.destination_state.as_str()),
        (qemu.source_state.as_str(), qemu.destination_state.as_str())
    );
    assert_eq!(ours.source_state, "postmigrate");
    for (vmm, info) in [("QEMU", &qemu.info), ("ours", &ours.info)] {
        let ram = &info["ram"];
        assert!(ram["postcopy-bytes"].as_u64() > Some(MIB), "{vmm}: {info}");
        assert_eq!(ram["remaining"], 0, "{vmm}: {info}");
        assert!(info["downtime"].as_u64().is_some(), "{vmm}: {info}");
    }
    // Our destination's guest touched pages that were not there yet: it asked for them.
    assert!(
        ours.info["ram"]["postcopy-requests"].as_u64() > Some(0),
        "{}",
        ours.info
    );
}

/// With a disk and a NIC at work, the block and net daemons at the destination touch
/// guest RAM (descriptors, buffers) that may not be there yet: they wait for it through
/// their own userfaultfds, and the guest's checks of its disk and its echoes pass.
#[test]
fn the_disk_and_nic_daemons_wait_for_missing_pages_in_postcopy() {
    const IO: &str = "scenario=migrate-dirty dirty-mib=64 mig-blk=1 mig-net=1";
    let io = IoSetup::new("migration-postcopy");
    let mut src = Gateway::start_with(2, IO, &io.args());
    expect_mig(&mut src.vm, "GUEST MIG ready", BOOT);
    expect_mig(&mut src.vm, "GUEST MIG blk", PROGRESS);
    expect_mig(&mut src.vm, "GUEST MIG net", PROGRESS);
    let last = count(
        &expect_mig(&mut src.vm, "GUEST MIG round", PROGRESS),
        "round",
    );
    let mut s = src.client();
    capabilities(&mut s, &["postcopy-ram"], &[]);
    slow_migration(&mut s);
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let dst = destination(2, IO, &uri, &io.args());
    let mut d = dst.client();
    capabilities(&mut d, &["postcopy-ram"], &[]);
    s.ok("migrate", json!({"uri": uri}));
    // Early, so that most of memory (the NIC's receive buffers among it) is not there
    // when the VM runs at the destination.
    wait_transferred(&mut s, MIB);
    s.ok("migrate-start-postcopy", json!({}));
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(
        info["status"],
        "completed",
        "{info}\n{}",
        src.vm.transcript()
    );
    assert!(
        info["ram"]["postcopy-requests"].as_u64() > Some(0),
        "{info}"
    );
    // The agent's account: the disk's and the NIC's daemons found pages missing and
    // waited for them (each "N faults, M waited").
    let transcript = dst.vm.transcript();
    let account = transcript
        .lines()
        .find_map(|l| l.split("the vhost-user backends' faults: [").nth(1))
        .unwrap_or_else(|| panic!("no postcopy account:\n{transcript}"));
    let faults: Vec<(u64, u64)> = account
        .trim_end_matches(']')
        .split("; ")
        .map(|b| {
            let (faults, waited) = b.split_once(" faults, ").unwrap_or_else(|| panic!("{b}"));
            let waited = waited
                .strip_suffix(" waited")
                .unwrap_or_else(|| panic!("{b}"));
            (
                faults.parse().unwrap_or_else(|e| panic!("{b}: {e}")),
                waited.parse().unwrap_or_else(|e| panic!("{b}: {e}")),
            )
        })
        .collect();
    eprintln!("backends at the destination: {account}");
    // Disks first, then NICs: the NIC's daemon writes frames into receive buffers the
    // guest posted long before, untouched since: they fault in the daemon (and are
    // placed from there, or asked of the source and waited for). Without its
    // registration they would have read as zeroes, unnoticed.
    assert_eq!(faults.len(), 2, "{account}");
    assert!(faults[1].0 > 0, "{account}");
    let mut there = Running::Flotilla(dst);
    guest_goes_on(Vmm::Flotilla, &mut there, last);
    let Running::Flotilla(dst) = &mut there else {
        unreachable!()
    };
    // Block and network loads went on at the destination, checked by the guest.
    for what in [
        "GUEST MIG blk",
        "GUEST MIG net",
        "GUEST MIG blk",
        "GUEST MIG net",
    ] {
        expect_mig(&mut dst.vm, what, PROGRESS);
    }
    assert!(
        !dst.vm.transcript().contains("GUEST ERROR"),
        "{}",
        dst.vm.transcript()
    );
    assert_eq!(
        io.reflector.senders(),
        2,
        "both NICs should have sent frames"
    );
}

/// migrate-start-postcopy's refusals and the capability's rules, answered as QEMU 7.2
/// answers them (both asked the same, in the same order).
#[test]
fn postcopy_refusals_are_qemus() {
    let mut answers = Vec::new();
    for vmm in [Vmm::Qemu, Vmm::Flotilla] {
        let source = vmm.start("scenario=migrate-dirty dirty-mib=8");
        let mut s = source.client();
        let mut seen = vec![
            // Off, and no migration: the capability is named first.
            s.execute("migrate-start-postcopy", json!({})),
        ];
        capabilities(&mut s, &["postcopy-ram"], &[]);
        // On, and no migration yet.
        seen.push(s.execute("migrate-start-postcopy", json!({})));
        // A destination without postcopy-ram refuses a source that advises it: the
        // migration fails at its start and the VM runs on here.
        let uri = format!("tcp:127.0.0.1:{}", free_port());
        let destination = vmm.destination("scenario=migrate-dirty dirty-mib=8", &uri);
        let mut d = destination.client();
        d.ok("query-status", json!({}));
        s.ok("migrate", json!({"uri": uri}));
        let info = wait_migration(&mut s, &["completed", "failed"]);
        seen.push(json!(info["status"]));
        seen.push(json!(status(&mut s)));
        answers.push(seen);
        drop(destination);
        drop(source);
    }
    assert_eq!(answers[1], answers[0], "ours, then QEMU's");
    assert_eq!(answers[1][2], "failed");
    assert_eq!(answers[1][3], "running");
}

/// The descendants of `pid` that still run (zombies aside).
fn running(of: &[ProcId]) -> Vec<&ProcId> {
    of.iter()
        .filter(|p| {
            p.exists()
                && std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
                    .ok()
                    .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
                    == Some(false)
        })
        .collect()
}

/// A migration of the dirtying guest switched to postcopy and under way (its postcopy
/// phase slow: seconds), between two gateways; the destination runs the VM.
fn in_postcopy() -> (Gateway, QmpClient, Gateway, QmpClient) {
    let src = Gateway::start_with(1, DIRTY, &[]);
    let mut src = src;
    expect_mig(&mut src.vm, "GUEST MIG ready", BOOT);
    let mut s = src.client();
    capabilities(&mut s, &["postcopy-ram", "events"], &[]);
    s.ok(
        "migrate-set-parameters",
        json!({"max-bandwidth": 32 * MIB, "max-postcopy-bandwidth": 8 * MIB}),
    );
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let dst = destination(1, DIRTY, &uri, &[]);
    let mut d = dst.client();
    capabilities(&mut d, &["postcopy-ram"], &[]);
    s.ok("migrate", json!({"uri": uri}));
    wait_transferred(&mut s, MIB);
    s.ok("migrate-start-postcopy", json!({}));
    wait_for_status(&mut d, "running");
    let info = s.ok("query-migrate", json!({}));
    assert_eq!(info["status"], "postcopy-active", "{info}");
    (src, s, dst, d)
}

/// kill -9 of the destination in the middle of postcopy: the source's migration fails
/// saying the VM is lost, and the VM does not run again here (its memory at the
/// destination is gone, its disks may have changed there); the source's agent is gone.
#[test]
fn a_destination_lost_in_postcopy_fails_the_migration_and_the_vm_stays_stopped() {
    let (src, mut s, mut dst, _d) = in_postcopy();
    let agent = descendants(src.vm.pid())
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                .is_ok_and(|c| c.trim() == "migration-agent")
        })
        .expect("the source's migration agent");
    dst.vm.signal(nix::sys::signal::Signal::SIGKILL);
    dst.vm.wait(BOOT);
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap_or_default();
    assert!(
        why.ends_with(
            "postcopy had switched: the VM ran at the destination without all of its \
             memory, and stays stopped here"
        ),
        "{info}"
    );
    assert_eq!(status(&mut s), "postmigrate");
    // cont would run a VM that ran elsewhere meanwhile: the guest's own checks would
    // not know. It stays stopped; the rounds it printed end.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&mut s), "postmigrate");
    let deadline = Instant::now() + BOOT;
    while !running(std::slice::from_ref(&agent)).is_empty() {
        assert!(Instant::now() < deadline, "the source's agent runs on");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// kill -9 of the source in the middle of postcopy: the destination cannot go on (the
/// pages it lacks are gone); it fails and ends, and nothing it started runs on, its
/// vmm-core included, whose vCPUs wait for pages that will never come.
#[test]
fn a_source_lost_in_postcopy_ends_the_destination_with_nothing_left() {
    let (mut src, _s, mut dst, _d) = in_postcopy();
    let children = descendants(dst.vm.pid());
    assert!(children.len() >= 2, "{children:?}");
    src.vm.signal(nix::sys::signal::Signal::SIGKILL);
    src.vm.wait(BOOT);
    let status = dst.vm.wait(BOOT);
    assert!(!status.success(), "{status}\n{}", dst.vm.transcript());
    assert!(
        dst.vm.transcript().contains("load of migration failed"),
        "{}",
        dst.vm.transcript()
    );
    let deadline = Instant::now() + BOOT;
    loop {
        let left = running(&children);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Passes with compress and xbzrle (both sides set alike), then postcopy: what the
/// compress workers still hold is in before the switch, the postcopy phase sends whole
/// pages, and the guest's pages are intact there. (QEMU 7.2 takes the same settings but
/// fails the migration: "Received an unexpected compressed page".)
#[test]
fn passes_with_compress_and_xbzrle_then_postcopy() {
    let mut source = Vmm::Flotilla.source(DIRTY);
    let mut s = source.client();
    let caps = ["postcopy-ram", "compress", "xbzrle"];
    capabilities(&mut s, &caps, &[]);
    s.ok(
        "migrate-set-parameters",
        json!({"max-bandwidth": 64 * MIB, "compress-threads": 2}),
    );
    let last = last_round(&mut source);
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let mut destination = Vmm::Flotilla.destination(DIRTY, &uri);
    let mut d = destination.client();
    capabilities(&mut d, &caps, &[]);
    s.ok("migrate", json!({"uri": uri}));
    // Past the first (compressed) pass, into xbzrle's.
    let deadline = Instant::now() + MIGRATION;
    loop {
        let info = s.ok("query-migrate", json!({}));
        if info["ram"]["dirty-sync-count"].as_u64() >= Some(2) {
            assert!(info["compression"]["pages"].as_u64() > Some(0), "{info}");
            break;
        }
        assert!(Instant::now() < deadline, "{info}");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.ok("migrate-start-postcopy", json!({}));
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{info}");
    assert!(info["ram"]["postcopy-bytes"].as_u64() > Some(0), "{info}");
    drop(d);
    guest_goes_on(Vmm::Flotilla, &mut destination, last);
}

/// An idle guest switched at once: its remaining memory (mostly zero pages) is all sent
/// and placed before the destination has restored the state and said so, so the
/// destination's COMPLETE reaches the source before its RESUMED; the source takes them
/// in either order (it waited for RESUMED for ever when COMPLETE came first, seen in the
/// benchmark).
#[test]
fn an_idle_guest_switched_at_once_completes() {
    let mut src = Gateway::start_with(2, "scenario=idle", &[]);
    src.vm.expect_prefix("GUEST READY", BOOT);
    let mut s = src.client();
    capabilities(&mut s, &["postcopy-ram"], &[]);
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let dst = destination(2, "scenario=idle", &uri, &[]);
    let mut d = dst.client();
    capabilities(&mut d, &["postcopy-ram"], &[]);
    s.ok("migrate", json!({"uri": uri}));
    s.ok("migrate-start-postcopy", json!({}));
    let info = wait_migration(&mut s, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(status(&mut s), "postmigrate");
    wait_for_status(&mut d, "running");
}
