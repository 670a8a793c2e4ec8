//! Trace events across Flotilla's processes (one gateway boot, one paused QEMU 7.2):
//! `--trace file=` collects the lines of every process in one file; trace-event-set-state
//! turns events on and off in a running block daemon and in the gateway (lines counted
//! against the I/Os query-blockstats counts), in vmm-core, and in a daemon the supervisor
//! starts after the old one was killed; wildcards; the get-state listing; and the errors
//! and HMP texts compared with QEMU 7.2's.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_tests::blk::pattern_image;
use flotilla_tests::qemu::{qemu_refusal, Qemu};
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{bin, run_to_end, test_guest, TempDir};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);
const SECTORS: u64 = 16 << 11;
const SEED: u64 = 0x7ace;
const RESTARTED: &str = "__io.flotilla_BLOCK_DAEMON_RESTARTED";

/// Every trace event, in the table's order (trace-event-get-state lists them reversed,
/// as QEMU does).
const EVENTS: &[&str] = &[
    "qmp_command_enter",
    "qmp_command_exit",
    "child_restart",
    "migrate_set_state",
    "vhost_user_frontend_msg",
    "vhost_user_backend_msg",
    "virtqueue_kick",
    "virtio_blk_req_submit",
    "virtio_blk_req_complete",
    "virtio_net_tx",
    "virtio_net_rx",
];

/// A trace line: `PID@SECONDS.MICROSECONDS PROCESS EVENT FIELDS`.
#[derive(Debug)]
struct Line {
    pid: i32,
    process: String,
    event: String,
    fields: String,
}

fn parse_line(line: &str) -> Line {
    let bad = || -> ! { panic!("not a trace line: {line:?}") };
    let (stamp, rest) = line.split_once(' ').unwrap_or_else(|| bad());
    let (pid, time) = stamp.split_once('@').unwrap_or_else(|| bad());
    let (secs, micros) = time.split_once('.').unwrap_or_else(|| bad());
    assert!(
        secs.parse::<u64>().is_ok() && micros.len() == 6 && micros.parse::<u32>().is_ok(),
        "{line:?}"
    );
    let mut words = rest.splitn(3, ' ');
    let (process, event) = (
        words.next().unwrap_or_else(|| bad()),
        words.next().unwrap_or_else(|| bad()),
    );
    assert!(
        [
            "qmp-gateway",
            "vmm-core",
            "block-daemon",
            "net-daemon",
            "migration-agent"
        ]
        .contains(&process),
        "{line:?}"
    );
    assert!(EVENTS.contains(&event), "{line:?}");
    Line {
        pid: pid.parse().unwrap_or_else(|_| bad()),
        process: process.into(),
        event: event.into(),
        fields: words.next().unwrap_or_default().into(),
    }
}

/// Every line of the log, each checked to be one whole trace line.
fn lines(log: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(log).expect("the trace log");
    assert!(text.is_empty() || text.ends_with('\n'), "a line cut short");
    text.lines().map(parse_line).collect()
}

fn count(log: &Path, keep: impl Fn(&Line) -> bool) -> usize {
    lines(log).iter().filter(|l| keep(l)).count()
}

/// Read and write operations the disk completed.
fn rw_ops(c: &mut QmpClient) -> u64 {
    let s = &c.ok("query-blockstats", json!({}))[0]["stats"];
    s["rd_operations"].as_u64().expect("rd_operations")
        + s["wr_operations"].as_u64().expect("wr_operations")
}

/// Stops the VM and waits until the disk's counters and the daemon's lines hold still (a
/// kick the guest gave before the stop may still be taken); their numbers then.
fn stop_and_settle(c: &mut QmpClient, log: &Path) -> (u64, usize) {
    c.ok("stop", json!({}));
    let daemon_lines = || count(log, |l| l.process == "block-daemon");
    let mut last = (rw_ops(c), daemon_lines());
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = (rw_ops(c), daemon_lines());
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Runs the guest until it completed `n` more reads and writes, then settles.
fn run_ios(c: &mut QmpClient, log: &Path, n: u64) -> (u64, usize) {
    let start = rw_ops(c);
    c.ok("cont", json!({}));
    let deadline = Instant::now() + TIMEOUT;
    while rw_ops(c) < start + n {
        assert!(Instant::now() < deadline, "the guest did no I/O");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop_and_settle(c, log)
}

fn is_rw(l: &Line) -> bool {
    l.fields.contains("type=Read ") || l.fields.contains("type=Write ")
}

fn state_of(c: &mut QmpClient, name: &str) -> Value {
    c.ok("trace-event-get-state", json!({"name": name}))
}

fn set(c: &mut QmpClient, name: &str, enable: bool) {
    c.ok(
        "trace-event-set-state",
        json!({"name": name, "enable": enable}),
    );
}

fn hmp(c: &mut QmpClient, line: &str) -> String {
    let r = c.ok("human-monitor-command", json!({"command-line": line}));
    r.as_str().expect("HMP text").to_string()
}

/// Waits until the log has a line `want` accepts.
fn expect_in_log(log: &Path, what: &str, want: impl Fn(&Line) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !lines(log).iter().any(&want) {
        assert!(Instant::now() < deadline, "no {what} in the trace log");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn trace_events_are_turned_on_and_off_in_every_process() {
    let dir = TempDir::new("gw-trace");
    let image = dir.path().join("d0.img");
    pattern_image(&image, SEED, SECTORS);
    let log = dir.path().join("trace.log");
    let drive = format!("file={},format=raw,id=d0", image.display());
    let file = format!("file={}", log.display());
    let mut gw = Gateway::start_with(
        1,
        &format!("scenario=blk-verify-loop seed={SEED:#x}"),
        &[
            "--drive",
            &drive,
            "--trace",
            &file,
            "--trace",
            "qmp_command_exit",
        ],
    );
    gw.vm.expect_prefix("GUEST BLK ROUND 1 OK", TIMEOUT);
    let gateway = gw.vm.pid();
    let vmm = gw.vmm_pid();
    let daemon = flotilla_tests::procs::live_child(gateway, "block-daemon", TIMEOUT);
    let mut c = gw.client();

    // The listing: every event, the last of the table first, as QEMU lists them; the one
    // --trace named is on.
    let all = state_of(&mut c, "*");
    let listed: Vec<&str> = all
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    let mut expected = EVENTS.to_vec();
    expected.reverse();
    assert_eq!(listed, expected);
    for e in all.as_array().unwrap() {
        let on = e["name"] == "qmp_command_exit";
        let state = if on { "enabled" } else { "disabled" };
        assert_eq!(
            e,
            &json!({"name": e["name"], "state": state, "vcpu": false})
        );
    }
    // The gateway's lines are there from the start (the QMP commands so far).
    let exits = count(&log, |l| l.event == "qmp_command_exit");
    assert!(exits >= 2, "{exits} qmp_command_exit lines");
    let qmp_line = lines(&log)
        .into_iter()
        .find(|l| {
            l.event == "qmp_command_exit" && l.fields.contains("command=trace-event-get-state")
        })
        .expect("trace-event-get-state's exit");
    assert_eq!(
        (qmp_line.pid, qmp_line.process.as_str()),
        (gateway, "qmp-gateway")
    );
    assert!(
        qmp_line.fields.contains(" result=ok duration_us="),
        "{qmp_line:?}"
    );

    // The block daemon's requests: none traced while off.
    let (ops0, _) = stop_and_settle(&mut c, &log);
    assert_eq!(count(&log, |l| l.process == "block-daemon"), 0);
    // A wildcard turns both request events on, in the running daemon.
    set(&mut c, "virtio_blk_req_*", true);
    let states = state_of(&mut c, "virtio_blk_req_*");
    assert_eq!(
        states,
        json!([
            {"name": "virtio_blk_req_complete", "state": "enabled", "vcpu": false},
            {"name": "virtio_blk_req_submit", "state": "enabled", "vcpu": false},
        ])
    );
    let (ops1, _) = run_ios(&mut c, &log, 200);
    let blk = lines(&log);
    let completions: Vec<&Line> = blk
        .iter()
        .filter(|l| l.event == "virtio_blk_req_complete" && is_rw(l))
        .collect();
    let submissions = blk
        .iter()
        .filter(|l| l.event == "virtio_blk_req_submit" && is_rw(l))
        .count();
    // One line for each read and write the disk counted, from the daemon itself.
    assert_eq!(completions.len() as u64, ops1 - ops0);
    assert_eq!(submissions as u64, ops1 - ops0);
    assert!(completions.iter().all(|l| l.pid == daemon
        && l.process == "block-daemon"
        && l.fields.ends_with(" status=0")));

    // Off: the I/O goes on, the lines stop.
    set(&mut c, "virtio_blk_req_*", false);
    let before = count(&log, |l| l.process == "block-daemon");
    let (ops2, _) = run_ios(&mut c, &log, 200);
    assert!(ops2 >= ops1 + 200);
    assert_eq!(count(&log, |l| l.process == "block-daemon"), before);
    // And the gateway's: HMP turns it off; more commands, no more lines.
    assert_eq!(hmp(&mut c, "trace-event qmp_command_exit off"), "");
    let before = count(&log, |l| l.process == "qmp-gateway");
    for _ in 0..5 {
        c.ok("query-status", json!({}));
    }
    assert_eq!(count(&log, |l| l.process == "qmp-gateway"), before);
    assert_eq!(
        hmp(&mut c, "info trace-events qmp_command_*"),
        "qmp_command_exit : state 0\r\nqmp_command_enter : state 0\r\n"
    );
    assert_eq!(hmp(&mut c, "trace-event qmp_command_enter on"), "");
    c.ok("query-status", json!({}));
    expect_in_log(&log, "HMP's qmp_command_enter", |l| {
        l.event == "qmp_command_enter" && l.fields.ends_with(" command=query-status")
    });

    // A daemon started later (the supervisor's restart) traces what is on at its start;
    // vmm-core's frontend traces its messages to it.
    for name in ["vhost_user_*", "virtqueue_kick", "child_restart"] {
        set(&mut c, name, true);
    }
    c.ok("cont", json!({}));
    assert!(daemon > 1, "daemon pid {daemon}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    );
    let restarted = c.event(RESTARTED);
    let new_daemon = restarted["data"]["pid"].as_i64().expect("pid") as i32;
    expect_in_log(&log, "child_restart", |l| {
        l.pid == gateway
            && l.event == "child_restart"
            && l.fields.contains(&format!("result=pid {new_daemon}"))
    });
    expect_in_log(&log, "the new daemon's vhost_user_backend_msg", |l| {
        l.pid == new_daemon
            && l.event == "vhost_user_backend_msg"
            && l.fields.starts_with("request=SET_MEM_TABLE ")
    });
    expect_in_log(&log, "vmm-core's vhost_user_frontend_msg", |l| {
        l.pid == vmm && l.process == "vmm-core" && l.fields == "request=SET_MEM_TABLE"
    });
    expect_in_log(&log, "the new daemon's virtqueue_kick", |l| {
        l.pid == new_daemon && l.event == "virtqueue_kick"
    });
    // Every line in the file is whole, whichever process wrote it.
    assert!(lines(&log).len() > 400);

    bad_input_is_answered_as_qemu_answers_it(&mut c);
}

/// The errors (and HMP's texts) for bad names, vCPUs and arguments, against a live QEMU
/// 7.2 (paused, one vCPU, as the gateway here). Where a name must exist, each side's own.
fn bad_input_is_answered_as_qemu_answers_it(ours: &mut QmpClient) {
    let qemu = Qemu::try_start(&[]).expect("QEMU starts");
    let mut theirs = qemu.client();
    const QEMU_EVENT: &str = "monitor_qmp_cmd_in_band";
    const OUR_EVENT: &str = "qmp_command_enter";
    let cases: &[(&str, Value)] = &[
        ("trace-event-get-state", json!({"name": "nosuch"})),
        (
            "trace-event-set-state",
            json!({"name": "nosuch", "enable": true}),
        ),
        (
            "trace-event-set-state",
            json!({"name": "nosuch", "enable": false, "ignore-unavailable": true}),
        ),
        // `?` alone does not make a pattern.
        ("trace-event-get-state", json!({"name": "nosu?h"})),
        ("trace-event-get-state", json!({"name": ""})),
        (
            "trace-event-get-state",
            json!({"name": "nosuch", "vcpu": 1}),
        ),
        (
            "trace-event-set-state",
            json!({"name": "*", "enable": true, "vcpu": -1}),
        ),
        ("trace-event-get-state", json!({"name": "EVENT", "vcpu": 0})),
        (
            "trace-event-set-state",
            json!({"name": "EVENT", "enable": true, "vcpu": 0}),
        ),
        ("trace-event-get-state", json!({})),
        ("trace-event-set-state", json!({"name": "nosuch"})),
        (
            "trace-event-set-state",
            json!({"name": "nosuch", "enable": "yes"}),
        ),
    ];
    for (command, args) in cases {
        let with = |event: &str| {
            let mut a = args.clone();
            if a["name"] == "EVENT" {
                a["name"] = json!(event);
            }
            a
        };
        let q = theirs.err(command, with(QEMU_EVENT));
        let o = ours.err(command, with(OUR_EVENT));
        assert_eq!(
            o,
            (q.0, q.1.replace(QEMU_EVENT, OUR_EVENT)),
            "{command} {args}"
        );
    }
    // A pattern that matches nothing is no error.
    let nothing = json!({"name": "nosuch*"});
    assert_eq!(
        theirs.ok("trace-event-get-state", nothing.clone()),
        json!([])
    );
    assert_eq!(ours.ok("trace-event-get-state", nothing), json!([]));
    // With a vCPU a pattern lists the vCPU-specific events it matches: QEMU's guest_cpu_*,
    // none of ours.
    let per_vcpu = json!({"name": "*", "vcpu": 0});
    let qemu_list = theirs.ok("trace-event-get-state", per_vcpu.clone());
    assert!(qemu_list
        .as_array()
        .is_some_and(|l| !l.is_empty() && l.iter().all(|e| e["vcpu"] == true)));
    assert_eq!(ours.ok("trace-event-get-state", per_vcpu), json!([]));
    assert_eq!(
        theirs.ok(
            "trace-event-set-state",
            json!({"name": "nosuch*", "enable": true})
        ),
        ours.ok(
            "trace-event-set-state",
            json!({"name": "nosuch*", "enable": true})
        ),
    );
    // HMP, the same texts.
    for line in [
        "trace-event nosuch on",
        "trace-event nosuch* on",
        "trace-event",
        "trace-event EVENT maybe",
        "trace-event EVENT",
        "trace-event EVENT on 5",
        "trace-event EVENT on 0",
        "trace-event EVENT on -1",
        "trace-event EVENT on x",
        "trace-event EVENT off 0 more",
        "info trace-events nosuch",
        "info trace-events nosuch*",
        "info trace-events EVENT 0",
        "info trace-events EVENT 7",
        "info trace-events EVENT -1",
    ] {
        let q = hmp(&mut theirs, &line.replace("EVENT", QEMU_EVENT));
        let o = hmp(ours, &line.replace("EVENT", OUR_EVENT));
        assert_eq!(o, q.replace(QEMU_EVENT, OUR_EVENT), "HMP {line}");
    }
    // `info trace-events NAME` in QEMU's shape: `NAME : state 0|1`.
    hmp(&mut theirs, &format!("trace-event {QEMU_EVENT} on"));
    hmp(ours, &format!("trace-event {OUR_EVENT} on"));
    assert_eq!(
        hmp(ours, &format!("info trace-events {OUR_EVENT}")),
        hmp(&mut theirs, &format!("info trace-events {QEMU_EVENT}")).replace(QEMU_EVENT, OUR_EVENT)
    );
}

#[test]
fn the_command_line_takes_qemus_trace_options() {
    let dir = TempDir::new("gw-trace-cli");
    let gateway = |trace: &str| {
        let mut cmd = std::process::Command::new(bin("qmp-gateway"));
        cmd.arg("--kernel").arg(test_guest()).args([
            "--sandbox",
            "off",
            "--trace",
            trace,
            "--cmdline",
            "scenario=poweroff",
        ]);
        run_to_end(cmd, TIMEOUT)
    };
    // A key -trace does not have: QEMU's words, and nothing starts.
    let (status, _, err) = gateway("foo=bar");
    assert!(!status.success());
    let ours = err.lines().last().unwrap_or_default();
    let qemu = qemu_refusal(&["-trace", "foo=bar"]);
    assert_eq!(ours, format!("qmp-gateway: error: --trace foo=bar: {qemu}"));
    // A log file that cannot be opened: QEMU's words.
    let (status, _, err) = gateway("file=/nonexistent/trace.log");
    assert!(!status.success());
    assert!(
        err.contains("Error opening logfile /nonexistent/trace.log: No such file or directory"),
        "{err}"
    );
    // An events file: a pattern a line, `#` comments; a name no event has is a warning.
    let events = dir.path().join("events");
    std::fs::write(&events, "# the QMP commands\nqmp_command_*\n\nnosuch\n").unwrap();
    let log = dir.path().join("trace.log");
    let (_, _, err) = gateway(&format!(
        "events={},file={}",
        events.display(),
        log.display()
    ));
    assert!(
        err.contains(&format!(
            "{}:4: trace event 'nosuch' does not exist",
            events.display()
        )),
        "{err}"
    );
    assert!(log.exists(), "the log was not opened");
}
