//! Bad input from QMP clients: after each, the gateway keeps serving everyone else (and
//! the offending client too, where the protocol allows).

use std::io::Write;
use std::time::Duration;

use flotilla_tests::qmp::{error_of, Gateway, QmpClient};
use flotilla_tests::rss_kib;
use serde_json::json;

fn still_serving(gw: &Gateway) {
    let mut c = gw.client();
    assert_eq!(c.ok("query-status", json!({}))["status"], "running");
}

/// What each input is answered (qmp_oracle compares the answers with QEMU 7.2's): here,
/// that each gets its error and the session goes on.
#[test]
fn invalid_json_and_non_objects() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    for input in [
        &b"{\"execute\": tru}"[..],
        b"{\"execute\": \"x\",}",
        b"]",
        b"\"\\uZZZZ\"",
        b"[1,2,3]",
        b"null ",
        b"\xff\xfe ",
    ] {
        c.send_raw(input);
        error_of(&c.reply());
    }
    assert_eq!(c.ok("query-kvm", json!({}))["enabled"], true);
    still_serving(&gw);
}

#[test]
fn ten_mib_string() {
    let gw = Gateway::start(&[]);
    let pid = gw.vm.pid();
    let mut c = gw.client();
    let idle_kib = rss_kib(pid);
    let mut big = b"{\"execute\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 10 << 20));
    big.extend_from_slice(b"\"}");
    let writer = {
        let mut s = c.stream().try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&big).unwrap())
    };
    assert_eq!(error_of(&c.reply()).1, "JSON token size limit exceeded");
    writer.join().unwrap();
    // The stream resynchronised after the value ended.
    assert_eq!(c.ok("query-kvm", json!({}))["enabled"], true);
    still_serving(&gw);
    // Memory stayed bounded: it grew far less than the 10 MiB that were sent. (Measured
    // against the gateway's own idle size, which depends on the build, not the input.)
    let grown_kib = rss_kib(pid).saturating_sub(idle_kib);
    assert!(
        grown_kib < 1024,
        "gateway RSS grew by {grown_kib} KiB (from {idle_kib} KiB) with a 10 MiB string"
    );
}

#[test]
fn nesting_a_hundred_thousand_deep() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    let mut deep = vec![b'['; 100_000];
    deep.extend(vec![b']'; 100_000]);
    c.send_raw(&deep);
    assert_eq!(error_of(&c.reply()).1, "JSON nesting depth limit exceeded");
    assert_eq!(c.ok("query-kvm", json!({}))["enabled"], true);
    let mut deep_obj = Vec::new();
    for _ in 0..100_000 {
        deep_obj.extend_from_slice(b"{\"a\":");
    }
    deep_obj.push(b'1');
    deep_obj.extend(vec![b'}'; 100_000]);
    c.send_raw(&deep_obj);
    assert_eq!(error_of(&c.reply()).1, "JSON nesting depth limit exceeded");
    still_serving(&gw);
}

/// Their errors are qmp_oracle's ("no-such-command", "getfd {...}", "remove-fd
/// {...}"); here, that the session survives them, again and again.
#[test]
fn unknown_commands_and_wrong_types_keep_the_session() {
    let gw = Gateway::start(&[]);
    let mut c = gw.client();
    for _ in 0..3 {
        c.err("no-such-command", json!({}));
        c.err("getfd", json!({"fdname": {"x": 1}}));
        c.err("remove-fd", json!({"fdset-id": 1.5}));
    }
    assert_eq!(c.ok("query-kvm", json!({}))["enabled"], true);
}

#[test]
fn half_an_object_then_silence() {
    let gw = Gateway::start(&[]);
    let mut stalled = gw.client();
    stalled.send_raw(br#"{"execute": "query-status", "argu"#);
    std::thread::sleep(Duration::from_millis(200));
    // Others are served meanwhile, events included.
    let mut a = gw.client();
    a.ok("stop", json!({}));
    a.ok("cont", json!({}));
    a.event("RESUME");
    still_serving(&gw);
    // And the stalled client can still finish its object.
    stalled.send_raw(br#"ments": {}}"#);
    assert_eq!(stalled.reply()["return"]["status"], "running");
}

#[test]
fn a_client_that_leaves_mid_command() {
    let gw = Gateway::start(&[]);
    for command in ["query-cpus", "stop", "cont", "system_reset"] {
        let mut c = gw.client();
        c.send_raw(json!({"execute": command}).to_string().as_bytes());
        drop(c);
    }
    let mut c = gw.client();
    // Whatever state the abandoned commands left, the gateway answers.
    c.ok("cont", json!({}));
    still_serving(&gw);
}

#[test]
fn a_client_that_never_reads_is_dropped_not_waited_for() {
    let gw = Gateway::start(&[]);
    let pid = gw.vm.pid();
    let stuck = QmpClient::negotiated(&gw.qmp);
    // Each schema reply is several KiB. A client that asks for them and never reads fills
    // its bounded outbox, and the gateway hangs up on it: its writes then fail.
    let request = br#"{"execute":"query-qmp-schema"}"#.repeat(100);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut other = gw.client();
    loop {
        if stuck.stream().write_all(&request).is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway kept a client that never reads"
        );
        // Everyone else is served without delay meanwhile.
        assert_eq!(other.ok("query-status", json!({}))["status"], "running");
    }
    still_serving(&gw);
    let rss_kib = rss_kib(pid);
    assert!(
        rss_kib < 32 * 1024,
        "gateway RSS {rss_kib} KiB with a stuck client"
    );
}
