//! What the live-migration tests (and the migration benchmark) share: the
//! `migrate-dirty` scenario's console lines read back, the echo peer of its network
//! load, a destination gateway, and waiting for a migration's end and a run state, on
//! Flotilla and on QEMU alike (both speak QMP); the same guest run and migrated on
//! either (`Vmm`), to compare them.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::qemu::Qemu;
use crate::qmp::{Gateway, QmpClient};
use crate::{bin, test_guest, TempDir, Vm};

/// How long a migration or a run-state change may take in a test.
pub const MIGRATION: Duration = Duration::from_secs(120);
/// How long the guest may take to boot and write its working set.
const BOOT: Duration = Duration::from_secs(30);
/// Between two progress lines of the guest.
const ROUND: Duration = Duration::from_secs(15);

/// `key=value` of a console line, as a number.
pub fn field(line: &str, key: &str) -> u64 {
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    }
    .unwrap_or_else(|e| panic!("{key}={value} in {line:?}: {e}"))
}

/// The `mib_s=X.Y` of a round line.
pub fn mib_s(line: &str) -> f64 {
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mib_s="))
        .unwrap_or_else(|| panic!("no mib_s= in {line:?}"));
    value
        .parse()
        .unwrap_or_else(|e| panic!("mib_s={value} in {line:?}: {e}"))
}

/// The N of `GUEST MIG <what> N ok ...`.
pub fn count(line: &str, what: &str) -> u64 {
    let rest = line
        .strip_prefix(&format!("GUEST MIG {what} "))
        .unwrap_or_else(|| panic!("not a {what} line: {line:?}"));
    let (n, tail) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    assert!(tail.starts_with("ok"), "{line:?}");
    n.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// Waits for the next line starting with `prefix`; a `GUEST ERROR` line before it fails the
/// test (the scenario's check found something, or it could not run).
pub fn expect_mig(vm: &mut Vm, prefix: &str, timeout: Duration) -> String {
    let line = vm.expect_line(prefix, timeout, |l| {
        l.starts_with(prefix) || l.starts_with("GUEST ERROR")
    });
    assert!(
        line.starts_with(prefix),
        "the guest reported an error while we waited for {prefix:?}: {line}\n{}",
        vm.transcript()
    );
    line
}

/// The peer of `mig-net=1` on a UDP socket (QEMU's `-netdev socket,udp=`): every frame of
/// ethertype 0x88b5 goes back to the address it came from with the source MAC as
/// destination, our MAC as source and ethertype 0x88b6, payload unchanged (or with the byte
/// at `corrupt` inverted, to see the guest notice). RARP frames (a NIC's announcement
/// after a migration) are kept. Stops when dropped.
pub struct Reflector {
    pub port: u16,
    stop: Arc<AtomicBool>,
    senders: Arc<Mutex<HashSet<SocketAddr>>>,
    announcements: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reflector {
    pub const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    pub fn start(corrupt: Option<usize>) -> Reflector {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let senders = Arc::new(Mutex::new(HashSet::new()));
        let announcements = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, senders) = (stop.clone(), senders.clone());
            let announcements = announcements.clone();
            std::thread::spawn(move || {
                let mut frame = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut frame) else {
                        continue;
                    };
                    if len >= 14 && frame[12..14] == [0x80, 0x35] {
                        announcements.lock().unwrap().push(frame[..len].to_vec());
                        continue;
                    }
                    if len < 14 || frame[12..14] != [0x88, 0xb5] {
                        continue;
                    }
                    senders.lock().unwrap().insert(from);
                    let mut echo = frame[..len].to_vec();
                    echo.copy_within(6..12, 0);
                    echo[6..12].copy_from_slice(&Self::MAC);
                    echo[12..14].copy_from_slice(&[0x88, 0xb6]);
                    if let Some(byte) = corrupt.and_then(|at| echo.get_mut(14 + at)) {
                        *byte = !*byte;
                    }
                    let _ = socket.send_to(&echo, from);
                }
            })
        };
        Reflector {
            port,
            stop,
            senders,
            announcements,
            thread: Some(thread),
        }
    }

    pub fn senders(&self) -> usize {
        self.senders.lock().unwrap().len()
    }

    /// The RARP frames received so far, in order.
    pub fn announcements(&self) -> Vec<Vec<u8>> {
        self.announcements.lock().unwrap().clone()
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A free TCP port on the loopback interface for `-incoming`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `query-status` of `client` until it is `status` (within MIGRATION).
pub fn wait_for_status(client: &mut QmpClient, status: &str) {
    let deadline = Instant::now() + MIGRATION;
    loop {
        let now = client.ok("query-status", json!({}));
        if now["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {now} after {MIGRATION:?}, waiting for {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A destination gateway (`--incoming incoming`) for a source started with
/// `Gateway::start_with(cpus, cmdline, extra)`.
pub fn destination(cpus: usize, cmdline: &str, incoming: &str, extra: &[&str]) -> Gateway {
    let dir = TempDir::new("destination");
    let qmp = dir.path().join("qmp.sock");
    let mut cmd = Command::new(bin("qmp-gateway"));
    cmd.arg("--kernel").arg(test_guest());
    // A --memory in `extra` takes the default's place.
    if !extra.contains(&"--memory") {
        cmd.args(["--memory", "128"]);
    }
    cmd.args(["--cpus", &cpus.to_string()])
        .args(["--cmdline", cmdline])
        .arg("--qmp")
        .arg(&qmp)
        .args(["--incoming", incoming])
        .args(extra);
    Gateway::spawn(cmd, dir, qmp)
}

/// `query-status`'s status.
pub fn status(c: &mut QmpClient) -> String {
    c.ok("query-status", json!({}))["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Polls query-migrate until its status is one of `ends` (within MIGRATION); returns the
/// last answer.
pub fn wait_migration(c: &mut QmpClient, ends: &[&str]) -> Value {
    let deadline = Instant::now() + MIGRATION;
    loop {
        let info = c.ok("query-migrate", json!({}));
        if let Some(s) = info["status"].as_str() {
            if ends.contains(&s) {
                return info;
            }
        }
        assert!(Instant::now() < deadline, "migration did not end: {info}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a guest with disk and network load needs around it: a scratch directory with an
/// 8 MiB raw image, the echo peer of its NIC, and the gateway options of a disk on that
/// image and a NIC whose frames go to the reflector.
pub struct IoSetup {
    pub dir: crate::TempDir,
    pub image: std::path::PathBuf,
    pub reflector: Reflector,
    pub options: Vec<String>,
}

impl IoSetup {
    pub fn new(tag: &str) -> IoSetup {
        let dir = crate::TempDir::new(tag);
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(8 << 20))
            .expect("image");
        let reflector = Reflector::start(None);
        let options = vec![
            "--drive".into(),
            format!("file={},format=raw,id=d0", image.display()),
            "--netdev".into(),
            format!(
                "socket,id=n0,udp=127.0.0.1:{},localaddr=127.0.0.1:0",
                reflector.port
            ),
            "--device".into(),
            "virtio-net-pci,netdev=n0".into(),
        ];
        IoSetup {
            dir,
            image,
            reflector,
            options,
        }
    }

    /// The options as a gateway command line takes them.
    pub fn args(&self) -> Vec<&str> {
        self.options.iter().map(String::as_str).collect()
    }
}

/// Turns on the MIGRATION events (the `events` capability) for `c`'s VM.
pub fn events_on(c: &mut QmpClient) {
    c.ok(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "events", "state": true}]}),
    );
}

/// Waits for the migration `c`'s VM runs to end, which must be a completion (the source's
/// console `vm` says what the guest did otherwise); query-migrate's last answer.
pub fn expect_completed(c: &mut QmpClient, vm: &Vm) -> Value {
    let info = wait_migration(c, &["completed", "failed"]);
    assert_eq!(info["status"], "completed", "{info}\n{}", vm.transcript());
    info
}

/// The VMM the guest runs on; both are driven through QMP alike.
#[derive(Clone, Copy, Debug)]
pub enum Vmm {
    Flotilla,
    Qemu,
}

/// A running guest, on either VMM.
pub enum Running {
    Flotilla(Gateway),
    Qemu(Qemu),
}

impl Running {
    pub fn vm(&mut self) -> &mut Vm {
        match self {
            Running::Flotilla(g) => &mut g.vm,
            Running::Qemu(q) => &mut q.vm,
        }
    }

    pub fn client(&self) -> QmpClient {
        match self {
            Running::Flotilla(g) => g.client(),
            Running::Qemu(q) => q.client(),
        }
    }

    /// How many `GUEST MIG round` lines the guest printed so far.
    pub fn rounds(&mut self) -> usize {
        self.vm()
            .transcript()
            .lines()
            .filter(|l| l.starts_with("GUEST MIG round "))
            .count()
    }

    /// Waits for more than `rounds` round lines.
    pub fn wait_for_rounds_past(&mut self, rounds: usize) {
        let deadline = Instant::now() + ROUND;
        while self.rounds() <= rounds {
            assert!(
                Instant::now() < deadline,
                "no round within {ROUND:?}:\n{}",
                self.vm().transcript()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Vmm {
    /// The migrate-dirty guest running with `cmdline`, its working set written.
    pub fn source(self, cmdline: &str) -> Running {
        let mut source = self.start(cmdline);
        expect_mig(source.vm(), "GUEST MIG ready", BOOT);
        source
    }

    /// The guest started with `cmdline` (QEMU's continued from -S).
    pub fn start(self, cmdline: &str) -> Running {
        match self {
            Vmm::Flotilla => Running::Flotilla(Gateway::start_with(1, cmdline, &[])),
            Vmm::Qemu => {
                let qemu = Qemu::guest(cmdline, &[]);
                qemu.client().ok("cont", json!({}));
                Running::Qemu(qemu)
            }
        }
    }

    /// A destination waiting for the source's migration to `uri`.
    pub fn destination(self, cmdline: &str, uri: &str) -> Running {
        match self {
            Vmm::Flotilla => Running::Flotilla(destination(1, cmdline, uri, &[])),
            Vmm::Qemu => Running::Qemu(Qemu::guest(cmdline, &["-incoming", uri])),
        }
    }

    /// Runs the guest that came in (QEMU, started with -S, waits paused for it).
    pub fn resume(self, destination: &mut QmpClient) {
        match self {
            Vmm::Flotilla => wait_for_status(destination, "running"),
            Vmm::Qemu => {
                wait_for_status(destination, "paused");
                destination.ok("cont", json!({}));
            }
        }
    }
}

/// migrate-set-capabilities: `on` turned on, `off` off.
pub fn capabilities(c: &mut QmpClient, on: &[&str], off: &[&str]) {
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
pub fn start_migration(vmm: Vmm, cmdline: &str, s: &mut QmpClient) -> Running {
    start_migration_prepared(vmm, cmdline, s, |_| {})
}

/// The same, with `prepare` done on the destination's monitor before the migration
/// starts (the settings QEMU's destination needs too, such as compress).
pub fn start_migration_prepared(
    vmm: Vmm,
    cmdline: &str,
    s: &mut QmpClient,
    prepare: impl FnOnce(&mut QmpClient),
) -> Running {
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let destination = vmm.destination(cmdline, &uri);
    // Its monitor answers once it listens.
    let mut d = destination.client();
    d.ok("query-status", json!({}));
    prepare(&mut d);
    s.ok("migrate", json!({"uri": uri}));
    destination
}

/// The guest goes on at the destination: rounds past `last_round` (the last the source
/// reported), each page checked against what it wrote last; an error line fails.
pub fn guest_goes_on(vmm: Vmm, destination: &mut Running, last_round: u64) {
    vmm.resume(&mut destination.client());
    let first = count(
        &expect_mig(destination.vm(), "GUEST MIG round ", ROUND),
        "round",
    );
    assert!(first > last_round, "round {first} after {last_round}");
    // The first one may have ended on the source; the next two ran whole here, every
    // page checked.
    let mut last = first;
    while last < first + 2 {
        last = count(
            &expect_mig(destination.vm(), "GUEST MIG round ", ROUND),
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
pub fn last_round(source: &mut Running) -> u64 {
    source
        .vm()
        .transcript()
        .lines()
        .rfind(|l| l.starts_with("GUEST MIG round "))
        .map_or(0, |l| count(l, "round"))
}
