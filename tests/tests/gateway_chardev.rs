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
use flotilla_tests::qmp::{error_of, Gateway, QmpClient};
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
    // Left: the UART's, and the --qmp socket's (QEMU's -qmp label).
    assert_eq!(
        chardevs(&mut c).keys().collect::<Vec<_>>(),
        ["compat_monitor0", "con"]
    );
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

/// A listening Unix socket at `path` as an inheritable fd (no close-on-exec), as libvirt
/// hands QEMU its monitor's socket: the fd number, and the fd to close once the child
/// has it.
fn inheritable_listener(path: &std::path::Path) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    let l = UnixListener::bind(path).unwrap();
    // SAFETY: dup of an fd we hold; the copy has no FD_CLOEXEC.
    let fd = unsafe { libc::dup(l.as_raw_fd()) };
    assert!(fd >= 0);
    // SAFETY: fd is ours alone.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// `text` with every loopback port written PORT.
fn loopback_ports(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("127.0.0.1:") {
        let (head, tail) = rest.split_at(i + "127.0.0.1:".len());
        out += head;
        let digits = tail.chars().take_while(char::is_ascii_digit).count();
        out += "PORT";
        rest = &tail[digits..];
    }
    out + rest
}

/// One VM's monitors (the gateway's or QEMU's), given the same chardevs and -mon/--mon.
struct Monitors {
    dir: std::path::PathBuf,
    /// The command line's own client.
    qmp: QmpClient,
}

impl Monitors {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// query-chardev with this VM's directory written DIR, as (label, filename, open).
    fn chardevs(&mut self) -> Vec<(String, String, bool)> {
        let dir = self.dir.display().to_string();
        let mut rows: Vec<_> = chardevs(&mut self.qmp)
            .into_iter()
            .map(|(l, (f, open))| (l, f.replace(&dir, "DIR"), open))
            .collect();
        rows.sort();
        rows
    }

    /// getfd of `fd` on the command line's client, then add_client; the reply.
    fn add_client(&mut self, protocol: &str, fd: std::os::fd::BorrowedFd) -> Value {
        self.qmp
            .send_with_fds(br#"{"execute":"getfd","arguments":{"fdname":"cl"}}"#, &[fd]);
        assert_eq!(self.qmp.reply(), json!({"return": {}}));
        self.qmp
            .execute("add_client", json!({"protocol": protocol, "fdname": "cl"}))
    }
}

/// Reads an HMP monitor until its prompt; returns what came.
fn hmp_until_prompt(s: &mut UnixStream) -> String {
    read_until(s, "(qemu) ")
}

/// Bytes an HMP monitor writes back for `typed`, up to and with its next prompt.
fn hmp(s: &mut UnixStream, typed: &[u8]) -> String {
    s.write_all(typed).unwrap();
    hmp_until_prompt(s)
}

/// Whether the peer of `s` closed it (within a moment).
fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 512];
    matches!(s.read(&mut b), Ok(0))
}

fn pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().unwrap()
}

/// --mon, as QEMU's -mon: a QMP monitor and an HMP monitor on socket chardevs (clients
/// come and go; each gets its own session), libvirt's monitor on a listening socket it
/// passes as fd=N, the chardevs in query-chardev beside the --qmp socket's
/// compat_monitor0, and add_client: every answer, error and what the peer of the fd sees
/// compared with a live QEMU 7.2 given the same command line.
#[test]
fn monitors_on_chardevs_and_add_client_as_qemu() {
    use std::os::fd::{AsFd, AsRawFd};
    let gw_dir = TempDir::new("monitors");
    let q_dir = TempDir::new("monitors-qemu");
    // The same chardevs and monitors for both; `dash` is "--" (ours) or "-" (QEMU's).
    let args = |dir: &std::path::Path, fd: i32, dash: &str| -> Vec<String> {
        let sock = |n: &str| format!("{},server=on,wait=off", path_arg(&dir.join(n)));
        [
            ("chardev", format!("socket,id=qm,path={}", sock("qm.sock"))),
            ("mon", "chardev=qm,mode=control,id=qmpmon".into()),
            ("chardev", format!("socket,id=qp,path={}", sock("qp.sock"))),
            ("mon", "chardev=qp,mode=control,pretty=on".into()),
            ("chardev", format!("socket,id=hm,path={}", sock("hm.sock"))),
            ("mon", "chardev=hm".into()),
            (
                "chardev",
                format!("socket,id=plain,path={}", sock("plain.sock")),
            ),
            ("chardev", "null,id=nul".into()),
            // Monitors on chardevs that are no sockets: their output in a ring.
            ("chardev", "ringbuf,id=rq".into()),
            ("mon", "chardev=rq,mode=control".into()),
            ("chardev", "ringbuf,id=rh".into()),
            ("mon", "chardev=rh".into()),
            // libvirt's monitor, on the listening socket it passes.
            (
                "chardev",
                format!("socket,id=charmonitor,fd={fd},server=on,wait=off"),
            ),
            ("mon", "chardev=charmonitor,id=monitor,mode=control".into()),
        ]
        .into_iter()
        .flat_map(|(opt, value)| [format!("{dash}{opt}"), value])
        .collect()
    };
    let gw_fd = inheritable_listener(&gw_dir.path().join("libvirt.sock"));
    let gw_args = args(gw_dir.path(), gw_fd.as_raw_fd(), "--");
    let mut gw_args: Vec<&str> = gw_args.iter().map(String::as_str).collect();
    // A TCP listener too: compat_monitor1 (QEMU's second -qmp).
    gw_args.extend(["--qmp-tcp", "127.0.0.1:0"]);
    let gw = Gateway::start_with(1, "", &gw_args);
    drop(gw_fd);
    let q_fd = inheritable_listener(&q_dir.path().join("libvirt.sock"));
    let q_args = args(q_dir.path(), q_fd.as_raw_fd(), "-");
    let mut q_args: Vec<&str> = q_args.iter().map(String::as_str).collect();
    // The gateway's UART is on its stdout by default: QEMU's serial0 too.
    q_args.extend(["-serial", "stdio"]);
    q_args.extend(["-qmp", "tcp:127.0.0.1:0,server=on,wait=off"]);
    let qemu = Qemu::try_start(&q_args).unwrap_or_else(|e| panic!("QEMU refused: {e}"));
    drop(q_fd);
    let mut vms = [
        Monitors {
            dir: gw_dir.path().to_path_buf(),
            qmp: gw.client(),
        },
        Monitors {
            dir: q_dir.path().to_path_buf(),
            qmp: qemu.client(),
        },
    ];
    // The gateway's --qmp socket is in its own scratch directory: seen as QEMU's -qmp.
    let gw_qmp = gw.qmp.display().to_string();
    let q_qmp = qemu.qmp.display().to_string();
    let both = |vms: &mut [Monitors; 2], f: &dyn Fn(&mut Monitors) -> Value| {
        let ours = f(&mut vms[0]);
        let theirs = f(&mut vms[1]);
        assert_eq!(ours, theirs, "the gateway vs QEMU 7.2");
        ours
    };
    let listed = |vms: &mut [Monitors; 2]| {
        let fix = |rows: Vec<(String, String, bool)>, qmp: &str| -> Vec<_> {
            rows.into_iter()
                .map(|(l, f, o)| (l, loopback_ports(&f.replace(qmp, "QMP")), o))
                .collect()
        };
        // Either side may notice a client's hang-up a moment later than the other.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let ours = fix(vms[0].chardevs(), &gw_qmp);
            let theirs = fix(vms[1].chardevs(), &q_qmp);
            if ours == theirs || std::time::Instant::now() > deadline {
                assert_eq!(ours, theirs);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    listed(&mut vms);
    // A client of each TCP listener: connected, as QEMU shows it.
    let tcp: Vec<std::net::TcpStream> = vms
        .iter_mut()
        .map(|v| {
            let rows = v.chardevs();
            let row = rows.iter().find(|r| r.0 == "compat_monitor1").unwrap();
            let port = row
                .1
                .rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches(",server=on");
            let mut t = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
            t.set_read_timeout(Some(WAIT)).unwrap();
            let mut b = [0u8; 1];
            t.read_exact(&mut b).unwrap();
            t
        })
        .collect();
    listed(&mut vms);
    drop(tcp);
    // A listener's chardev is busy, and its label taken.
    both(&mut vms, &|v| {
        v.qmp
            .execute("chardev-remove", json!({"id": "compat_monitor0"}))
    });
    both(&mut vms, &|v| {
        let null = json!({"id": "compat_monitor1", "backend": {"type": "null", "data": {}}});
        v.qmp.execute("chardev-add", null)
    });

    // The monitors on ringbufs greeted once (QEMU offers no OOB on a ringbuf).
    let version = |b: &str| b.replace("7.2.0", "7.2.x").replace("7.2.22", "7.2.x");
    let ring = |v: &mut Monitors, id: &str| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = v
                .qmp
                .ok("ringbuf-read", json!({"device": id, "size": 4096}));
            let text = text.as_str().unwrap_or_default().to_string();
            if !text.is_empty() || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for v in vms.iter_mut() {
        let greeting = ring(v, "rq");
        let greeting: Value = serde_json::from_str(greeting.trim_end()).unwrap();
        assert_eq!(greeting["QMP"]["capabilities"], json!([]));
        assert_eq!(
            version(&ring(v, "rh")),
            "QEMU 7.2.x monitor - type 'help' for more information\r\n(qemu) "
        );
    }

    // The QMP monitor: a greeting per client, negotiation, commands; busy while held.
    for _round in 0..2 {
        let mut mons: Vec<QmpClient> = vms
            .iter()
            .map(|v| QmpClient::connect(&v.path("qm.sock")))
            .collect();
        for m in &mut mons {
            assert_eq!(
                m.err("query-status", json!({})),
                (
                    "CommandNotFound".into(),
                    "Expecting capabilities negotiation with 'qmp_capabilities'".into()
                )
            );
            assert_eq!(m.ok("qmp_capabilities", json!({})), json!({}));
            assert!(m.ok("query-status", json!({}))["status"].is_string());
        }
        listed(&mut vms);
        both(&mut vms, &|v| {
            v.qmp.execute("chardev-remove", json!({"id": "qm"}))
        });
        // add_client to a monitor chardev that has its client: refused, the fd closed.
        for v in vms.iter_mut() {
            let (mut a, b) = pair();
            assert_eq!(
                error_of(&v.add_client("qm", b.as_fd())),
                generic("failed to add client")
            );
            drop(b);
            assert!(closed(&mut a));
        }
        drop(mons);
        // The chardev sees its client go before it takes the next.
        let deadline = Instant::now() + WAIT;
        while vms[0]
            .chardevs()
            .iter()
            .any(|r| r.0 == "qm" && !r.1.starts_with("disconnected"))
        {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // pretty=on: QEMU's pretty form, byte for byte (its greeting names its version).
    let pretty: Vec<String> = vms
        .iter()
        .map(|v| {
            let mut s = UnixStream::connect(v.path("qp.sock")).unwrap();
            assert!(read_until(&mut s, "\r\n}\r\n").starts_with("{\r\n    \"QMP\": {\r\n"));
            let mut replies = String::new();
            for command in ["qmp_capabilities", "nope", "query-fdsets", "query-name"] {
                s.write_all(json!({ "execute": command }).to_string().as_bytes())
                    .unwrap();
                replies += &read_until(&mut s, "\r\n}\r\n");
            }
            replies
        })
        .collect();
    assert_eq!(pretty[0], pretty[1]);

    // The HMP monitor: banner and prompt, QEMU's echo, help-less commands.
    let mut hmps: Vec<UnixStream> = vms
        .iter()
        .map(|v| UnixStream::connect(v.path("hm.sock")).unwrap())
        .collect();
    let banners: Vec<String> = hmps.iter_mut().map(hmp_until_prompt).collect();
    assert_eq!(version(&banners[0]), version(&banners[1]));
    assert_eq!(
        version(&banners[0]),
        "QEMU 7.2.x monitor - type 'help' for more information\r\n(qemu) "
    );
    for typed in [
        &b"info name\n"[..],
        b"foo bar\r",
        b"infx\x7fo nam\x1b[De\x1b[Ce\n",
        b"info st\x1b[1~\x1b[3~\x05 x\x17\x17\x17\n",
        b"\n",
        b"info status\r\n",
    ] {
        let ours = hmp(&mut hmps[0], typed);
        let theirs = hmp(&mut hmps[1], typed);
        if typed.starts_with(b"info status") {
            // QEMU waits in prelaunch, the gateway's guest runs: the echo is the same.
            let echo = |s: &str| s.split("\r\n").next().unwrap_or_default().to_string();
            assert_eq!(echo(&ours), echo(&theirs));
            assert!(
                ours.contains("\r\nVM status: running\r\n(qemu) "),
                "{ours:?}"
            );
        } else {
            assert_eq!(ours, theirs, "typed {typed:?}");
        }
    }
    // A second client waits while the first is served; the first goes, it is served.
    let mut waiting: Vec<UnixStream> = vms
        .iter()
        .map(|v| UnixStream::connect(v.path("hm.sock")).unwrap())
        .collect();
    drop(hmps);
    for w in &mut waiting {
        assert!(version(&hmp_until_prompt(w)).starts_with("QEMU 7.2.x monitor"));
    }
    drop(waiting);

    // add_client's errors, in QEMU's words; the fd is closed after each.
    both(&mut vms, &|v| {
        v.qmp
            .execute("add_client", json!({"protocol": "vnc", "fdname": "none"}))
    });
    for protocol in ["spice", "foo", "nul"] {
        let mut replies = Vec::new();
        for v in vms.iter_mut() {
            let (mut a, b) = pair();
            replies.push(v.add_client(protocol, b.as_fd()));
            drop(b);
            assert!(closed(&mut a), "{protocol}: the fd stays open");
            // Taken even so: the name is gone.
            assert_eq!(
                error_of(&v.qmp.execute("closefd", json!({"fdname": "cl"}))).1,
                "File descriptor named 'cl' not found"
            );
        }
        assert_eq!(replies[0], replies[1], "{protocol}");
    }
    // An fd that is no socket, to a socket chardev with no client.
    both(&mut vms, &|v| {
        let (r, _w) = nix::unistd::pipe().unwrap();
        v.add_client("plain", r.as_fd())
    });
    // vnc: {} (QEMU has no display either: it keeps the fd unused).
    both(&mut vms, &|v| {
        let (_a, b) = pair();
        v.add_client("vnc", b.as_fd())
    });
    // The gateway closes it, so its peer is not left waiting.
    let (mut a, b) = pair();
    assert_eq!(vms[0].add_client("vnc", b.as_fd()), json!({"return": {}}));
    drop(b);
    assert!(closed(&mut a), "a vnc client's fd is left open");

    // add_client's connections: a new QMP session on the monitor's chardev, an HMP
    // session, a plain socket chardev's client.
    for v in vms.iter_mut() {
        let (a, b) = pair();
        assert_eq!(v.add_client("qm", b.as_fd()), json!({"return": {}}));
        drop(b);
        let mut m = QmpClient::over(a);
        assert_eq!(m.ok("qmp_capabilities", json!({})), json!({}));
        assert!(m.ok("query-chardev", json!({})).is_array());
        let (mut a, b) = pair();
        assert_eq!(v.add_client("hm", b.as_fd()), json!({"return": {}}));
        drop(b);
        assert!(version(&hmp_until_prompt(&mut a)).starts_with("QEMU 7.2.x monitor"));
        let (_a, b) = pair();
        assert_eq!(v.add_client("plain", b.as_fd()), json!({"return": {}}));
        // The monitor's chardev has a client with no path now, as QEMU shows it.
        let rows = v.chardevs();
        let row = rows.iter().find(|r| r.0 == "qm").unwrap();
        assert_eq!(row.1, "unix:,server=on");
        drop(m);
    }
    listed(&mut vms);

    // libvirt's monitor on the socket it passed as fd=N: QMP, with fds over it.
    for v in vms.iter_mut() {
        let mut m = QmpClient::negotiated(&v.path("libvirt.sock"));
        let (r, _w) = nix::unistd::pipe().unwrap();
        m.send_with_fds(
            br#"{"execute":"getfd","arguments":{"fdname":"lv"}}"#,
            &[r.as_fd()],
        );
        assert_eq!(m.reply(), json!({"return": {}}));
        assert_eq!(m.ok("closefd", json!({"fdname": "lv"})), json!({}));
    }

    // Ours alone: a --qmp socket serves many clients at once, so add_client to its
    // chardev makes one more (QEMU's takes one client, and refuses a second).
    let (a, b) = pair();
    assert_eq!(
        vms[0].add_client("compat_monitor0", b.as_fd()),
        json!({"return": {}})
    );
    let mut extra = QmpClient::over(a);
    assert_eq!(extra.ok("qmp_capabilities", json!({})), json!({}));
    let (_a, b) = pair();
    assert_eq!(
        error_of(&vms[1].add_client("compat_monitor0", b.as_fd())),
        generic("failed to add client")
    );
}

/// The gateway with `args` must stop at once: what it wrote on stderr.
fn refused(args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(flotilla_tests::bin("qmp-gateway"));
    cmd.arg("--kernel")
        .arg(flotilla_tests::test_guest())
        .args(args);
    let (status, _, err) = flotilla_tests::run_to_end(cmd, WAIT);
    assert!(!status.success(), "{args:?} started");
    err
}

/// A bad --mon stops the gateway at once with qemu-system-x86_64 -mon's words; so does
/// a --chardev fd= that is no inherited socket.
#[test]
fn bad_mon_arguments_are_refused_as_qemu_refuses_them() {
    use flotilla_tests::qemu::{qemu_refusal, qemu_whole_refusal};
    for mon in [
        "chardev=c,mode=foo",
        "mode=control",
        "chardev=zz",
        "chardev=c,pretty=maybe",
        "chardev=c,bogus=1",
        "chardev=c,id=",
        "chardev=c,mode=readline,pretty=on",
    ] {
        let want = qemu_whole_refusal(&["-chardev", "null,id=c", "-mon", mon]);
        let err = refused(&["--chardev", "null,id=c", "--mon", mon]);
        assert!(err.contains(&want), "{mon}: QEMU says {want:?}, we {err}");
    }
    // Twice on one chardev; one id twice.
    for args in [
        &[
            "chardev",
            "null,id=c",
            "mon",
            "chardev=c",
            "mon",
            "chardev=c",
        ][..],
        &[
            "chardev",
            "null,id=c",
            "chardev",
            "null,id=d",
            "mon",
            "c,id=m",
            "mon",
            "d,id=m",
        ],
    ] {
        let with = |dash: &str| -> Vec<String> {
            let flag = |(i, a): (usize, &&str)| match i % 2 {
                0 => format!("{dash}{a}"),
                _ => a.to_string(),
            };
            args.iter().enumerate().map(flag).collect()
        };
        let (ours, theirs) = (with("--"), with("-"));
        let want = qemu_refusal(&theirs.iter().map(String::as_str).collect::<Vec<_>>());
        let err = refused(&ours.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            err.contains(&want),
            "{args:?}: QEMU says {want:?}, we {err}"
        );
    }
    // A chardev the UART has (QEMU takes -mon first, then aborts on -serial's).
    let err = refused(&[
        "--chardev",
        "null,id=c",
        "--serial",
        "chardev:c",
        "--mon",
        "c",
    ]);
    assert!(err.contains("Device 'c' is in use"), "{err}");
    // fd= must be an inherited socket, in QEMU's words.
    for (fd, want) in [
        ("abc", "Unable to parse FD number abc"),
        ("99", "File descriptor '99' is not a socket"),
    ] {
        let chardev = format!("socket,id=s,fd={fd},server=on,wait=off");
        assert!(qemu_whole_refusal(&["-chardev", &chardev]).contains(want));
        let err = refused(&["--chardev", &chardev]);
        assert!(err.contains(want), "{chardev}: {err}");
    }
}
