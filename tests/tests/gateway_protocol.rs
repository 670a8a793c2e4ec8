//! QMP on the wire against the gateway: greeting, negotiation, ids, streamed input,
//! envelope and argument errors (QEMU 7.2's texts), OOB, several clients, TCP.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{error_of, Gateway, QmpClient};
use serde_json::{json, Value};

#[test]
fn greeting_and_negotiation() {
    let gw = Gateway::start(&[]);
    let mut c = QmpClient::connect(&gw.qmp);
    let qmp = &c.greeting["QMP"];
    assert_eq!(qmp["capabilities"], json!(["oob"]));
    for field in ["major", "minor", "micro"] {
        assert!(qmp["version"]["qemu"][field].is_u64(), "{}", c.greeting);
    }
    assert!(qmp["version"]["package"].is_string());
    assert_eq!(
        c.err("query-status", json!({})),
        (
            "CommandNotFound".into(),
            "Expecting capabilities negotiation with 'qmp_capabilities'".into()
        )
    );
    assert_eq!(c.ok("qmp_capabilities", json!({})), json!({}));
    assert_eq!(
        c.err("qmp_capabilities", json!({})),
        (
            "CommandNotFound".into(),
            "Capabilities negotiation is already complete, command ignored".into()
        )
    );
    assert_eq!(c.ok("query-status", json!({}))["status"], "running");
}

#[test]
fn ids_are_echoed_whatever_json_they_are() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    // QEMU 7.2, to answer the same bad command: its whole error reply is the reference.
    let qemu = Qemu::try_start(&[]).unwrap_or_else(|e| panic!("QEMU did not start: {e}"));
    let mut q = qemu.client();
    for id in [
        json!(1),
        json!("abc"),
        json!(null),
        json!({"a": [1, 2.5, true]}),
        json!([]),
    ] {
        c.send_raw(
            json!({"execute": "query-kvm", "id": id})
                .to_string()
                .as_bytes(),
        );
        let r = c.reply();
        assert_eq!(r["id"], id);
        assert_eq!(r["return"], json!({"enabled": true, "present": true}));
        // Errors carry the id too, with QEMU's class and description.
        let bad = json!({"execute": "query-kvm", "id": id, "arguments": {"x": 1}}).to_string();
        c.send_raw(bad.as_bytes());
        q.send_raw(bad.as_bytes());
        let (ours, qemus) = (c.reply(), q.reply());
        assert_eq!(ours["id"], id, "{ours}");
        assert_eq!(
            error_of(&ours),
            (
                "GenericError".to_string(),
                "Parameter 'x' is unexpected".to_string()
            ),
            "{ours}"
        );
        assert_eq!(ours, qemus, "QEMU answers {bad} with {qemus}");
    }
}

#[test]
fn input_is_a_stream_not_lines() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    // One object over several writes, with pauses.
    for part in [
        &b"{\"exec"[..],
        b"ute\": \"query-",
        b"name\", \"id\"",
        b": 7}",
    ] {
        c.send_raw(part);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.reply()["id"], 7);
    // Several objects in one write, no separators, no trailing newline.
    c.send_raw(br#"{"execute":"query-kvm","id":1}{"execute":"query-uuid","id":2}  {"execute":"query-name","id":3}"#);
    for id in 1..=3 {
        assert_eq!(c.reply()["id"], id);
    }
}

#[test]
fn envelope_errors_match_qemu() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    let cases: &[(&[u8], &str)] = &[
        (b"[1,2]", "QMP input must be a JSON object"),
        (b"\"str\"", "QMP input must be a JSON object"),
        (b"42 ", "QMP input must be a JSON object"),
        (
            br#"{"execute":1}"#,
            "QMP input member 'execute' must be a string",
        ),
        (br#"{"foo":1}"#, "QMP input member 'foo' is unexpected"),
        (
            br#"{"execute":"query-status","arguments":[]}"#,
            "QMP input member 'arguments' must be an object",
        ),
        (
            br#"{"execute":"query-status","control":{}}"#,
            "QMP input member 'control' is unexpected",
        ),
        (
            br#"{"exec-oob":"query-status"}"#,
            "QMP input member 'exec-oob' is unexpected",
        ),
        (br#"{"id":5}"#, "QMP input lacks member 'execute'"),
    ];
    for (input, desc) in cases {
        c.send_raw(input);
        let r = c.reply();
        assert_eq!(
            error_of(&r),
            ("GenericError".to_string(), desc.to_string()),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    c.send_raw(b"{invalid}");
    let (class, desc) = error_of(&c.reply());
    assert_eq!(class, "GenericError");
    assert!(desc.starts_with("JSON parse error, "), "{desc}");
}

#[test]
fn unknown_commands_and_bad_arguments() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    assert_eq!(
        c.err("nosuch", json!({})),
        (
            "CommandNotFound".into(),
            "The command nosuch has not been found".into()
        )
    );
    assert_eq!(c.err("getfd", json!({})).1, "Parameter 'fdname' is missing");
    assert_eq!(
        c.err("getfd", json!({"fdname": 1})).1,
        "Invalid parameter type for 'fdname', expected: string"
    );
    assert_eq!(
        c.err("getfd", json!({"fdname": "x", "extra": [1]})).1,
        "Parameter 'extra' is unexpected"
    );
    assert_eq!(
        c.err("query-status", json!({"x": 1})).1,
        "Parameter 'x' is unexpected"
    );
    assert_eq!(
        c.err("remove-fd", json!({"fdset-id": "0"})).1,
        "Invalid parameter type for 'fdset-id', expected: integer"
    );
    assert_eq!(
        c.err(
            "human-monitor-command",
            json!({"command-line": "info status", "cpu-index": "x"})
        )
        .1,
        "Invalid parameter type for 'cpu-index', expected: integer"
    );
    // Arguments are checked before the command runs, as QEMU's marshallers do.
    assert_eq!(
        c.err("qmp_capabilities", json!({"enable": ["nope"]})).0,
        "GenericError"
    );
    // The session still works.
    assert_eq!(c.ok("query-kvm", json!({}))["enabled"], true);
}

#[test]
fn capabilities_with_a_bad_enable_value_is_refused() {
    let gw = Gateway::start(&[]);
    let mut c = QmpClient::connect(&gw.qmp);
    assert_eq!(
        c.err("qmp_capabilities", json!({"enable": ["nope"]})).1,
        // QEMU 7.2 names a list element 'null' here (seen live by qmp_oracle).
        "Parameter 'null' does not accept value 'nope'"
    );
    assert_eq!(
        c.ok("qmp_capabilities", json!({"enable": ["oob"]})),
        json!({})
    );
}

#[test]
fn out_of_band_commands() {
    let gw = Gateway::start(&[]);
    let mut c = QmpClient::connect(&gw.qmp);
    c.ok("qmp_capabilities", json!({"enable": ["oob"]}));
    c.send_raw(br#"{"exec-oob":"query-status","id":"o1"}"#);
    let r = c.reply();
    assert_eq!(
        (r["id"].clone(), r["return"]["status"].clone()),
        (json!("o1"), json!("running"))
    );
    c.send_raw(br#"{"exec-oob":"stop","id":"o2"}"#);
    assert_eq!(
        error_of(&c.reply()).1,
        "The command stop does not support OOB"
    );
    c.send_raw(br#"{"execute":"query-status","exec-oob":"query-status"}"#);
    assert_eq!(
        error_of(&c.reply()).1,
        "QMP input member 'execute' clashes with 'exec-oob'"
    );
    // In-band commands still run, in order.
    c.send_raw(br#"{"execute":"query-kvm","id":1}{"execute":"query-uuid","id":2}"#);
    assert_eq!(c.reply()["id"], 1);
    assert_eq!(c.reply()["id"], 2);
}

#[test]
fn introspection_agrees_with_the_command_table() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    let commands: Vec<String> = c
        .ok("query-commands", json!({}))
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    for required in [
        "qmp_capabilities",
        "query-version",
        "query-commands",
        "query-events",
        "query-qmp-schema",
        "query-status",
        "stop",
        "cont",
        "system_reset",
        "system_powerdown",
        "system_wakeup",
        "quit",
        "query-kvm",
        "query-cpus",
        "query-cpus-fast",
        "query-name",
        "query-uuid",
        "getfd",
        "closefd",
        "add-fd",
        "remove-fd",
        "query-fdsets",
        "human-monitor-command",
    ] {
        assert!(commands.iter().any(|c| c == required), "{required} missing");
    }
    let schema = c.ok("query-qmp-schema", json!({}));
    let schema_commands: Vec<&str> = schema
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["meta-type"] == "command")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(schema_commands, commands);
    let events: Vec<Value> = c.ok("query-events", json!({})).as_array().unwrap().clone();
    for e in ["STOP", "RESUME", "RESET", "SHUTDOWN", "POWERDOWN"] {
        assert!(events.contains(&json!({"name": e})));
    }
    // The schema's argument types are the ones the dispatcher checks.
    let getfd = schema
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "q_obj_getfd-arg")
        .unwrap();
    assert_eq!(getfd["members"], json!([{"name": "fdname", "type": "str"}]));
}

#[test]
fn identity_and_info_commands() {
    let gw = Gateway::start(&[
        "--name",
        "vm-one",
        "--uuid",
        "12345678-9abc-def0-1234-56789abcdef0",
    ]);
    let mut c = gw.client();
    assert_eq!(c.ok("query-name", json!({})), json!({"name": "vm-one"}));
    assert_eq!(
        c.ok("query-uuid", json!({})),
        json!({"UUID": "12345678-9abc-def0-1234-56789abcdef0"})
    );
    assert_eq!(
        c.ok("query-kvm", json!({})),
        json!({"enabled": true, "present": true})
    );
    let v = c.ok("query-version", json!({}));
    assert_eq!(v["qemu"], c.greeting["QMP"]["version"]["qemu"]);
    assert_eq!(
        c.err("system_wakeup", json!({})).1,
        "wake-up from suspend is not supported by this guest"
    );
    let unnamed = Gateway::start(&[]);
    assert_eq!(unnamed.client().ok("query-name", json!({})), json!({}));
    assert_eq!(
        unnamed.client().ok("query-uuid", json!({}))["UUID"],
        "00000000-0000-0000-0000-000000000000"
    );
}

#[test]
fn cpus_are_real_vcpu_threads() {
    let mut gw = Gateway::start(&[]);
    gw.vm.expect_prefix("GUEST IDLE", Duration::from_secs(20));
    let vmm = gw.vmm_pid();
    let mut c = gw.client();
    let fast = c.ok("query-cpus-fast", json!({}));
    let slow = c.ok("query-cpus", json!({}));
    assert_eq!(fast.as_array().unwrap().len(), 2);
    for (i, (f, s)) in fast
        .as_array()
        .unwrap()
        .iter()
        .zip(slow.as_array().unwrap())
        .enumerate()
    {
        assert_eq!(f["cpu-index"], i);
        assert_eq!(s["CPU"], i);
        assert_eq!(f["thread-id"], s["thread_id"]);
        let tid = f["thread-id"].as_i64().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{vmm}/task/{tid}/comm")).unwrap();
        assert_eq!(comm.trim(), format!("vcpu{i}"));
        assert_eq!(f["props"]["core-id"], i);
        // The idle guest's vCPUs sit in HLT inside the guest kernel (above 1 MiB).
        assert_eq!(s["halted"], true, "{s}");
        assert!(s["pc"].as_u64().unwrap() >= 0x100000, "{s}");
    }
}

#[test]
fn many_clients_each_negotiate_and_all_get_events() {
    let gw = Gateway::start(&[]);
    for n in [2, 8] {
        let mut clients: Vec<QmpClient> = (0..n).map(|_| QmpClient::connect(&gw.qmp)).collect();
        // Only negotiated clients get events: negotiate all but the last.
        for c in clients.iter_mut().take(n - 1) {
            c.ok("qmp_capabilities", json!({}));
        }
        clients[0].ok("stop", json!({}));
        clients[n - 2].ok("cont", json!({}));
        for c in clients.iter_mut().take(n - 1) {
            c.event("STOP");
            c.event("RESUME");
        }
        let last = clients.last_mut().unwrap();
        last.ok("qmp_capabilities", json!({}));
        // Nothing was queued for it before it negotiated.
        assert_eq!(last.ok("query-status", json!({}))["status"], "running");
        assert!(last.events.is_empty(), "{:?}", last.events);
    }
}

#[test]
fn tcp_listener_speaks_the_same_protocol() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(&["--qmp-tcp", &port.to_string()]);
    // The Unix socket exists before the TCP listener is bound: retry briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("QMP over TCP: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""));
    w.write_all(br#"{"execute":"qmp_capabilities"}{"execute":"query-status","id":9}"#)
        .unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&line).unwrap(),
        json!({"return": {}})
    );
    line.clear();
    reader.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (v["id"].clone(), v["return"]["status"].clone()),
        (json!(9), json!("running"))
    );
    drop(gw);
}

/// A raw connection that read its greeting: returns the stream and its reader.
fn raw_client(path: &std::path::Path) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    assert!(greeting.contains("\"QMP\""), "{greeting:?}");
    (s, reader)
}

/// Reads until the gateway hangs up (within `within`); the last line it sent before.
fn until_hang_up(reader: &mut BufReader<UnixStream>, within: Duration) -> String {
    reader.get_ref().set_read_timeout(Some(within)).unwrap();
    let mut last = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return last,
            Ok(_) => last = line,
            Err(e) => panic!("still connected after {within:?} ({e}); last line {last:?}"),
        }
    }
}

/// Issue 11: 256 idle connections locked everyone else out, a half-sent object held its
/// slot for ever. Now a client that does not negotiate within the handshake time is let
/// go, and when every slot is taken the one that waited longest without negotiating
/// makes room for the newcomer. Clients that negotiated keep their slots however idle.
#[test]
fn idle_and_half_sent_connections_cannot_lock_clients_out() {
    let gw = Gateway::start(&[]);
    let mut settled = gw.client();
    // Fill every other slot: half of them idle, half stopped in the middle of an object.
    let mut squatters = Vec::new();
    for i in 0..255 {
        let (mut s, reader) = raw_client(&gw.qmp);
        if i % 2 == 1 {
            s.write_all(br#"{"execute": "qmp_capab"#).unwrap();
        }
        squatters.push((s, reader));
    }
    let started = std::time::Instant::now();
    let mut newcomer = QmpClient::negotiated(&gw.qmp);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a new client waited {:?} for a slot",
        started.elapsed()
    );
    assert_eq!(newcomer.ok("query-status", json!({}))["status"], "running");
    // Every connection that never negotiated is let go within the handshake time (5 s by
    // default), told why.
    for (_, reader) in squatters.iter_mut() {
        let last = until_hang_up(reader, Duration::from_secs(10));
        let v: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{last:?}: {e}"));
        assert_eq!(v["error"]["class"], "GenericError", "{v}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The clients that negotiated are still served, idle as they were.
    assert_eq!(settled.ok("query-status", json!({}))["status"], "running");
    assert_eq!(newcomer.ok("query-kvm", json!({}))["enabled"], true);
}

/// The limits are options: at most --qmp-max-clients at once (a newcomer beyond them is
/// told so), and --qmp-handshake-timeout seconds to negotiate.
#[test]
fn client_limits_are_options() {
    let gw = Gateway::start(&["--qmp-max-clients", "3", "--qmp-handshake-timeout", "1"]);
    let mut clients: Vec<QmpClient> = (0..3).map(|_| gw.client()).collect();
    // Every slot holds a client that negotiated: a fourth is turned away with a reason.
    let s = UnixStream::connect(&gw.qmp).unwrap();
    let mut reader = BufReader::new(s);
    let last = until_hang_up(&mut reader, Duration::from_secs(5));
    let v: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{last:?}: {e}"));
    assert_eq!(
        v["error"]["desc"], "Too many QMP clients: at most 3 at once",
        "{v}"
    );
    drop(clients.pop());
    // A slot is free again (once the gateway has seen the client go).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut reader = loop {
        let s = UnixStream::connect(&gw.qmp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(s);
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        if first.contains("\"QMP\"") {
            break reader;
        }
        assert!(
            first.contains("Too many QMP clients") && std::time::Instant::now() < deadline,
            "{first:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let started = std::time::Instant::now();
    let last = until_hang_up(&mut reader, Duration::from_secs(5));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "dropped after {waited:?}"
    );
    let v: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(
        v["error"]["desc"], "No capabilities negotiation within 1 s: closing the connection",
        "{v}"
    );
    for c in clients.iter_mut() {
        assert_eq!(c.ok("query-status", json!({}))["status"], "running");
    }
}
