//! The virtio-balloon scenario, run the same way on QEMU 7.2 and on Flotilla: the test
//! guest's `balloon` scenario (tests/guest/README.md) on a 128 MiB VM, driven over QMP with
//! `balloon`, `query-balloon` and HMP `balloon` / `info balloon`, checking what the guest
//! prints (its free memory, the pages it got back), the replies and the BALLOON_CHANGE
//! events. What each VMM answered is kept, for a test to compare one with the other.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::qmp::QmpClient;
use crate::Vm;

/// Guest RAM of both VMMs' VMs (QEMU's `-m 128`, the gateway's `--memory 128`).
pub const RAM: i64 = 128 << 20;
const MIB: i64 = 1 << 20;
const PAGE: i64 = 4096;
/// The guest's command line: the scenario, with two PFNs that are not RAM in its first
/// inflate request (a VMM must ignore them and take the rest).
pub const CMDLINE: &str = "scenario=balloon balloon-bad-pfn=1";
/// The guest's requests carry at most this many PFNs (so many `actual` writes per step).
const PFNS_PER_REQUEST: i64 = 256;
const STEP: Duration = Duration::from_secs(30);
/// QEMU 7.2 sends BALLOON_CHANGE at most once a second (monitor_qapi_event_conf): a
/// change within a second of the last event waits for the second to end, and only the
/// latest such change is sent. Arrivals closer than this broke that rule.
const MIN_EVENT_GAP: Duration = Duration::from_millis(900);

/// Where the scenario is, for a caller that looks at the host meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The guest is up, its pool written; nothing ballooned.
    Ready,
    /// 32 MiB in the balloon.
    Inflated,
    /// All of it back (and written again by the guest's checks).
    Deflated,
}

/// What a VMM answered and sent.
#[derive(Debug, Default)]
pub struct Observed {
    /// Every command, its arguments and the whole reply, in order.
    pub answers: Vec<(String, Value, Value)>,
    /// Each step's BALLOON_CHANGE data, in order.
    pub events: Vec<Vec<Value>>,
    /// The guest's free memory when it was ready.
    pub free_mib: i64,
}

/// The value of `key=` in a guest line.
fn field(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

struct Run<'a> {
    vm: &'a mut Vm,
    qmp: &'a mut QmpClient,
    seen: Observed,
    last_event: Option<Instant>,
}

impl Run<'_> {
    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let reply = self.qmp.execute(command, arguments.clone());
        self.seen
            .answers
            .push((command.to_string(), arguments, reply.clone()));
        reply
    }

    fn ok(&mut self, command: &str, arguments: Value) -> Value {
        let reply = self.execute(command, arguments);
        match reply.get("return") {
            Some(r) => r.clone(),
            None => panic!("{command} failed: {reply}\n{}", self.vm.transcript()),
        }
    }

    fn hmp(&mut self, line: &str) -> String {
        let r = self.ok("human-monitor-command", json!({"command-line": line}));
        r.as_str().unwrap_or_else(|| panic!("{r}")).to_string()
    }

    fn query(&mut self) -> i64 {
        let r = self.ok("query-balloon", json!({}));
        assert_eq!(
            r.as_object().map(|o| o.len()),
            Some(1),
            "BalloonInfo has only actual: {r}"
        );
        r["actual"]
            .as_i64()
            .unwrap_or_else(|| panic!("query-balloon: {r}"))
    }

    /// BALLOON_CHANGE events until one says `actual` (bytes): each carries only `actual`,
    /// a whole number of pages moving from `from` toward it (unless `from` is None: a
    /// rebooted guest starts again from nothing); and, QEMU's rate limit, they arrive at
    /// least MIN_EVENT_GAP apart (across steps too), fewer than the guest's writes of
    /// `actual` when there were several.
    fn events_until(&mut self, from: Option<i64>, actual: i64) {
        let deadline = Instant::now() + STEP;
        let mut step = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(e) = self.qmp.event_within("BALLOON_CHANGE", left) else {
                panic!(
                    "no BALLOON_CHANGE with actual={actual} within {STEP:?} (got {step:?});\n{}",
                    self.vm.transcript()
                );
            };
            let arrived = Instant::now();
            if let Some(last) = self.last_event {
                assert!(
                    arrived - last >= MIN_EVENT_GAP,
                    "BALLOON_CHANGE {e} came {:?} after the previous one",
                    arrived - last
                );
            }
            self.last_event = Some(arrived);
            let data = e["data"].clone();
            assert_eq!(
                data.as_object().map(|o| o.len()),
                Some(1),
                "BALLOON_CHANGE carries only actual: {e}"
            );
            let n = data["actual"].as_i64().unwrap_or_else(|| panic!("{e}"));
            assert_eq!(n % PAGE, 0, "{e}");
            if let Some(from) = from {
                assert!(
                    (n - actual).abs() < (from - actual).abs(),
                    "{e} is not between {from} and {actual}"
                );
            }
            step.push(data);
            if n == actual {
                break;
            }
        }
        let writes = from.map_or(0, |from| (from - actual).abs() / PAGE / PFNS_PER_REQUEST);
        if writes > 2 {
            assert!(
                (step.len() as i64) < writes,
                "{} BALLOON_CHANGE events for {writes} writes of actual: not rate-limited",
                step.len()
            );
        }
        self.seen.events.push(step);
    }

    /// The guest's `GUEST BALLOON actual=` line: the pages it holds and its free memory.
    fn guest_settled(&mut self, pages: i64) -> i64 {
        let line = self.vm.expect_prefix("GUEST BALLOON actual=", STEP);
        assert_eq!(field(&line, "actual"), pages, "{line}");
        field(&line, "free_mib")
    }

    /// `balloon` to `value` bytes, which leaves `pages` in the balloon (from `before`):
    /// the reply, the events, the guest's line and query-balloon.
    fn balloon(&mut self, value: i64, before: i64, pages: i64) -> i64 {
        assert_eq!(self.ok("balloon", json!({"value": value})), json!({}));
        self.settled(before, pages)
    }

    /// After a change of target: the events up to `pages`, the guest's lines (pages given
    /// back must all have been dropped by the host), query-balloon.
    fn settled(&mut self, before: i64, pages: i64) -> i64 {
        let actual = RAM - pages * PAGE;
        self.events_until(Some(RAM - before * PAGE), actual);
        if pages < before {
            let line = self.vm.expect_prefix("GUEST BALLOON DEFLATED", STEP);
            assert_eq!(field(&line, "pages"), before - pages, "{line}");
            assert_eq!(
                field(&line, "zeroed"),
                before - pages,
                "every page given back was dropped by the host: {line}"
            );
        }
        let free = self.guest_settled(pages);
        assert_eq!(self.query(), actual);
        free
    }
}

/// Runs the scenario on `vm`, whose guest runs `CMDLINE` and has just been let run, over
/// `qmp`; `at` is called at each phase, with the scenario waiting.
pub fn scenario(vm: &mut Vm, qmp: &mut QmpClient, mut at: impl FnMut(Phase)) -> Observed {
    let mut run = Run {
        vm,
        qmp,
        seen: Observed::default(),
        last_event: None,
    };
    let ready = run.vm.expect_prefix("GUEST BALLOON READY", STEP);
    assert_eq!(
        (field(&ready, "num_pages"), field(&ready, "actual")),
        (0, 0),
        "{ready}"
    );
    let free = field(&ready, "free_mib");
    run.seen.free_mib = free;
    // Before the guest wrote actual, the balloon holds nothing.
    assert_eq!(run.query(), RAM);
    at(Phase::Ready);

    // 32 MiB out: 8192 pages (the first request also carries the two bad PFNs).
    assert_eq!(run.balloon(RAM - 32 * MIB, 0, 8192), free - 32);
    assert!(
        run.vm.transcript().contains("GUEST INFO balloon bad_pfns="),
        "the bad PFNs went with the first request"
    );
    assert_eq!(run.hmp("info balloon"), "balloon: actual=96\r\n");
    at(Phase::Inflated);

    // And back: every page comes back, and was dropped by the host meanwhile.
    assert_eq!(run.balloon(RAM, 8192, 0), free);
    at(Phase::Deflated);

    // QEMU's rounding: (RAM - value) / 4096 pages, rounded down.
    assert_eq!(run.balloon(RAM - 16 * MIB + 100, 0, 4095), free - 16);
    // More than RAM counts as RAM: nothing ballooned.
    assert_eq!(run.balloon(2 * RAM, 4095, 0), free);

    // HMP: `balloon` in MiB, `info balloon` in MiB.
    assert_eq!(run.hmp("balloon 64"), "");
    assert_eq!(run.settled(0, 16384), free - 64);
    assert_eq!(run.hmp("info balloon"), "balloon: actual=64\r\n");
    assert_eq!(
        run.hmp("balloon 0"),
        "Error: Parameter 'target' expects a size\r\n"
    );
    assert_eq!(run.hmp("balloon 128"), "");
    assert_eq!(run.settled(16384, 0), free);

    // A reset keeps the target and the actual the driver wrote last; the new driver
    // starts from nothing and inflates to the target again.
    assert_eq!(run.balloon(RAM - 8 * MIB, 0, 2048), free - 8);
    assert_eq!(run.ok("system_reset", json!({})), json!({}));
    let ready = run.vm.expect_prefix("GUEST BALLOON READY", STEP);
    assert_eq!(
        (field(&ready, "num_pages"), field(&ready, "actual")),
        (2048, 2048),
        "{ready}"
    );
    run.events_until(None, RAM - 8 * MIB);
    assert_eq!(run.guest_settled(2048), free - 8);
    assert_eq!(run.query(), RAM - 8 * MIB);
    assert_eq!(run.balloon(RAM, 2048, 0), free);

    // Refusals (QEMU 7.2's texts); none changes anything.
    for value in [json!(0), json!(-1), json!(i64::MIN)] {
        let r = run.execute("balloon", json!({"value": value}));
        assert_eq!(
            r,
            json!({"error": {"class": "GenericError",
                             "desc": "Parameter 'target' expects a size"}}),
            "balloon {value}"
        );
    }
    for args in [
        json!({"value": 1.5}),
        json!({"value": "1"}),
        json!({}),
        json!({"value": 1, "x": 2}),
    ] {
        let r = run.execute("balloon", args.clone());
        assert!(r.get("error").is_some(), "balloon {args}: {r}");
    }
    assert_eq!(run.query(), RAM);
    assert!(
        !run.vm.transcript().contains("GUEST ERROR"),
        "{}",
        run.vm.transcript()
    );
    run.seen
}

/// A VM without a balloon device: QEMU 7.2's answers (checked live in
/// qemu_guest_balloon.rs).
pub fn without_balloon(qmp: &mut QmpClient) -> Vec<(String, Value, Value)> {
    let not_active = json!({"error": {"class": "DeviceNotActive",
                                      "desc": "No balloon device has been activated"}});
    let mut answers = Vec::new();
    for (command, arguments) in [
        ("balloon", json!({"value": RAM / 2})),
        // The device is looked for before the value is checked.
        ("balloon", json!({"value": 0})),
        ("query-balloon", json!({})),
    ] {
        let r = qmp.execute(command, arguments.clone());
        assert_eq!(r, not_active, "{command} {arguments}");
        answers.push((command.to_string(), arguments, r));
    }
    for line in ["info balloon", "balloon 64", "balloon 0"] {
        let arguments = json!({"command-line": line});
        let r = qmp.execute("human-monitor-command", arguments.clone());
        assert_eq!(
            r,
            json!({"return": "Error: No balloon device has been activated\r\n"}),
            "{line}"
        );
        answers.push(("human-monitor-command".into(), arguments, r));
    }
    answers
}
