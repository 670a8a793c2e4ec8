//! Character devices through the gateway: the UART on a socket chardev (input echoed by
//! the guest's serial-echo scenario; clients come and go while it writes), every backend
//! added, used and removed over QMP with QEMU 7.2's errors, query-chardev's filenames
//! compared with a live QEMU 7.2 given the same chardevs, and the UART on a ringbuf that
//! ringbuf-read empties.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::{path_arg, TempDir};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Reads `stream` until its text holds `want`; returns everything read.
fn read_until(stream: &mut UnixStream, want: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&text).contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in {:?}",
            String::from_utf8_lossy(&text)
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("console closed; read {:?}", String::from_utf8_lossy(&text)),
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// query-chardev as label -> (filename, frontend-open).
fn chardevs(c: &mut QmpClient) -> BTreeMap<String, (String, bool)> {
    c.ok("query-chardev", json!({}))
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["label"].as_str().unwrap().to_string(),
                (
                    i["filename"].as_str().unwrap().to_string(),
                    i["frontend-open"].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

fn generic(desc: &str) -> (String, String) {
    ("GenericError".into(), desc.into())
}

#[test]
fn the_uart_on_a_socket_chardev_and_every_backend_over_qmp() {
    let dir = TempDir::new("chardev");
    let con = dir.path().join("con.sock");
    let gw = Gateway::start_with(
        1,
        "scenario=serial-echo ticks=1",
        &[
            "--chardev",
            &format!("socket,id=con,path={},server=on,wait=off", path_arg(&con)),
            "--serial",
            "chardev:con",
        ],
    );
    let mut c = gw.client();
    let list = chardevs(&mut c);
    assert_eq!(
        list["con"],
        (
            format!("disconnected:unix:{},server=on", con.display()),
            true
        )
    );
    assert_eq!(
        c.err("chardev-remove", json!({"id": "con"})),
        generic("Chardev 'con' is busy")
    );
    // Clients come and go while the guest writes; each one's input reaches the guest.
    for word in ["hello", "again", "third"] {
        let mut client = UnixStream::connect(&con).unwrap();
        read_until(&mut client, "GUEST TICK");
        assert_eq!(
            chardevs(&mut c)["con"].0,
            format!("unix:{},server=on", con.display())
        );
        client.write_all(format!("{word}\r").as_bytes()).unwrap();
        read_until(&mut client, &format!("GUEST ECHO {word}\r\n"));
    }

    // Every backend: added, in query-chardev, removed.
    let listener = UnixListener::bind(dir.path().join("peer.sock")).unwrap();
    let out = dir.path().join("out.txt");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let backends = [
        ("n0", json!({"type": "null", "data": {}})),
        (
            "f0",
            json!({"type": "file", "data": {"out": path_arg(&out)}}),
        ),
        (
            "p0",
            json!({"type": "pipe", "data": {"device": path_arg(&fifo)}}),
        ),
        ("r0", json!({"type": "ringbuf", "data": {"size": 16}})),
        ("m0", json!({"type": "memory", "data": {}})),
        (
            "s0",
            json!({"type": "socket", "data": {"addr": {"type": "unix",
            "data": {"path": path_arg(&dir.path().join("s0.sock"))}}, "server": true, "wait": false}}),
        ),
        (
            "c0",
            json!({"type": "socket", "data": {"addr": {"type": "unix",
            "data": {"path": path_arg(&dir.path().join("peer.sock"))}}, "server": false}}),
        ),
        (
            "u0",
            json!({"type": "udp", "data": {"remote": {"type": "inet",
            "data": {"host": "127.0.0.1", "port": "4599"}}}}),
        ),
    ];
    for (id, backend) in &backends {
        assert_eq!(
            c.ok("chardev-add", json!({"id": id, "backend": backend})),
            json!({})
        );
    }
    let pty = c.ok(
        "chardev-add",
        json!({"id": "t0", "backend": {"type": "pty", "data": {}}}),
    );
    let pty_path = pty["pty"]
        .as_str()
        .expect("chardev-add pty answers its path");
    assert!(std::path::Path::new(pty_path).exists(), "{pty_path}");
    let (peer, _) = listener.accept().unwrap();
    let list = chardevs(&mut c);
    assert_eq!(list["t0"], (format!("pty:{pty_path}"), false));
    assert_eq!(list["c0"], ("unix:".into(), false));
    for (id, name) in [
        ("n0", "null"),
        ("f0", "file"),
        ("p0", "pipe"),
        ("r0", "ringbuf"),
        ("m0", "memory"),
        ("u0", "udp"),
    ] {
        assert_eq!(list[id], (name.into(), false), "{id}");
    }

    // The same chardevs on a live QEMU 7.2: the same filenames.
    let qdir = TempDir::new("chardev-qemu");
    let qfifo = qdir.path().join("fifo");
    nix::unistd::mkfifo(&qfifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let qlistener = UnixListener::bind(qdir.path().join("peer.sock")).unwrap();
    let qemu = Qemu::try_start(&[
        "-chardev",
        "null,id=n0",
        "-chardev",
        &format!("file,id=f0,path={}", path_arg(&qdir.path().join("out.txt"))),
        "-chardev",
        &format!("pipe,id=p0,path={}", path_arg(&qfifo)),
        "-chardev",
        "ringbuf,id=r0,size=16",
        "-chardev",
        "memory,id=m0",
        "-chardev",
        &format!(
            "socket,id=s0,path={},server=on,wait=off",
            path_arg(&qdir.path().join("s0.sock"))
        ),
        "-chardev",
        "udp,id=u0,host=127.0.0.1,port=4599",
        "-chardev",
        "pty,id=t0",
    ])
    .expect("QEMU takes the chardevs");
    let mut q = qemu.client();
    // The client as chardev-add makes it (QEMU's command line shows its first
    // connection as disconnected:).
    q.ok(
        "chardev-add",
        json!({"id": "c0", "backend": {"type": "socket", "data": {"addr":
        {"type": "unix", "data": {"path": path_arg(&qdir.path().join("peer.sock"))}},
        "server": false}}}),
    );
    let qpeer = qlistener.accept().unwrap();
    // QEMU shows a client's connection once its main loop ran.
    let deadline = Instant::now() + WAIT;
    let theirs = loop {
        let theirs = chardevs(&mut q);
        if theirs["c0"].0 == "unix:" || Instant::now() > deadline {
            break theirs;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let qdir_text = qdir.path().display().to_string();
    let dir_text = dir.path().display().to_string();
    for (id, _) in backends.iter().chain([("t0", json!(null))].iter()) {
        let (ours, their) = (&list[*id], &theirs[*id]);
        let their_name = their.0.replace(&qdir_text, &dir_text);
        if *id == "t0" {
            assert!(their_name.starts_with("pty:/dev/pts/"), "{their_name}");
            continue;
        }
        assert_eq!((&ours.0, ours.1), (&their_name, their.1), "{id}");
    }
    // HMP's info chardev: each of these chardevs' line as QEMU's (compared by label:
    // QEMU lists its chardevs in its hash table's order, and has its monitor's too).
    let info = |c: &mut QmpClient, own_dir: &str| -> BTreeMap<String, String> {
        let text = c.ok(
            "human-monitor-command",
            json!({"command-line": "info chardev"}),
        );
        let text = text.as_str().expect("HMP answers text").to_string();
        assert!(text.ends_with("\r\n"), "{text:?}");
        text.split_terminator("\r\n")
            .map(|line| {
                let (label, rest) = line.split_once(": ").expect("LABEL: filename=...");
                (label.to_string(), rest.replace(own_dir, &dir_text))
            })
            .collect()
    };
    let (ours_info, their_info) = (info(&mut c, &dir_text), info(&mut q, &qdir_text));
    for (id, _) in &backends {
        assert_eq!(ours_info.get(*id), their_info.get(*id), "info chardev {id}");
    }
    assert!(their_info["t0"].starts_with("filename=pty:/dev/pts/"));
    assert_eq!(ours_info["t0"], format!("filename=pty:{pty_path}"));
    // The client's server goes: both say so.
    drop((peer, qpeer));
    let deadline = Instant::now() + WAIT;
    let gone = format!(
        "disconnected:unix:{}",
        dir.path().join("peer.sock").display()
    );
    while chardevs(&mut c)["c0"].0 != gone
        || chardevs(&mut q)["c0"].0.replace(&qdir_text, &dir_text) != gone
    {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            chardevs(&mut c)["c0"],
            chardevs(&mut q)["c0"]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The errors, as QEMU words them, on both.
    let bad: [(Value, (String, String)); 4] = [
        (json!({"id": "n0", "backend": {"type": "null", "data": {}}}),
            generic("Chardev with id 'n0' already exists")),
        (json!({"id": "x", "backend": {"type": "file", "data": {"out": "/nonexistent/a"}}}),
            generic("Failed to add chardev 'x': Could not open '/nonexistent/a': No such file or directory")),
        (json!({"id": "x", "backend": {"type": "ringbuf", "data": {"size": 1000}}}),
            generic("Failed to add chardev 'x': size of ringbuf chardev must be power of two")),
        (json!({"id": "x", "backend": {"type": "foo", "data": {}}}),
            generic("Parameter 'type' does not accept value 'foo'")),
    ];
    for (args, want) in &bad {
        assert_eq!(&c.err("chardev-add", args.clone()), want, "{args}");
        assert_eq!(&q.err("chardev-add", args.clone()), want, "QEMU: {args}");
    }
    for (cmd, args, want) in [
        (
            "chardev-remove",
            json!({"id": "zz"}),
            generic("Chardev 'zz' not found"),
        ),
        (
            "ringbuf-read",
            json!({"device": "n0", "size": 1}),
            generic("n0 is not a ringbuf device"),
        ),
        (
            "ringbuf-read",
            json!({"device": "zz", "size": 1}),
            generic("Device 'zz' not found"),
        ),
        (
            "ringbuf-read",
            json!({"device": "r0", "size": 0}),
            generic("size must be greater than zero"),
        ),
        (
            "ringbuf-write",
            json!({"device": "r0", "data": "Q!Q", "format": "base64"}),
            generic("Base64 data contains invalid characters"),
        ),
    ] {
        assert_eq!(c.err(cmd, args.clone()), want, "{cmd} {args}");
        assert_eq!(q.err(cmd, args.clone()), want, "QEMU: {cmd} {args}");
    }
    // ringbuf-write and -read as QEMU: the ring keeps the newest 16, reads consume,
    // utf8 of bytes that are not UTF-8, base64.
    for client in [&mut c, &mut q] {
        client.ok(
            "ringbuf-write",
            json!({"device": "r0", "data": "0123456789abcdefXY"}),
        );
        assert_eq!(
            client.ok("ringbuf-read", json!({"device": "r0", "size": 4})),
            json!("2345")
        );
        client.ok(
            "ringbuf-write",
            json!({"device": "r0", "data": "/w==", "format": "base64"}),
        );
        assert_eq!(
            client.ok(
                "ringbuf-read",
                json!({"device": "r0", "size": 100, "format": "base64"})
            ),
            json!("Njc4OWFiY2RlZlhZ/w==")
        );
        client.ok(
            "ringbuf-write",
            json!({"device": "m0", "data": "a\u{0}b\u{e9}"}),
        );
        client.ok(
            "ringbuf-write",
            json!({"device": "m0", "data": "/w==", "format": "base64"}),
        );
        assert_eq!(
            client.ok("ringbuf-read", json!({"device": "m0", "size": 100})),
            json!("a\u{0}b\u{e9}\u{fffd}")
        );
        assert_eq!(
            client.ok("ringbuf-read", json!({"device": "m0", "size": 100})),
            json!("")
        );
    }
    for (id, _) in &backends {
        c.ok("chardev-remove", json!({"id": id}));
    }
    c.ok("chardev-remove", json!({"id": "t0"}));
    assert_eq!(chardevs(&mut c).keys().collect::<Vec<_>>(), ["con"]);
    assert!(
        !dir.path().join("s0.sock").exists(),
        "s0's socket removed with it"
    );
    // The console still works after all that, and after a live upgrade (the new
    // vmm-core's UART is on the same chardev), with the same client connected.
    let mut client = UnixStream::connect(&con).unwrap();
    client.write_all(b"last\r").unwrap();
    read_until(&mut client, "GUEST ECHO last\r\n");
    c.ok("__io.flotilla_vmm-upgrade", json!({}));
    client.write_all(b"upgraded\r").unwrap();
    read_until(&mut client, "GUEST ECHO upgraded\r\n");
    read_until(&mut client, "GUEST TICK");
}

#[test]
fn the_uart_on_a_ringbuf_is_read_over_qmp() {
    let gw = Gateway::start_with(
        1,
        "",
        &[
            "--chardev",
            "ringbuf,id=con,size=65536",
            "--serial",
            "chardev:con",
        ],
    );
    let mut c = gw.client();
    let deadline = Instant::now() + WAIT;
    let mut text = String::new();
    while !text.contains("GUEST IDLE\r\n") {
        assert!(Instant::now() < deadline, "ringbuf holds {text:?}");
        std::thread::sleep(Duration::from_millis(50));
        text += c
            .ok("ringbuf-read", json!({"device": "con", "size": 4096}))
            .as_str()
            .unwrap();
    }
    // Every line the guest printed, from its first, in order; nothing else.
    assert!(text.starts_with("GUEST "), "{text:?}");
    assert!(text.ends_with("GUEST IDLE\r\n"), "{text:?}");
    assert!(text.contains("\r\nGUEST READY "), "{text:?}");
    for line in text.split_terminator("\r\n") {
        assert!(line.starts_with("GUEST "), "{line:?} in {text:?}");
    }
    assert_eq!(
        c.ok("ringbuf-read", json!({"device": "con", "size": 4096})),
        json!("")
    );
    assert_eq!(chardevs(&mut c)["con"], ("ringbuf".to_string(), true));
}

/// A bad --chardev or --serial stops the gateway before anything starts, in QEMU's words
/// where QEMU has them.
#[test]
fn bad_chardev_command_lines_are_refused_at_once() {
    let cases: [(&[&str], &str); 6] = [
        (&["--serial", "chardev:nope"], "Chardev 'nope' not found"),
        (&["--chardev", "null"], "chardev: no id specified"),
        (
            &["--chardev", "ringbuf,id=r,size=1000"],
            "size of ringbuf chardev must be power of two",
        ),
        (
            &["--chardev", "file,id=f,path=/nonexistent/x"],
            "Failed to add chardev 'f': Could not open '/nonexistent/x': No such file or directory",
        ),
        (
            &["--chardev", "null,id=a", "--chardev", "null,id=a"],
            "Chardev with id 'a' already exists",
        ),
        (
            &["--chardev", "vc,id=v"],
            "'vc' is not a valid char driver name",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = std::process::Command::new(flotilla_tests::bin("qmp-gateway"));
        cmd.arg("--kernel")
            .arg(flotilla_tests::test_guest())
            .args(args);
        let start = Instant::now();
        let (status, _, err) = flotilla_tests::run_to_end(cmd, WAIT);
        assert!(!status.success(), "{args:?} started");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(start.elapsed() < Duration::from_secs(5), "{args:?}");
    }
    // A ringbuf's size= in QEMU's own words: qemu-system-x86_64 -chardev refuses each.
    for chardev in [
        "ringbuf,id=r,size=1.5",
        "ringbuf,id=r,size=16E",
        "ringbuf,id=r,size=100",
    ] {
        let want = flotilla_tests::qemu::qemu_whole_refusal(&["-chardev", chardev]);
        let mut cmd = std::process::Command::new(flotilla_tests::bin("qmp-gateway"));
        cmd.arg("--kernel")
            .arg(flotilla_tests::test_guest())
            .args(["--chardev", chardev]);
        let (status, _, err) = flotilla_tests::run_to_end(cmd, WAIT);
        assert!(!status.success(), "{chardev} started");
        assert!(
            err.contains(&want),
            "{chardev}: QEMU says {want:?}, we {err}"
        );
    }
}
