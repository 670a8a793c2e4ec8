//! Migrations that converge only with help, on Flotilla and on QEMU 7.2 with the same
//! guest and parameters: the `migrate-dirty` guest rewrites 64 MiB faster than the
//! migration may send (max-bandwidth), so plain precopy never gets its dirty pages under
//! the downtime limit; auto-converge (the vCPU throttle) or xbzrle (deltas of the pages
//! it rewrites) move it all the same, with every page it checks intact at the
//! destination.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flotilla_tests::migration::{
    count, destination, expect_mig, free_port, wait_for_status, wait_migration, MIGRATION,
};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::Vm;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(30);
/// Between two progress lines of the guest.
const PROGRESS: Duration = Duration::from_secs(15);
const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

/// 32 pages a millisecond: 125 MiB/s, about twice what the migration may send, so every
/// pass finds the whole working set dirty again (and well within what the guest does
/// with dirty logging on, which slows its writes).
const DIRTYING: &str = "scenario=migrate-dirty dirty-mib=64 dirty-pages-per-ms=32";
/// The same, changing 64 of the 512 words of a page each round.
const DELTAS: &str = "scenario=migrate-dirty dirty-mib=64 dirty-pages-per-ms=32 dirty-words=64";
const MAX_BANDWIDTH: u64 = 64 * MIB;
const DOWNTIME_LIMIT_MS: u64 = 50;
/// Passes of plain precopy we watch before calling it a migration that does not end:
/// auto-converge has its throttle on by then.
const PASSES_WITHOUT_END: u64 = 4;

/// One test at a time: what converges depends on how fast the guest dirties and the
/// migration sends, which two tests running side by side on a small machine would change.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The VMM the guest runs on; both are driven through QMP alike.
#[derive(Clone, Copy, Debug)]
enum Vmm {
    Flotilla,
    Qemu,
}

/// A running guest, on either VMM.
enum Running {
    Flotilla(Gateway),
    Qemu(Qemu),
}

impl Running {
    fn vm(&mut self) -> &mut Vm {
        match self {
            Running::Flotilla(g) => &mut g.vm,
            Running::Qemu(q) => &mut q.vm,
        }
    }

    fn client(&self) -> QmpClient {
        match self {
            Running::Flotilla(g) => g.client(),
            Running::Qemu(q) => q.client(),
        }
    }

    /// How many `GUEST MIG round` lines the guest printed so far.
    fn rounds(&mut self) -> usize {
        self.vm()
            .transcript()
            .lines()
            .filter(|l| l.starts_with("GUEST MIG round "))
            .count()
    }

    /// Waits for more than `rounds` round lines.
    fn wait_for_rounds_past(&mut self, rounds: usize) {
        let deadline = Instant::now() + PROGRESS;
        while self.rounds() <= rounds {
            assert!(
                Instant::now() < deadline,
                "no round within {PROGRESS:?}:\n{}",
                self.vm().transcript()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Vmm {
    /// The guest running with `cmdline`, its working set written.
    fn source(self, cmdline: &str) -> Running {
        let mut source = match self {
            Vmm::Flotilla => Running::Flotilla(Gateway::start_with(1, cmdline, &[])),
            Vmm::Qemu => {
                let qemu = Qemu::guest(cmdline, &[]);
                qemu.client().ok("cont", json!({}));
                Running::Qemu(qemu)
            }
        };
        expect_mig(source.vm(), "GUEST MIG ready", BOOT);
        source
    }

    /// A destination waiting for the source's migration to `uri`.
    fn destination(self, cmdline: &str, uri: &str) -> Running {
        match self {
            Vmm::Flotilla => Running::Flotilla(destination(1, cmdline, uri, &[])),
            Vmm::Qemu => Running::Qemu(Qemu::guest(cmdline, &["-incoming", uri])),
        }
    }

    /// Runs the guest that came in (QEMU, started with -S, waits paused for it).
    fn resume(self, destination: &mut QmpClient) {
        match self {
            Vmm::Flotilla => wait_for_status(destination, "running"),
            Vmm::Qemu => {
                wait_for_status(destination, "paused");
                destination.ok("cont", json!({}));
            }
        }
    }
}

fn capabilities(c: &mut QmpClient, on: &[&str], off: &[&str]) {
    let states = on
        .iter()
        .map(|name| json!({"capability": name, "state": true}))
        .chain(
            off.iter()
                .map(|name| json!({"capability": name, "state": false})),
        )
        .collect::<Vec<_>>();
    c.ok("migrate-set-capabilities", json!({"capabilities": states}));
}

/// A migration of `source` to a new destination, started.
fn start_migration(vmm: Vmm, cmdline: &str, s: &mut QmpClient) -> Running {
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let destination = vmm.destination(cmdline, &uri);
    // Its monitor answers once it listens.
    destination.client().ok("query-status", json!({}));
    s.ok("migrate", json!({"uri": uri}));
    destination
}

/// The guest goes on at the destination: rounds past `last_round` (the last the source
/// reported), each page checked against what it wrote last; an error line fails.
fn guest_goes_on(vmm: Vmm, destination: &mut Running, last_round: u64) {
    vmm.resume(&mut destination.client());
    let first = count(
        &expect_mig(destination.vm(), "GUEST MIG round ", PROGRESS),
        "round",
    );
    assert!(first > last_round, "round {first} after {last_round}");
    // The first one may have ended on the source; the next two ran whole here, every
    // page checked.
    let mut last = first;
    while last < first + 2 {
        last = count(
            &expect_mig(destination.vm(), "GUEST MIG round ", PROGRESS),
            "round",
        );
    }
    let transcript = destination.vm().transcript();
    assert!(
        !transcript.contains("GUEST READY") && !transcript.contains("GUEST ERROR"),
        "the destination booted or reported an error instead of going on:\n{transcript}"
    );
}

/// The last `GUEST MIG round` the source reported.
fn last_round(source: &mut Running) -> u64 {
    source
        .vm()
        .transcript()
        .lines()
        .rfind(|l| l.starts_with("GUEST MIG round "))
        .map_or(0, |l| count(l, "round"))
}

fn ram(info: &Value, key: &str) -> u64 {
    info["ram"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no ram.{key} in {info}"))
}

/// Without auto-converge the migration goes on pass after pass, the guest's working
/// set dirty again at each; it is cancelled, and the guest runs on at the source.
fn plain_precopy_does_not_end(vmm: Vmm, source: &mut Running, s: &mut QmpClient) {
    let _destination = start_migration(vmm, DIRTYING, s);
    let deadline = Instant::now() + MIGRATION;
    let mut syncs = 0;
    let info = loop {
        let info = s.ok("query-migrate", json!({}));
        assert!(
            matches!(info["status"].as_str(), Some("setup" | "active")),
            "{vmm:?}: plain precopy should not end: {info}"
        );
        assert!(info.get("cpu-throttle-percentage").is_none(), "{info}");
        if info["status"] == "active" {
            let now = ram(&info, "dirty-sync-count");
            assert!(now >= syncs, "{info}");
            syncs = now;
        }
        if syncs >= PASSES_WITHOUT_END {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "{vmm:?}: not {PASSES_WITHOUT_END} passes within {MIGRATION:?}: {info}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let expected = info["expected-downtime"].as_u64().unwrap_or_default();
    assert!(expected > DOWNTIME_LIMIT_MS, "{vmm:?}: {info}");
    eprintln!("{vmm:?} without auto-converge, still active: {info}");
    s.ok("migrate_cancel", json!({}));
    let info = wait_migration(s, &["cancelled", "failed", "completed"]);
    assert_eq!(info["status"], "cancelled", "{vmm:?}: {info}");
    wait_for_status(s, "running");
    let rounds = source.rounds();
    source.wait_for_rounds_past(rounds);
}

/// auto-converge with its throttle starting at 50 (which slows the guest, not enough
/// here) and then at 99: the guest still runs while throttled (rounds go on at 50), the
/// migration completes, and the guest goes on at the destination.
fn auto_converge_ends_it(vmm: Vmm, source: &mut Running, s: &mut QmpClient) {
    capabilities(s, &["auto-converge"], &[]);
    s.ok(
        "migrate-set-parameters",
        json!({"cpu-throttle-initial": 50, "cpu-throttle-increment": 49, "max-cpu-throttle": 99}),
    );
    let mut destination = start_migration(vmm, DIRTYING, s);
    let deadline = Instant::now() + MIGRATION;
    // The throttles seen while the migration was active, and the guest's rounds when
    // each was first seen.
    let mut throttles: Vec<(u64, usize)> = Vec::new();
    let info = loop {
        let info = s.ok("query-migrate", json!({}));
        match info["status"].as_str() {
            Some("completed") => break info,
            Some("setup" | "active" | "device") => {}
            _ => panic!("{vmm:?}: {info}\n{}", source.vm().transcript()),
        }
        if let Some(throttle) = info["cpu-throttle-percentage"].as_u64() {
            if throttles.last().map(|t| t.0) != Some(throttle) {
                throttles.push((throttle, source.rounds()));
            }
        }
        assert!(
            Instant::now() < deadline,
            "{vmm:?}: no end within {MIGRATION:?}: {info}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("{vmm:?} with auto-converge (throttles {throttles:?}): {info}");
    assert_eq!(
        throttles.first().map(|t| t.0),
        Some(50),
        "{vmm:?}: {throttles:?}"
    );
    // Throttled to half its time, the guest runs the other half: it goes on with its
    // rounds (a throttle that starves it would let the migration end at 50 too).
    let at_50 = throttles[0].1;
    let after_50 = throttles.get(1).map(|t| t.1);
    assert!(
        throttles.get(1).map(|t| t.0) == Some(99) && after_50 > Some(at_50),
        "{vmm:?}: the guest made no round at 50% (throttles seen and rounds then: \
         {throttles:?})"
    );
    wait_for_status(s, "postmigrate");
    let last = last_round(source);
    guest_goes_on(vmm, &mut destination, last);
}

fn auto_converge(vmm: Vmm) {
    let _serial = one_at_a_time();
    let mut source = vmm.source(DIRTYING);
    let mut s = source.client();
    capabilities(&mut s, &[], &["auto-converge"]);
    s.ok(
        "migrate-set-parameters",
        json!({"max-bandwidth": MAX_BANDWIDTH, "downtime-limit": DOWNTIME_LIMIT_MS}),
    );
    plain_precopy_does_not_end(vmm, &mut source, &mut s);
    auto_converge_ends_it(vmm, &mut source, &mut s);
}

#[test]
fn auto_converge_moves_a_guest_plain_precopy_cannot() {
    auto_converge(Vmm::Flotilla);
}

#[test]
fn qemu_too_converges_with_auto_converge_only() {
    auto_converge(Vmm::Qemu);
}

/// xbzrle over the same link: the pages the guest rewrites go as deltas from what the
/// destination holds, and the migration completes with every page intact there.
fn xbzrle(vmm: Vmm) {
    let _serial = one_at_a_time();
    let mut source = vmm.source(DELTAS);
    let mut s = source.client();
    capabilities(&mut s, &["xbzrle"], &[]);
    s.ok(
        "migrate-set-parameters",
        json!({"max-bandwidth": MAX_BANDWIDTH, "xbzrle-cache-size": 128 * MIB}),
    );
    let mut destination = start_migration(vmm, DELTAS, &mut s);
    let info = wait_migration(&mut s, &["completed", "failed", "cancelled"]);
    eprintln!("{vmm:?} with xbzrle: {info}");
    assert_eq!(
        info["status"],
        "completed",
        "{vmm:?}: {info}\n{}",
        source.vm().transcript()
    );
    let cache = &info["xbzrle-cache"];
    assert_eq!(cache["cache-size"], 128 * MIB, "{info}");
    let (pages, bytes) = (
        cache["pages"].as_u64().unwrap_or_default(),
        cache["bytes"].as_u64().unwrap_or_default(),
    );
    // Every page of the working set came back to the cache at least once (it was
    // rewritten while the migration sent the rest), and its hits cost less than a
    // quarter of their pages: deltas of the 64 words in 512 the guest rewrites.
    assert!(pages >= 64 * MIB / PAGE, "{vmm:?}: {info}");
    assert!(bytes < pages * PAGE / 4, "{vmm:?}: {info}");
    wait_for_status(&mut s, "postmigrate");
    let last = last_round(&mut source);
    guest_goes_on(vmm, &mut destination, last);
}

#[test]
fn xbzrle_sends_deltas_and_the_guest_finds_its_pages_intact() {
    xbzrle(Vmm::Flotilla);
}

#[test]
fn qemu_sends_deltas_of_the_same_guest() {
    xbzrle(Vmm::Qemu);
}
