//! Live migration's failure paths (issue 15): a migration cancelled in each phase, a
//! destination killed or cut off mid-way, bad URIs, incompatible destinations, commands
//! refused while a migration runs or waits, and a malformed stream at a destination. Each
//! leaves the source running its guest (with its disk and NIC), no migration agent
//! behind, and the destination gone; QEMU 7.2 is the reference for the errors.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flotilla_tests::migration::{events_on, expect_mig, free_port, wait_for_status, IoSetup};
use flotilla_tests::procs::{descendants, ProcId};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{bin, test_guest, TempDir, Vm};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(20);
/// Between two progress lines of the migrate-dirty scenario.
const PROGRESS: Duration = Duration::from_secs(15);
/// A migration's end (and a cancel's) after what makes it end.
const ENDING: Duration = Duration::from_secs(60);
/// A cancel ends the migration at once: well within the 20 s the source's agent would
/// wait for an answer that is held back.
const CANCEL: Duration = Duration::from_secs(10);
const DIRTY: &str = "scenario=migrate-dirty dirty-mib=32 mig-blk=1 mig-net=1";
/// Slow enough that 32 MiB rewritten all the time never converges: precopy goes on.
const SLOW: u64 = 4 << 20;
/// QEMU's default max-bandwidth and downtime-limit.
const DEFAULT_BANDWIDTH: u64 = 128 << 20;
const DEFAULT_DOWNTIME: u64 = 300;

/// A destination gateway for the test guest waiting for its migration on `incoming`.
fn destination(memory: u64, cpus: usize, cmdline: &str, incoming: &str, extra: &[&str]) -> Gateway {
    let dir = TempDir::new("destination");
    let qmp = dir.path().join("qmp.sock");
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(test_guest())
        .args(["--memory", &memory.to_string(), "--cpus", &cpus.to_string()])
        .args(["--cmdline", cmdline])
        .arg("--qmp")
        .arg(&qmp)
        .args(["--incoming", incoming])
        .args(extra);
    Gateway::spawn(cmd, dir, qmp)
}

/// The migrate-dirty guest with a disk and a NIC, running (its first round, block and
/// network lines seen), and the options a destination for it needs.
struct Source {
    gw: Gateway,
    io: IoSetup,
}

impl Source {
    fn start() -> Source {
        let io = IoSetup::new("migration-source");
        let mut gw = Gateway::start_with(2, DIRTY, &io.args());
        expect_mig(&mut gw.vm, "GUEST MIG ready", BOOT);
        for what in ["round", "blk", "net"] {
            expect_mig(&mut gw.vm, &format!("GUEST MIG {what} "), PROGRESS);
        }
        Source { gw, io }
    }

    fn opts(&self) -> Vec<&str> {
        self.io.args()
    }

    /// A compatible destination on `incoming`.
    fn destination(&self, incoming: &str) -> Gateway {
        destination(128, 2, DIRTY, incoming, &self.opts())
    }

    /// The guest goes on: new round, block and network lines after those printed so
    /// far, and no error line (expect_mig fails on one).
    fn expect_guest_goes_on(&mut self) {
        expect_progress(&mut self.gw.vm);
    }
}

/// The highest N of the `GUEST MIG <what> N ok` lines printed so far.
fn last_count(transcript: &str, what: &str) -> u64 {
    let prefix = format!("GUEST MIG {what} ");
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.split(' ').next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// New round, block and network lines on `vm` after those it printed so far.
fn expect_progress(vm: &mut Vm) {
    let transcript = vm.transcript();
    for what in ["round", "blk", "net"] {
        let before = last_count(&transcript, what);
        let prefix = format!("GUEST MIG {what} ");
        let deadline = Instant::now() + PROGRESS;
        loop {
            let line = expect_mig(
                vm,
                &prefix,
                deadline.saturating_duration_since(Instant::now()),
            );
            if last_count(&line, what) > before {
                break;
            }
        }
    }
    assert!(
        !vm.transcript().contains("GUEST ERROR"),
        "{}",
        vm.transcript()
    );
}

fn run_state(c: &mut QmpClient) -> String {
    c.ok("query-status", json!({}))["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The statuses of the MIGRATION events until (and with) one in `last`.
fn statuses_until(c: &mut QmpClient, last: &[&str], timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(e) = c.event_within("MIGRATION", left) else {
            panic!("no MIGRATION event in {last:?} within {timeout:?}; seen {seen:?}");
        };
        let status = e["data"]["status"].as_str().unwrap_or_default().to_string();
        seen.push(status.clone());
        if last.contains(&status.as_str()) {
            return seen;
        }
    }
}

/// query-migrate until `done` holds for it (within `timeout`); returns that answer.
fn wait_query(c: &mut QmpClient, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let info = c.ok("query-migrate", json!({}));
        if done(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "after {timeout:?}: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ended(info: &Value) -> bool {
    matches!(
        info["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// The migration agents among `pid`'s descendants.
fn agents(pid: i32) -> Vec<ProcId> {
    descendants(pid)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                .is_ok_and(|c| c.trim() == "migration-agent")
        })
        .collect()
}

/// The runtime directories of the gateway with `pid` (its vhost-user sockets).
fn runtime_dirs(pid: i32) -> Vec<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    std::fs::read_dir(base)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("flotilla-{pid}-"))
        })
        .map(|e| e.path())
        .collect()
}

/// A destination's processes, recorded while it waits, to check they end with it.
struct Watched {
    pid: i32,
    vmm: i32,
    procs: Vec<ProcId>,
}

impl Watched {
    fn of(gw: &Gateway) -> Watched {
        let procs = descendants(gw.vm.pid());
        assert!(
            procs.len() >= 2,
            "a destination runs vmm-core and a migration agent at least: {procs:?}"
        );
        assert_eq!(
            runtime_dirs(gw.vm.pid()).len(),
            2,
            "the block and net layers'"
        );
        Watched {
            pid: gw.vm.pid(),
            vmm: gw.vmm_pid(),
            procs,
        }
    }

    /// The gateway exits with failure, saying `why` (in its last words), and leaves no
    /// process, QMP socket or runtime directory.
    fn expect_failed_exit(&self, gw: &mut Gateway, why: &str) {
        gw.expect_clean_exit(self.vmm, false);
        let transcript = gw.vm.transcript();
        assert!(
            transcript.contains(why),
            "the destination did not say {why:?}:\n{transcript}"
        );
        assert!(!transcript.contains("panicked"), "{transcript}");
        let left: Vec<_> = self.procs.iter().filter(|p| p.exists()).collect();
        assert!(left.is_empty(), "left behind by the destination: {left:?}");
        assert_eq!(runtime_dirs(self.pid), Vec::<PathBuf>::new());
    }
}

/// The source's migration agent, while it migrates.
fn the_agent(src: &Gateway) -> ProcId {
    let found = agents(src.vm.pid());
    assert_eq!(found.len(), 1, "one migration agent: {found:?}");
    found[0]
}

/// After a migration that failed or was cancelled: the source runs, its agent is gone.
fn expect_source_stays(src: &mut Source, s: &mut QmpClient, agent: ProcId) {
    assert_eq!(run_state(s), "running");
    assert!(
        !agent.exists(),
        "the migration agent {agent} is still there"
    );
    assert_eq!(agents(src.gw.vm.pid()), Vec::new());
    src.expect_guest_goes_on();
}

/// The source can still migrate: to a new destination, where its guest goes on.
fn expect_migratable(src: &mut Source, s: &mut QmpClient) {
    s.ok(
        "migrate-set-parameters",
        json!({"max-bandwidth": DEFAULT_BANDWIDTH, "downtime-limit": DEFAULT_DOWNTIME}),
    );
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let mut dst = src.destination(&uri);
    let mut d = dst.client();
    s.ok("migrate", json!({"uri": uri}));
    let info = wait_query(s, ENDING, ended);
    assert_eq!(info["status"], "completed", "{info}");
    assert_eq!(run_state(s), "postmigrate");
    wait_for_status(&mut d, "running");
    expect_progress(&mut dst.vm);
    // The guest left: nothing to migrate any more.
    assert_eq!(
        s.err("migrate", json!({"uri": uri})),
        (
            "GenericError".to_string(),
            "Can't migrate the vm that was paused due to previous migration".to_string()
        )
    );
}

/// A TCP relay between a source and a destination's listener, for what a plain
/// connection cannot do on demand: hold the destination's answers back (all of them, or
/// all after the first N bytes) until released, pace what the source sends, stop taking
/// it (a network gone silent), or be cut (reset both ways).
struct Relay {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Nothing more is taken from the source.
    frozen: AtomicBool,
    /// Bytes passed from the source to the destination.
    forwarded: Mutex<u64>,
    released: Mutex<bool>,
    changed: Condvar,
    sockets: Mutex<Vec<TcpStream>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Clone, Copy, Default)]
struct RelayOptions {
    /// Bytes per second from the source (None: as fast as it goes).
    rate: Option<u64>,
    /// Answer bytes passed before the rest is held (None: nothing is held).
    answers_before_hold: Option<u64>,
}

impl Relay {
    fn start(to: u16, options: RelayOptions) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                // Polled so that a relay nobody connected to can be dropped.
                let source = loop {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                };
                source.set_nonblocking(false).unwrap();
                let dest = TcpStream::connect(("127.0.0.1", to)).unwrap();
                let clone = |s: &TcpStream| s.try_clone().unwrap();
                shared
                    .sockets
                    .lock()
                    .unwrap()
                    .extend([clone(&source), clone(&dest)]);
                let forward = {
                    let (from, to, shared) = (clone(&source), clone(&dest), shared.clone());
                    std::thread::spawn(move || pump_forward(from, to, options.rate, &shared))
                };
                let back = {
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        pump_back(dest, source, options.answers_before_hold, &shared)
                    })
                };
                shared.pumps.lock().unwrap().extend([forward, back]);
            })
        };
        Relay {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    fn uri(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.port)
    }

    /// Waits until at least `bytes` went from the source to the destination.
    fn wait_forwarded(&self, bytes: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut n = self.shared.forwarded.lock().unwrap();
        while *n < bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {} bytes relayed in {timeout:?}", *n);
            n = self.shared.changed.wait_timeout(n, left).unwrap().0;
        }
    }

    /// Lets the held answers through.
    fn release(&self) {
        *self.shared.released.lock().unwrap() = true;
        self.shared.changed.notify_all();
    }

    /// Takes nothing more from the source, and closes nothing: its writes stall.
    fn freeze(&self) {
        self.shared.frozen.store(true, Ordering::SeqCst);
    }

    /// Cuts both connections: each side gets a reset.
    fn cut(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let abort = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        for s in self.shared.sockets.lock().unwrap().drain(..) {
            // Closed with no linger: a reset (and no end of stream before it), once the
            // pumps, woken, let go of it too.
            let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &abort);
            let _ = s.shutdown(Shutdown::Read);
        }
        self.release();
    }
}

fn pump_forward(mut from: TcpStream, mut to: TcpStream, rate: Option<u64>, shared: &Shared) {
    let mut buf = vec![0u8; 64 << 10];
    let (start, mut total) = (Instant::now(), 0u64);
    loop {
        // Frozen: polled, as nothing else is to happen until the relay is cut.
        while shared.frozen.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.stop.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
        *shared.forwarded.lock().unwrap() = total;
        shared.changed.notify_all();
        if let Some(rate) = rate {
            // Pacing, not synchronisation: the relay is a slow network.
            let due = Duration::from_secs_f64(total as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    if !shared.stop.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}

fn pump_back(mut from: TcpStream, mut to: TcpStream, before_hold: Option<u64>, shared: &Shared) {
    let mut buf = vec![0u8; 4096];
    let mut free = before_hold.unwrap_or(u64::MAX);
    loop {
        if free == 0 {
            let mut released = shared.released.lock().unwrap();
            while !*released {
                released = shared.changed.wait(released).unwrap();
            }
            free = u64::MAX;
        }
        let max = buf.len().min(usize::try_from(free).unwrap_or(usize::MAX));
        let n = match from.read(&mut buf[..max]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.stop.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
        free = free.saturating_sub(n as u64);
    }
    if !shared.stop.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Write);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for p in self.shared.pumps.lock().unwrap().drain(..) {
            let _ = p.join();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Setup,
    Active,
    Device,
}

/// migrate_cancel while the migration is in `phase`: cancelled (query-migrate and the
/// MIGRATION events), the source runs its guest on with its disk and NIC, its agent is
/// gone, the destination exits with failure and leaves nothing; and the source can
/// migrate again.
fn cancel_in(phase: Phase) {
    let mut src = Source::start();
    let mut s = src.gw.client();
    events_on(&mut s);
    let port = free_port();
    let mut dst = src.destination(&format!("tcp:127.0.0.1:{port}"));
    let mut d = dst.client();
    let watched = Watched::of(&dst);
    let relay = match phase {
        // The source waits in setup for the destination's verdict on its header.
        Phase::Setup => Some(Relay::start(
            port,
            RelayOptions {
                answers_before_hold: Some(0),
                ..RelayOptions::default()
            },
        )),
        // Never converges: precopy goes on.
        Phase::Active => {
            s.ok("migrate-set-parameters", json!({"max-bandwidth": SLOW}));
            None
        }
        // Converges after the first pass (a long downtime is allowed), whose stopped
        // copy then takes seconds over a slow network.
        Phase::Device => {
            s.ok("migrate-set-parameters", json!({"downtime-limit": 20_000}));
            Some(Relay::start(
                port,
                RelayOptions {
                    rate: Some(16 << 20),
                    ..RelayOptions::default()
                },
            ))
        }
    };
    let uri = relay
        .as_ref()
        .map_or(format!("tcp:127.0.0.1:{port}"), Relay::uri);
    s.ok("migrate", json!({"uri": uri}));
    let name = match phase {
        Phase::Setup => "setup",
        Phase::Active => "active",
        Phase::Device => "device",
    };
    let mut seen = statuses_until(&mut s, &[name, "failed", "completed"], ENDING);
    assert_eq!(seen.last().map(String::as_str), Some(name), "{seen:?}");
    match phase {
        Phase::Setup => {
            // The destination took the header (its verdict is held): the source is
            // still in setup.
            wait_query(&mut d, ENDING, |i| i["status"] == "active");
            assert_eq!(s.ok("query-migrate", json!({}))["status"], "setup");
        }
        Phase::Active => {
            wait_query(&mut s, ENDING, |i| {
                i["ram"]["transferred"].as_u64() > Some(1 << 20)
            });
        }
        Phase::Device => assert_eq!(run_state(&mut s), "finish-migrate"),
    }
    let agent = the_agent(&src.gw);
    s.ok("migrate_cancel", json!({}));
    seen.extend(statuses_until(
        &mut s,
        &["cancelled", "failed", "completed"],
        CANCEL,
    ));
    let expected: &[&str] = match phase {
        Phase::Setup => &["setup", "cancelling", "cancelled"],
        Phase::Active => &["setup", "active", "cancelling", "cancelled"],
        Phase::Device => &["setup", "active", "device", "cancelling", "cancelled"],
    };
    assert_eq!(seen, expected);
    // QEMU's answer for a cancelled migration: the status alone.
    assert_eq!(
        s.ok("query-migrate", json!({})),
        json!({"status": "cancelled"})
    );
    expect_source_stays(&mut src, &mut s, agent);
    watched.expect_failed_exit(&mut dst, "load of migration failed");
    drop(relay);
    expect_migratable(&mut src, &mut s);
}

#[test]
fn a_cancel_in_setup_leaves_the_source_running() {
    cancel_in(Phase::Setup);
}

#[test]
fn a_cancel_during_precopy_leaves_the_source_running() {
    cancel_in(Phase::Active);
}

#[test]
fn a_cancel_during_the_stopped_copy_resumes_the_source() {
    cancel_in(Phase::Device);
}

/// A migration (MIGRATION events on) whose destination runs the VM while the source
/// has not heard so: the relay passed the verdict (one byte) and holds the outcome.
fn running_there_unheard() -> (Source, QmpClient, Gateway, QmpClient, Relay) {
    let src = Source::start();
    let mut s = src.gw.client();
    events_on(&mut s);
    let port = free_port();
    let dst = src.destination(&format!("tcp:127.0.0.1:{port}"));
    let mut d = dst.client();
    let relay = Relay::start(
        port,
        RelayOptions {
            answers_before_hold: Some(1),
            ..RelayOptions::default()
        },
    );
    s.ok("migrate", json!({"uri": relay.uri()}));
    wait_for_status(&mut d, "running");
    (src, s, dst, d, relay)
}

/// Once the device state went to the destination, the VM may already run there: a
/// cancel then is too late (as once a migration completed), and the migration completes
/// when the destination's answer comes; the guest never runs in both places.
#[test]
fn a_cancel_after_the_state_went_is_too_late() {
    let (_src, mut s, mut dst, mut d, relay) = running_there_unheard();
    assert_eq!(s.ok("query-migrate", json!({}))["status"], "device");
    s.ok("migrate_cancel", json!({}));
    assert_eq!(s.ok("query-migrate", json!({}))["status"], "device");
    assert_eq!(run_state(&mut s), "finish-migrate");
    relay.release();
    let seen = statuses_until(&mut s, &["cancelled", "failed", "completed"], ENDING);
    assert_eq!(seen, ["setup", "active", "device", "completed"]);
    assert_eq!(run_state(&mut s), "postmigrate");
    expect_progress(&mut dst.vm);
    assert_eq!(run_state(&mut d), "running");
}

/// The destination runs the VM but the source never hears so (the connection is cut
/// while its answer is held): the source's migration fails, and since the destination
/// holds the disks, the source must not run the guest too: it stays paused, saying why.
#[test]
fn a_source_that_cannot_take_its_disks_back_stays_paused() {
    let (_src, mut s, mut dst, mut d, relay) = running_there_unheard();
    relay.cut();
    let info = wait_query(&mut s, ENDING, ended);
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap_or_default();
    assert!(
        why.ends_with("the VM stays paused here: its disks could not be taken back"),
        "{info}"
    );
    assert_eq!(run_state(&mut s), "paused");
    // The guest goes on at the destination only.
    expect_progress(&mut dst.vm);
    assert_eq!(run_state(&mut d), "running");
}

/// kill -9 of the destination gateway during precopy: the source's migration fails
/// saying why, the source runs on, its agent is gone; the destination's children end.
#[test]
fn a_killed_destination_fails_the_migration() {
    let mut src = Source::start();
    let mut s = src.gw.client();
    events_on(&mut s);
    s.ok("migrate-set-parameters", json!({"max-bandwidth": SLOW}));
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let mut dst = src.destination(&uri);
    let _d = dst.client();
    let children = descendants(dst.vm.pid());
    s.ok("migrate", json!({"uri": uri}));
    wait_query(&mut s, ENDING, |i| {
        i["status"] == "active" && i["ram"]["transferred"].as_u64() > Some(1 << 20)
    });
    let agent = the_agent(&src.gw);
    dst.vm.signal(nix::sys::signal::Signal::SIGKILL);
    dst.vm.wait(BOOT);
    let info = wait_query(&mut s, ENDING, ended);
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap_or_default();
    assert!(
        why == "Unable to write to socket: Broken pipe"
            || why == "Unable to write to socket: Connection reset by peer",
        "{info}"
    );
    let seen = statuses_until(&mut s, &["failed"], ENDING);
    assert_eq!(seen, ["setup", "active", "failed"]);
    expect_source_stays(&mut src, &mut s, agent);
    // Its children die with it (PR_SET_PDEATHSIG): none runs on, a zombie at most.
    let deadline = Instant::now() + BOOT;
    loop {
        let running: Vec<_> = children.iter().filter(|p| alive(p)).collect();
        if running.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still running: {running:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `p` exists and is not a zombie.
fn alive(p: &ProcId) -> bool {
    p.exists()
        && std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
            .ok()
            .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
            == Some(false)
}

/// A migration under way through a slow relay (a MiB through already): the source and
/// its client (MIGRATION events on), the destination, the relay and the source's agent.
struct Relayed {
    src: Source,
    s: QmpClient,
    dst: Gateway,
    /// A client of the destination's, kept as the tests keep theirs.
    d: QmpClient,
    watched: Watched,
    relay: Relay,
    agent: ProcId,
}

fn relayed_midway() -> Relayed {
    let src = Source::start();
    let mut s = src.gw.client();
    events_on(&mut s);
    let port = free_port();
    let dst = src.destination(&format!("tcp:127.0.0.1:{port}"));
    let d = dst.client();
    let watched = Watched::of(&dst);
    let relay = Relay::start(
        port,
        RelayOptions {
            rate: Some(SLOW),
            ..RelayOptions::default()
        },
    );
    s.ok("migrate", json!({"uri": relay.uri()}));
    relay.wait_forwarded(1 << 20, ENDING);
    let agent = the_agent(&src.gw);
    Relayed {
        src,
        s,
        dst,
        d,
        watched,
        relay,
        agent,
    }
}

/// A lost connection mid-way is a failed migration on both sides: the source runs on
/// and can migrate again, the destination ends.
#[test]
fn a_lost_connection_fails_the_migration_on_both_sides() {
    let Relayed {
        mut src,
        mut s,
        mut dst,
        d: _d,
        watched,
        relay,
        agent,
    } = relayed_midway();
    relay.cut();
    let info = wait_query(&mut s, ENDING, ended);
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap_or_default();
    assert!(
        why == "Unable to write to socket: Connection reset by peer"
            || why == "Unable to write to socket: Broken pipe",
        "{info}"
    );
    assert_eq!(
        statuses_until(&mut s, &["failed"], ENDING),
        ["setup", "active", "failed"]
    );
    expect_source_stays(&mut src, &mut s, agent);
    watched.expect_failed_exit(
        &mut dst,
        "load of migration failed: the migration connection: Connection reset by peer",
    );
    drop(relay);
    expect_migratable(&mut src, &mut s);
}

/// A connection that goes silent (the destination takes nothing more, nothing resets
/// it) is lost too: the migration fails once it took nothing for 20 s, the source runs
/// on, and its agent is gone.
#[test]
fn a_silent_connection_fails_the_migration() {
    let Relayed {
        mut src,
        mut s,
        mut dst,
        d: _d,
        watched,
        relay,
        agent,
    } = relayed_midway();
    relay.freeze();
    let info = wait_query(&mut s, ENDING, ended);
    assert_eq!(
        info,
        json!({
            "status": "failed",
            "error-desc": "Unable to write to socket: the destination took nothing for 20 s",
        })
    );
    expect_source_stays(&mut src, &mut s, agent);
    // The destination still waits; a reset ends it.
    relay.cut();
    watched.expect_failed_exit(&mut dst, "load of migration failed");
}

/// Destinations that cannot take this VM (less memory, another vCPU count, a disk
/// fewer) refuse it: the source's migration fails naming the difference and it runs on;
/// each destination ends.
#[test]
fn an_incompatible_destination_is_refused() {
    let mut src = Source::start();
    let mut s = src.gw.client();
    events_on(&mut s);
    let opts = src.opts();
    // Without the disk: only the netdev and the NIC.
    let no_disk: Vec<&str> = opts[2..].to_vec();
    let cases: [(u64, usize, &[&str], &str); 3] = [
        (
            64,
            2,
            &opts,
            "the source has 128 MiB of memory, this VM 64 MiB",
        ),
        (128, 1, &opts, "the source has 2 vCPUs, this VM 1"),
        (128, 2, &no_disk, "the source has 1 disk, this VM 0"),
    ];
    for (memory, cpus, extra, why) in cases {
        let uri = format!("tcp:127.0.0.1:{}", free_port());
        let mut dst = destination(memory, cpus, DIRTY, &uri, extra);
        let _d = dst.client();
        let watched = Watched::of(&dst);
        s.ok("migrate", json!({"uri": uri}));
        let info = wait_query(&mut s, ENDING, ended);
        assert_eq!(
            info,
            json!({
                "status": "failed",
                "error-desc": format!("the destination refused the migration: {why}"),
            })
        );
        assert_eq!(
            statuses_until(&mut s, &["failed"], ENDING),
            ["setup", "failed"]
        );
        assert_eq!(run_state(&mut s), "running");
        assert_eq!(agents(src.gw.vm.pid()), Vec::new());
        watched.expect_failed_exit(
            &mut dst,
            &format!("load of migration failed: the source is not compatible: {why}"),
        );
    }
    src.expect_guest_goes_on();
}

/// A peer that is not a Flotilla source: the destination fails with a clear message,
/// exits and leaves nothing (its unix: listener's socket neither), without a panic.
#[test]
fn a_malformed_stream_ends_the_destination_cleanly() {
    // The header of a 128 MiB, 2-vCPU VM without devices or DIMMs
    // (docs/migration-stream.md, version 2).
    let mut header = b"FLOTMIG\n".to_vec();
    header.extend_from_slice(&2u32.to_le_bytes());
    header.extend_from_slice(&(128u64 << 20).to_le_bytes());
    header.extend_from_slice(&2u32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    // A PAGES record far outside guest RAM; a STATE record longer than allowed.
    let mut outside = header.clone();
    outside.push(1);
    outside.extend_from_slice(&(1u64 << 40).to_le_bytes());
    outside.extend_from_slice(&1u32.to_le_bytes());
    outside.extend_from_slice(&[0xa5; 4096]);
    let mut huge_state = header.clone();
    huge_state.extend_from_slice(&[5, 1]);
    huge_state.extend_from_slice(&u32::MAX.to_le_bytes());
    // A STATE record whose bytes are not a migrated state (then END).
    let mut bad_state = header.clone();
    bad_state.extend_from_slice(&[5, 1]);
    bad_state.extend_from_slice(&4u32.to_le_bytes());
    bad_state.extend_from_slice(&[9, 9, 9, 9, 6]);
    let cases: [(&str, Vec<u8>, bool, &str); 5] = [
        (
            "garbage",
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            true,
            "not a Flotilla migration stream",
        ),
        (
            "a truncated header",
            header[..16].to_vec(),
            false,
            "the migration connection closed before the end of the stream",
        ),
        (
            "pages outside RAM",
            outside,
            false,
            "malformed migration stream: pages 0x10000000000+1 are not guest RAM here",
        ),
        (
            "a huge device state",
            huge_state,
            false,
            "malformed migration stream: device state of 4294967295 bytes",
        ),
        (
            "a device state that is not one",
            bad_state,
            false,
            "the migrated state is malformed: version 9, this destination reads 2",
        ),
    ];
    for (what, bytes, unix, why) in cases {
        let dir = TempDir::new("malformed");
        let path = dir.path().join("migration.sock");
        let port = free_port();
        let incoming = match unix {
            true => format!("unix:{}", path.display()),
            false => format!("tcp:127.0.0.1:{port}"),
        };
        let mut dst = destination(128, 2, "", &incoming, &[]);
        let _d = dst.client();
        let watched = Watched::of(&dst);
        let mut peer: Box<dyn ReadWrite> = match unix {
            true => {
                let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
                s.set_read_timeout(Some(ENDING)).unwrap();
                Box::new(s)
            }
            false => {
                let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_read_timeout(Some(ENDING)).unwrap();
                Box::new(s)
            }
        };
        // The peer reads what the destination answers until it hangs up, so that no
        // reset of ours takes the bytes sent before it.
        let _ = peer.write_all(&bytes);
        let _ = peer.read_to_end(&mut Vec::new());
        drop(peer);
        watched.expect_failed_exit(&mut dst, &format!("load of migration failed: {why}"));
        assert!(
            !path.exists(),
            "{what}: the migration socket {} was left behind",
            path.display()
        );
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One exchange on QEMU and on the gateway; their replies should be the same.
fn compare(
    label: &str,
    q: &mut QmpClient,
    g: &mut QmpClient,
    command: &str,
    arguments: Value,
    mismatches: &mut Vec<String>,
) -> Value {
    let qr = q.execute(command, arguments.clone());
    let gr = g.execute(command, arguments.clone());
    if qr != gr {
        mismatches.push(format!(
            "{label}: {command} {arguments}\n  QEMU: {qr}\n  ours: {gr}"
        ));
    }
    gr
}

/// The failed migration's query-migrate, events included, on both (after `migrate`).
fn compare_failure(
    label: &str,
    q: &mut QmpClient,
    g: &mut QmpClient,
    mismatches: &mut Vec<String>,
) {
    let qi = wait_query(q, ENDING, ended);
    let gi = wait_query(g, ENDING, ended);
    let qe = statuses_until(q, &["failed", "completed", "cancelled"], ENDING);
    let ge = statuses_until(g, &["failed", "completed", "cancelled"], ENDING);
    if (&qi, &qe) != (&gi, &ge) {
        mismatches.push(format!(
            "{label}: query-migrate and events\n  QEMU: {qi} {qe:?}\n  ours: {gi} {ge:?}"
        ));
    }
    let (qt, gt) = (info_migrate(q), info_migrate(g));
    if without_globals(&qt) != gt {
        mismatches.push(format!(
            "{label}: HMP info migrate\n  QEMU: {qt:?}\n  ours: {gt:?}"
        ));
    }
}

fn info_migrate(c: &mut QmpClient) -> String {
    let text = c.ok(
        "human-monitor-command",
        json!({"command-line": "info migrate"}),
    );
    text.as_str().expect("HMP answers text").to_string()
}

/// QEMU's `info migrate` without its "globals:" block (its migration object's -global
/// properties, which the gateway does not have: it prints the rest).
fn without_globals(text: &str) -> String {
    let lines: Vec<&str> = text.split_inclusive("\r\n").collect();
    assert_eq!(lines.first(), Some(&"globals:\r\n"), "{text:?}");
    let globals = lines[1..]
        .iter()
        .take_while(|l| !l.starts_with("Migration status:") && !l.starts_with("Outgoing"))
        .count();
    lines[1 + globals..].concat()
}

/// What QEMU 7.2 and the gateway answer on a source: bad URIs, and the commands refused
/// while a migration runs; cancelled, both run on.
#[test]
fn a_source_refuses_what_qemu_refuses() {
    let mut qemu = Qemu::guest("scenario=migrate-dirty dirty-mib=32", &[]);
    let mut q = qemu.client();
    q.ok("cont", json!({}));
    expect_mig(&mut qemu.vm, "GUEST MIG ready", BOOT);
    let mut src = Gateway::start_with(1, "scenario=migrate-dirty dirty-mib=32", &[]);
    expect_mig(&mut src.vm, "GUEST MIG ready", BOOT);
    let mut g = src.client();
    let mut mismatches = Vec::new();
    for c in [&mut q, &mut g] {
        events_on(c);
        c.ok("migrate-set-parameters", json!({"max-bandwidth": 1 << 20}));
    }
    // Refused at once: the migration failed (with the reason, for some) all the same.
    for uri in [
        "bogus:1",
        "",
        "tcp:nohost",
        "tcp:",
        "unix:",
        "fd:",
        "fd:nosuch",
    ] {
        let r = compare(
            uri,
            &mut q,
            &mut g,
            "migrate",
            json!({"uri": uri}),
            &mut mismatches,
        );
        assert!(r.get("error").is_some(), "{uri}: {r}");
        compare_failure(uri, &mut q, &mut g, &mut mismatches);
    }
    // Taken, and failing on the migration's thread.
    for uri in ["tcp:127.0.0.1:1", "unix:/nonexistent", "tcp::5"] {
        let r = compare(
            uri,
            &mut q,
            &mut g,
            "migrate",
            json!({"uri": uri}),
            &mut mismatches,
        );
        assert_eq!(r, json!({"return": {}}), "{uri}");
        compare_failure(uri, &mut q, &mut g, &mut mismatches);
    }
    // Each of those started its agent while it connected (spawned ahead): none is left.
    let deadline = Instant::now() + ENDING;
    while !agents(src.vm.pid()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<String> = agents(src.vm.pid())
        .iter()
        .map(|a| std::fs::read_to_string(format!("/proc/{}/status", a.pid)).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "agents left behind:\n{}", left.join("\n"));
    // An empty command: both fail writing to it (QEMU says "command" where we say
    // "the migration connection").
    for c in [&mut q, &mut g] {
        c.ok("migrate", json!({"uri": "exec:"}));
        let info = wait_query(c, ENDING, ended);
        assert_eq!(info["status"], "failed", "{info}");
        assert!(
            info["error-desc"]
                .as_str()
                .is_some_and(|d| d.ends_with("Broken pipe")),
            "{info}"
        );
        statuses_until(c, &["failed"], ENDING);
    }

    // While a migration runs (to a listener that never reads, for QEMU; to a real
    // destination, slowly, for us).
    let blackhole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = blackhole.local_addr().unwrap().port();
    let dst_uri = format!("tcp:127.0.0.1:{}", free_port());
    let mut dst = destination(128, 1, "", &dst_uri, &[]);
    let _d = dst.client();
    let watched = Watched::of(&dst);
    q.ok("migrate", json!({"uri": format!("tcp:127.0.0.1:{hole}")}));
    g.ok("migrate", json!({"uri": dst_uri}));
    for c in [&mut q, &mut g] {
        assert_eq!(
            statuses_until(c, &["active", "failed", "completed"], ENDING),
            ["setup", "active"]
        );
    }
    let running: &[(&str, &str, Value)] = &[
        ("again", "migrate", json!({"uri": "tcp:127.0.0.1:1"})),
        ("bad URI", "migrate", json!({"uri": "bogus:1"})),
        (
            "blk",
            "migrate",
            json!({"uri": "tcp:127.0.0.1:1", "blk": true}),
        ),
        (
            "capability",
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "events", "state": false}]}),
        ),
        (
            "no capability",
            "migrate-set-capabilities",
            json!({"capabilities": []}),
        ),
        (
            "parameter",
            "migrate-set-parameters",
            json!({"max-bandwidth": 2 << 20}),
        ),
        (
            "incoming",
            "migrate-incoming",
            json!({"uri": "tcp:127.0.0.1:0"}),
        ),
        ("postcopy", "migrate-start-postcopy", json!({})),
    ];
    for (label, command, arguments) in running {
        compare(
            label,
            &mut q,
            &mut g,
            command,
            arguments.clone(),
            &mut mismatches,
        );
    }
    compare(
        "cancel",
        &mut q,
        &mut g,
        "migrate_cancel",
        json!({}),
        &mut mismatches,
    );
    for c in [&mut q, &mut g] {
        assert_eq!(
            statuses_until(c, &["cancelled", "failed", "completed"], CANCEL),
            ["cancelling", "cancelled"]
        );
    }
    for (label, command) in [
        ("cancelled", "query-migrate"),
        ("cancelled", "query-status"),
        ("cancelled again", "migrate_cancel"),
    ] {
        compare(label, &mut q, &mut g, command, json!({}), &mut mismatches);
    }
    compare(
        "after",
        &mut q,
        &mut g,
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
        &mut mismatches,
    );
    drop(blackhole);
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    expect_mig(&mut src.vm, "GUEST MIG round", PROGRESS);
    watched.expect_failed_exit(&mut dst, "load of migration failed");
}

/// What QEMU 7.2 and the gateway answer on a destination (started with `-incoming
/// defer`): migrate refused, migrate-incoming's bad URIs, migrate-incoming twice,
/// migrate_cancel not touching an incoming migration; and migrate-incoming once the
/// migration came, or on a VM started without -incoming.
#[test]
fn a_destination_refuses_what_qemu_refuses() {
    let qemu = Qemu::try_start(&["-incoming", "defer"]).expect("QEMU -incoming defer");
    let mut q = qemu.client();
    let dst = destination(128, 1, "", "defer", &[]);
    let mut g = dst.client();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().map(|a| (busy, a.port())).unwrap();
    let mut mismatches = Vec::new();
    let refused: Vec<(&str, &str, Value)> = vec![
        ("migrate", "migrate", json!({"uri": "tcp:127.0.0.1:1"})),
        ("bogus", "migrate-incoming", json!({"uri": "bogus:1"})),
        ("empty", "migrate-incoming", json!({"uri": ""})),
        ("no host", "migrate-incoming", json!({"uri": "tcp:nohost"})),
        ("unix", "migrate-incoming", json!({"uri": "unix:"})),
        (
            "no dir",
            "migrate-incoming",
            json!({"uri": "unix:/nonexistent/m.sock"}),
        ),
        (
            "busy port",
            "migrate-incoming",
            json!({"uri": format!("tcp:127.0.0.1:{}", busy.1)}),
        ),
        ("no fd", "migrate-incoming", json!({"uri": "fd:nosuch"})),
    ];
    for (label, command, arguments) in &refused {
        let r = compare(
            label,
            &mut q,
            &mut g,
            command,
            arguments.clone(),
            &mut mismatches,
        );
        assert!(r.get("error").is_some(), "{label}: {r}");
    }
    for (label, command) in [
        ("waiting", "query-migrate"),
        ("waiting", "migrate_cancel"),
        ("waiting", "query-status"),
    ] {
        compare(label, &mut q, &mut g, command, json!({}), &mut mismatches);
    }
    let (qport, gport) = (free_port(), free_port());
    for (c, port) in [(&mut q, qport), (&mut g, gport)] {
        c.ok(
            "migrate-incoming",
            json!({"uri": format!("tcp:127.0.0.1:{port}")}),
        );
    }
    let again = json!({"uri": "tcp:127.0.0.1:1"});
    compare(
        "twice",
        &mut q,
        &mut g,
        "migrate-incoming",
        again.clone(),
        &mut mismatches,
    );
    compare(
        "capability",
        &mut q,
        &mut g,
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
        &mut mismatches,
    );
    // A cancel concerns outgoing migrations: the incoming one still comes.
    compare(
        "cancel",
        &mut q,
        &mut g,
        "migrate_cancel",
        json!({}),
        &mut mismatches,
    );
    compare(
        "listening",
        &mut q,
        &mut g,
        "query-status",
        json!({}),
        &mut mismatches,
    );
    let qsrc = Qemu::try_start(&[]).expect("QEMU");
    let mut qs = qsrc.client();
    qs.ok("migrate", json!({"uri": format!("tcp:127.0.0.1:{qport}")}));
    let mut gsrc = Gateway::start_with(1, "", &[]);
    let mut gs = gsrc.client();
    gs.ok("migrate", json!({"uri": format!("tcp:127.0.0.1:{gport}")}));
    for c in [&mut qs, &mut gs, &mut q, &mut g] {
        let info = wait_query(c, ENDING, ended);
        assert_eq!(info["status"], "completed", "{info}");
    }
    compare(
        "arrived",
        &mut q,
        &mut g,
        "migrate-incoming",
        again.clone(),
        &mut mismatches,
    );
    // The sources, whose VMs left.
    compare(
        "migrated",
        &mut qs,
        &mut gs,
        "migrate",
        again,
        &mut mismatches,
    );
    // A VM not started with -incoming.
    compare(
        "not incoming",
        &mut qs,
        &mut gs,
        "migrate-incoming",
        json!({"uri": "tcp:127.0.0.1:1"}),
        &mut mismatches,
    );
    drop(busy);
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    gsrc.vm.terminate(Duration::from_secs(10));
}
