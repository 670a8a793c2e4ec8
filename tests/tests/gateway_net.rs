//! NICs through the gateway: `--netdev` + `--device virtio-net-pci` start a net daemon per
//! NIC, and the test guest's virtio-net driver on vmm-core talks through it. Over a tap:
//! the host pings the guest and checks the datagrams it sends; set_link makes the guest
//! see its link go down and come back; a SIGKILLed net daemon is replaced and the guest
//! answers again, twenty times in a row under traffic. Over the datagram backend: the receive filter the guest programs shows
//! in query-rx-filter (with NIC_RX_FILTER_CHANGED), and two VMs exchange frames. Bad
//! --netdev/--device options fail the start with one clear line.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::net::Tap;
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::Gateway;
use flotilla_tests::{bin, require_tool, run_to_end, test_guest};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn ping(ip: &str, count: u32) -> bool {
    Command::new(require_tool("ping", "iputils-ping"))
        .args(["-c", &count.to_string(), "-W", "2", "-i", "0.2", ip])
        .output()
        .expect("running ping")
        .status
        .success()
}

/// Pings until one answer comes back (a daemon being replaced takes a moment).
fn ping_within(ip: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ping(ip, 1) {
            return true;
        }
    }
    false
}

/// The payload byte the guest's net-echo puts at `i` of datagram `seq`.
fn echo_byte(seq: u64, i: usize) -> u8 {
    match i {
        0..8 => seq.to_le_bytes()[i],
        _ => seq.wrapping_add(i as u64) as u8,
    }
}

fn net_daemon_pid(gw: &mut Gateway) -> i32 {
    let line = gw.vm.expect_line("the net daemon's pid", TIMEOUT, |l| {
        l.contains("net daemon pid ")
    });
    line.split("net daemon pid ")
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

#[test]
fn guest_on_a_tap_answers_ping_sends_datagrams_follows_set_link_and_outlives_its_daemon() {
    let tap = Tap::create("fltt1", "10.77.51.1/24");
    let sink = UdpSocket::bind("10.77.51.1:5201").unwrap();
    sink.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut gw = Gateway::start_with(
        1,
        "scenario=net-echo ip=10.77.51.2/24 peer=10.77.51.1 port=5201 count=64",
        &[
            "--netdev",
            &format!("tap,id=n0,ifname={}", tap.name()),
            "--device",
            "virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:00:51:02",
        ],
    );
    let pid = net_daemon_pid(&mut gw);
    gw.vm.expect_line("the guest's NIC", TIMEOUT, |l| {
        l.starts_with("GUEST NET ECHO READY ip=10.77.51.2/24 mac=52:54:00:00:51:02 link=up")
    });
    // The datagrams: all of them, in order, each byte as the guest wrote it.
    let mut buf = [0u8; 2048];
    for seq in 0..64u64 {
        let (n, from) = sink.recv_from(&mut buf).expect("a datagram from the guest");
        assert_eq!(from.ip().to_string(), "10.77.51.2");
        assert!(n >= 8, "datagram {seq}: {n} bytes");
        let got = u64::from_le_bytes(buf[..8].try_into().unwrap());
        assert_eq!(got, seq, "datagrams out of order or lost");
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, echo_byte(seq, i), "datagram {seq} byte {i}");
        }
    }
    gw.vm.expect_line("the guest's count", TIMEOUT, |l| {
        l.starts_with("GUEST NET SENT count=64")
    });
    assert!(ping("10.77.51.2", 3), "the guest does not answer ping");

    let mut c = gw.client();
    let filter = c.ok("query-rx-filter", json!({"name": "nic0"}));
    assert_eq!(filter[0]["main-mac"], "52:54:00:00:51:02");
    assert_eq!(filter[0]["name"], "nic0");

    c.ok("set_link", json!({"name": "nic0", "up": false}));
    gw.vm
        .expect_line("the guest to see its link go down", TIMEOUT, |l| {
            l == "GUEST NET LINK down"
        });
    assert!(
        !ping("10.77.51.2", 2),
        "frames still flow with the link down"
    );
    // By the netdev's name, as QEMU allows.
    c.ok("set_link", json!({"name": "n0", "up": true}));
    gw.vm
        .expect_line("the guest to see its link come back", TIMEOUT, |l| {
            l == "GUEST NET LINK up"
        });
    assert!(ping_within("10.77.51.2", Duration::from_secs(10)));

    // A daemon killed outright is replaced; the guest answers again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exited = c.event("__io.flotilla_NET_DAEMON_EXITED");
    assert_eq!(exited["data"]["device"], "nic0");
    let restarted = c.event("__io.flotilla_NET_DAEMON_RESTARTED");
    assert_ne!(restarted["data"]["pid"], json!(pid));
    assert!(
        ping_within("10.77.51.2", Duration::from_secs(10)),
        "no answer after the daemon was replaced"
    );
    drop(tap);
}

/// One UDP round trip through the guest's echo: a fresh payload out, the same payload
/// back (frames that met a dead daemon are lost as on a wire: it retries).
fn echo_round_trip(sock: &UdpSocket, to: &str, tag: u64, within: Duration) -> bool {
    let payload = format!("flotilla echo {tag}");
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        let _ = sock.send_to(payload.as_bytes(), to);
        while let Ok(n) = sock.recv(&mut buf) {
            if &buf[..n] == payload.as_bytes() {
                return true;
            }
        }
    }
    false
}

#[test]
fn twenty_sigkills_of_the_net_daemon_under_traffic_leave_the_guest_working() {
    let tap = Tap::create("fltt4", "10.77.54.1/24");
    let mut gw = Gateway::start_with(
        1,
        "scenario=net-echo ip=10.77.54.2/24",
        &[
            "--netdev",
            &format!("tap,id=n0,ifname={}", tap.name()),
            "--device",
            "virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:00:54:02",
        ],
    );
    let mut pid = net_daemon_pid(&mut gw);
    gw.vm
        .expect_prefix("GUEST NET ECHO READY ip=10.77.54.2/24", TIMEOUT);
    let guest = "10.77.54.2:7";
    let probe = UdpSocket::bind("10.77.54.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(echo_round_trip(&probe, guest, 0, Duration::from_secs(10)));

    // Traffic both ways while the daemon dies: datagrams in, the guest's echoes out, so
    // chains are in flight on the receive and transmit rings at every kill.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let sock = UdpSocket::bind("10.77.54.1:0").unwrap();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sock.send_to(&sent.to_le_bytes(), guest);
                sent += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            sent
        })
    };
    let mut c = gw.client();
    for kill in 1..=20u64 {
        // Kills at different moments of the traffic (a fixed sequence, so a failure repeats),
        // each daemon having served at least 300 ms: ten deaths in a row sooner after the
        // start are a daemon that cannot run, which the supervisor gives up on (README).
        std::thread::sleep(Duration::from_millis(300 + (kill * 37) % 200));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let exited = c.event("__io.flotilla_NET_DAEMON_EXITED");
        assert_eq!(exited["data"]["pid"], json!(pid), "kill {kill}: {exited}");
        let restarted = c.event("__io.flotilla_NET_DAEMON_RESTARTED");
        pid = restarted["data"]["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("kill {kill}: no pid in {restarted}"));
        assert!(
            echo_round_trip(&probe, guest, kill, Duration::from_secs(10)),
            "kill {kill}: the guest no longer echoes through the new daemon:\n{}",
            gw.vm.transcript()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.join().unwrap();
    assert!(sent > 1000, "the load sent only {sent} datagrams");
    assert!(ping_within("10.77.54.2", Duration::from_secs(10)));
    // The power button ends net-echo, which waits for every frame it handed any of the
    // daemons to come back (a lost one is a GUEST ERROR line), then prints its counters.
    c.ok("system_powerdown", json!({}));
    let stats = gw.vm.expect_prefix("GUEST NET STATS", TIMEOUT);
    assert!(stats.contains(" rx_errors=0 "), "{stats}");
    // The guest's driver saw nothing wrong: no lost or stuck transmit frame, no bad used
    // entry.
    let transcript = gw.vm.transcript();
    assert!(
        !transcript.contains("GUEST ERROR"),
        "the guest reported errors:\n{transcript}"
    );
    drop(tap);
}

/// A host socket with room for a burst from several queues at once.
fn roomy_udp(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt with a pointer to a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn two_queue_pairs_over_a_multiqueue_tap_carry_frames_both_ways() {
    let tap = Tap::create("fltt2", "10.77.52.1/24");
    let sink = roomy_udp("10.77.52.1:5202");
    let mut gw = Gateway::start_with(
        2,
        "scenario=net-echo ip=10.77.52.2/24 peer=10.77.52.1 port=5202 count=400 \
         queue_pairs=2 ms=6000",
        &[
            "--netdev",
            &format!("tap,id=n0,ifname={},queues=2", tap.name()),
            "--device",
            "virtio-net-pci,netdev=n0,id=nic0",
        ],
    );
    gw.vm.expect_line("the guest's NIC", TIMEOUT, |l| {
        l.starts_with("GUEST NET ECHO READY ip=10.77.52.2/24") && l.ends_with("queue_pairs=2")
    });
    // HMP `info network` for the NIC (a line per queue pair, the model and MAC on the
    // first) and a netdev added after it that no NIC takes (its queues all index=0):
    // read before the traffic, n1 deleted again so that its queues on the tap take
    // none of it (the gateway ends with the guest), compared with QEMU's at the end.
    let n1 = json!({"type": "tap", "id": "n1", "ifname": tap.name(), "queues": 2,
                    "script": "no", "downscript": "no"});
    let info = |c: &mut flotilla_tests::qmp::QmpClient| {
        c.ok("netdev_add", n1.clone());
        c.ok(
            "human-monitor-command",
            json!({"command-line": "info network"}),
        )
    };
    let mut c = gw.client();
    let ours = info(&mut c);
    c.ok("netdev_del", json!({"id": "n1"}));
    // Every datagram arrives (in any order: the queues are independent), intact.
    let mut seen = vec![false; 400];
    let mut buf = [0u8; 2048];
    for _ in 0..400 {
        let n = sink.recv(&mut buf).expect("a datagram from the guest");
        let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
        assert!(
            seq < 400 && !seen[seq as usize],
            "datagram {seq} twice or unknown"
        );
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, echo_byte(seq, i), "datagram {seq} byte {i}");
        }
        seen[seq as usize] = true;
    }
    assert!(
        ping("10.77.52.2", 3),
        "no answer to ping with two queue pairs"
    );
    // Both pairs sent frames (the guest spreads its datagrams over them).
    for pair in 0..2 {
        let line = gw
            .vm
            .expect_line("the guest's per-queue counts", TIMEOUT, |l| {
                l.starts_with(&format!("GUEST NET QUEUE pair={pair} "))
            });
        let tx: u64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tx="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no tx= in {line}"));
        assert!(tx > 0, "queue pair {pair} sent nothing: {line}");
    }
    // QEMU 7.2 with the same NIC over the same tap: the traffic is over.
    let qemu = Qemu::try_start(&[
        "-netdev",
        &format!(
            "tap,id=n0,ifname={},queues=2,script=no,downscript=no",
            tap.name()
        ),
        "-device",
        "virtio-net-pci,netdev=n0,id=nic0",
    ])
    .unwrap_or_else(|e| panic!("QEMU refused the tap: {e}"));
    assert_eq!(ours, info(&mut qemu.client()), "ours, then QEMU's");
    assert!(
        ours.as_str()
            .is_some_and(|t| t.contains("\r\nnic0: index=1,type=nic,\r\n \\ n0: index=1,")),
        "{ours}"
    );
    drop(tap);
}

#[test]
fn the_filter_the_guest_programs_shows_in_query_rx_filter_with_one_event() {
    let mut gw = Gateway::start_with(
        1,
        "scenario=net-rxfilter promisc=0 allmulti=1 macs=02:00:00:00:00:01+02:00:00:00:00:02 \
         mcast=01:00:5e:00:00:fb vlan=5+100",
        &[
            "--netdev",
            "socket,id=n0,udp=127.0.0.1:47211,localaddr=127.0.0.1:47210",
            "--device",
            "virtio-net-pci,netdev=n0,id=nic0",
        ],
    );
    let pid = net_daemon_pid(&mut gw);
    let mut c = gw.client();
    gw.vm.expect_line("the guest's filter", TIMEOUT, |l| {
        l.starts_with("GUEST NET CTRL DONE")
    });
    let event = c.event("NIC_RX_FILTER_CHANGED");
    assert_eq!(
        event["data"],
        json!({"name": "nic0", "path": "/machine/peripheral/nic0/virtio-backend"})
    );
    let f = c.ok("query-rx-filter", json!({}));
    assert_eq!(f.as_array().map(Vec::len), Some(1), "{f}");
    let f = &f[0];
    // Every field QEMU's RxFilterInfo has, as the guest set it: no promiscuous mode, all
    // multicast (allmulti=1), its two extra unicast and one multicast MAC, VLANs 5 and 100
    // filtered, broadcast left on (the guest never sent NOBCAST), no table overflow.
    assert_eq!(
        f,
        &json!({
            "name": "nic0",
            "promiscuous": false,
            "multicast": "all",
            "unicast": "normal",
            "vlan": "normal",
            "broadcast-allowed": true,
            "multicast-overflow": false,
            "unicast-overflow": false,
            "main-mac": "52:54:00:12:34:56",
            "vlan-table": [100, 5],
            "unicast-table": ["02:00:00:00:00:01", "02:00:00:00:00:02"],
            "multicast-table": ["01:00:5e:00:00:fb"],
        })
    );
    // One event per change burst: the guest's several commands sent just one.
    assert!(
        c.events
            .iter()
            .all(|e| e["event"] != "NIC_RX_FILTER_CHANGED"),
        "more than one NIC_RX_FILTER_CHANGED before the query: {:?}",
        c.events
    );
    // Errors as QEMU words them.
    assert_eq!(
        c.err("query-rx-filter", json!({"name": "n0"})).1,
        "net client(n0) isn't a NIC"
    );
    assert_eq!(
        c.err("query-rx-filter", json!({"name": "zz"})).1,
        "invalid net client name: zz"
    );
    assert_eq!(
        c.err("set_link", json!({"name": "zz", "up": true})),
        ("DeviceNotFound".into(), "Device 'zz' not found".into())
    );
    // netdev_add / netdev_del of a spare backend, and a duplicate id.
    assert_eq!(
        c.err(
            "netdev_add",
            json!({"type": "socket", "id": "n0", "udp": "127.0.0.1:1", "localaddr": "127.0.0.1:2"})
        )
        .1,
        "Duplicate ID 'n0'"
    );
    c.ok(
        "netdev_add",
        json!({"type": "dgram", "id": "d1",
            "local": {"type": "inet", "host": "127.0.0.1", "port": "47212"},
            "remote": {"type": "inet", "host": "127.0.0.1", "port": "47213"}}),
    );
    c.ok("netdev_del", json!({"id": "d1"}));
    assert_eq!(
        c.err("netdev_del", json!({"id": "d1"})),
        ("DeviceNotFound".into(), "Device 'd1' not found".into())
    );
    assert_eq!(
        c.err(
            "netdev_add",
            json!({"type": "tap", "id": "t", "fd": "nofd"})
        )
        .1,
        "File descriptor named 'nofd' has not been found"
    );
    // A replaced daemon takes up the filter the guest set (the guest does not set it again).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.event("__io.flotilla_NET_DAEMON_RESTARTED");
    let again = c.ok("query-rx-filter", json!({"name": "nic0"}));
    assert_eq!(&again[0], f, "the filter after a daemon restart");
    // Removing the NIC's backend leaves the NIC, link down.
    c.ok("netdev_del", json!({"id": "n0"}));
    let last = c.ok("query-rx-filter", json!({"name": "nic0"}));
    assert_eq!(&last[0], f, "the last filter is still reported");
}

#[test]
fn two_vms_joined_by_a_datagram_link_exchange_frames() {
    let link = |local: u16, remote: u16| {
        format!(
            "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={local},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={remote}"
        )
    };
    let (a, b) = (link(47220, 47221), link(47221, 47220));
    let mut recv = Gateway::start_with(
        1,
        "scenario=net-peer role=recv count=2000",
        &[
            "--netdev",
            &b,
            "--device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:0b",
        ],
    );
    recv.vm.expect_line("the receiver", TIMEOUT, |l| {
        l.starts_with("GUEST NET PEER READY role=recv")
    });
    let mut send = Gateway::start_with(
        1,
        "scenario=net-peer role=send count=2000",
        &[
            "--netdev",
            &a,
            "--device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:0a",
        ],
    );
    let sent = send.vm.expect_line("the sender", TIMEOUT, |l| {
        l.starts_with("GUEST NET PEER SENT frames=") || l.starts_with("GUEST ERROR")
    });
    assert!(
        sent.starts_with("GUEST NET PEER SENT frames=2000"),
        "{sent}"
    );
    let ok = recv.vm.expect_line("the receiver's verdict", TIMEOUT, |l| {
        l.starts_with("GUEST NET PEER OK frames=") || l.starts_with("GUEST ERROR")
    });
    assert!(ok.starts_with("GUEST NET PEER OK frames=2000"), "{ok}");
}

#[test]
fn bad_network_options_fail_the_start_with_one_line() {
    for (args, want) in [
        (vec!["--netdev", "tap,id=n0"], "give ifname=NAME"),
        (
            vec!["--netdev", "user,id=n0"],
            "network backend 'user' is not available",
        ),
        (
            vec![
                "--netdev",
                "socket,id=n0,udp=127.0.0.1:47231,localaddr=127.0.0.1:47230",
                "--device",
                "virtio-net-pci,netdev=nope",
            ],
            "Property 'virtio-net-device.netdev' can't find value 'nope'",
        ),
        (
            vec!["--device", "e1000,netdev=n0"],
            "'e1000' is not a valid device model name",
        ),
    ] {
        let mut cmd = Command::new(bin("qmp-gateway"));
        cmd.arg("--kernel").arg(test_guest()).args(&args);
        let (status, _out, err) = run_to_end(cmd, TIMEOUT);
        assert!(!status.success(), "{args:?} started");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Pings `ip` every 0.1 s until `stop`; returns (answered, sent).
fn ping_while(ip: &'static str, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> (u32, u32) {
    let (mut answered, mut sent) = (0, 0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        sent += 1;
        if Command::new(require_tool("ping", "iputils-ping"))
            .args(["-c", "1", "-W", "1", ip])
            .output()
            .expect("running ping")
            .status
            .success()
        {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (answered, sent)
}

/// Issue 11: there was no restart command for a net daemon. `__io.flotilla_net-daemon-
/// restart` replaces a NIC's daemon (named by its netdev as "device", or by the NIC's
/// id or QOM path as "id"), optionally from another binary, while the guest is pinged;
/// a binary that cannot serve is reported and the NIC waits for a good one.
#[test]
fn net_daemon_restart_over_qmp_while_the_guest_is_pinged() {
    const RESTART: &str = "__io.flotilla_net-daemon-restart";
    let tap = Tap::create("fltt5", "10.77.55.1/24");
    let mut gw = Gateway::start_with(
        1,
        "scenario=net-echo ip=10.77.55.2/24",
        &[
            "--netdev",
            &format!("tap,id=n0,ifname={}", tap.name()),
            "--device",
            "virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:00:55:02",
        ],
    );
    let first = net_daemon_pid(&mut gw);
    gw.vm
        .expect_prefix("GUEST NET ECHO READY ip=10.77.55.2/24", TIMEOUT);
    assert!(ping_within("10.77.55.2", Duration::from_secs(10)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        std::thread::spawn(move || ping_while("10.77.55.2", stop))
    };
    let mut c = gw.client();
    let mut pid = first;
    for by in [
        json!({"id": "nic0"}),
        json!({"device": "n0"}),
        json!({"id": "/machine/peripheral/nic0/virtio-backend"}),
        json!({"id": "nic0", "binary": bin("net-daemon")}),
    ] {
        let reply = c.ok(RESTART, by.clone());
        let new = reply["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or_else(|| panic!("{by}: {reply}"));
        assert_ne!(new, pid, "{by}: the same daemon");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{by}: the old daemon {pid} is still there"
        );
        let restarted = c.event("__io.flotilla_NET_DAEMON_RESTARTED");
        assert_eq!(
            restarted["data"],
            json!({"device": "nic0", "pid": new}),
            "{by}"
        );
        assert!(
            ping_within("10.77.55.2", Duration::from_secs(10)),
            "{by}: no answer from the guest through daemon {new}"
        );
        pid = new;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answered, sent) = pinger.join().unwrap();
    assert!(answered * 2 > sent, "{answered} of {sent} pings answered");
    // A binary that cannot serve: the error, the event, and no daemon until a good one.
    let (class, desc) = c.err(
        RESTART,
        json!({"id": "nic0", "binary": "/nonexistent/net-daemon"}),
    );
    assert_eq!(class, "GenericError");
    assert!(
        desc.starts_with("starting /nonexistent/net-daemon: "),
        "{desc}"
    );
    let exited = c.event("__io.flotilla_NET_DAEMON_EXITED");
    assert_eq!(exited["data"]["device"], "nic0");
    assert!(exited["data"].get("restart-in-ms").is_none(), "{exited}");
    assert!(
        !ping("10.77.55.2", 2),
        "the guest answers with no daemon serving its NIC"
    );
    let good = c.ok(RESTART, json!({"device": "n0"}));
    assert!(good["pid"].as_i64().is_some(), "{good}");
    assert!(ping_within("10.77.55.2", Duration::from_secs(10)));
    // Bad names, as the block restart words them.
    assert_eq!(
        c.err(RESTART, json!({})).1,
        "Need exactly one of 'device' and 'id'"
    );
    assert_eq!(
        c.err(RESTART, json!({"device": "n0", "id": "nic0"})).1,
        "Need exactly one of 'device' and 'id'"
    );
    assert_eq!(
        c.err(RESTART, json!({"id": "zz"})),
        ("DeviceNotFound".into(), "Device 'zz' not found".into())
    );
    assert_eq!(
        c.err(RESTART, json!({"device": "zz"})),
        ("DeviceNotFound".into(), "Device 'zz' not found".into())
    );
    drop(tap);
}
