//! device_add and device_del through the gateway. Against a live QEMU 7.2 (`-M pc`,
//! TCG, paused, no default devices: its hotplug handler runs all the same) with the
//! same devices (a disk d0 on node disk0, the NIC nic0 on netdev n0, a spare node and a
//! spare netdev), every refusal compared whole (class and text): unknown and missing
//! driver, a bad id, a duplicate id, a bus that does not exist, unknown properties and
//! bad values, a drive that does not exist or is in use (by its name, by its node, by a
//! hot-added disk), a netdev missing or in use, a slot in use (ours are one lower: QEMU's
//! pc has its PIIX3 in slot 1), bad addresses, a disk without a drive; device_del of an
//! unknown id, of a container, of a device's virtio backend, of a device whose removal
//! is pending; and the hot-added disk as query-block shows it. A failed device_add
//! undoes itself (its daemon could not start): image unlocked, node, id and slot free.
//! With the test guest's pci-hotplug scenario: a disk added, read and written, removed
//! (DEVICE_DELETED as QEMU 7.2 sends it) and added again, a launch disk removed with its
//! drive; a NIC passing traffic, removed, its netdev serving the next one; a hot-added
//! disk's daemon SIGKILLed while the guest brings the disk up; a guest that ignores the
//! eject; a live upgrade after an add and a removal.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_tests::blk::{empty_image, pattern_sector};
use flotilla_tests::frame_reflector::{Reflector, GUEST_IP, PEER_IP, PORT};
use flotilla_tests::procs::{block_daemon_io_thread, live_child, thread_waits, ProcId};
use flotilla_tests::qmp::{wait_for_socket, Gateway, QmpClient};
use flotilla_tests::{path_arg, require_tool, TempDir, Vm};
use serde_json::{json, Value};

const DISK_BYTES: u64 = 16 << 20;

/// QEMU 7.2's pc machine, paused, with QMP on a socket.
struct PcQemu {
    vm: Vm,
    qmp: PathBuf,
    _dir: TempDir,
}

/// qemu-system-x86_64 with QEMU 7.2's pc machine, paused, with no default devices.
fn pc_qemu() -> Command {
    let mut cmd = Command::new(require_tool("qemu-system-x86_64", "qemu-system-x86"));
    cmd.args([
        "-M",
        "pc",
        "-accel",
        "tcg",
        "-S",
        "-nodefaults",
        "-no-user-config",
    ])
    .args(["-display", "none", "-m", "128"]);
    cmd
}

impl PcQemu {
    fn start(extra: &[&str]) -> PcQemu {
        let dir = TempDir::new("qemu-pc");
        let qmp = dir.path().join("qmp.sock");
        let mut cmd = pc_qemu();
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(extra);
        let vm = Vm::spawn(cmd);
        wait_for_socket(&qmp, &vm);
        PcQemu { vm, qmp, _dir: dir }
    }
}

impl Drop for PcQemu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- QEMU output ---\n{}", self.vm.transcript());
        }
        self.vm.terminate(Duration::from_secs(5));
    }
}

/// A datagram netdev `id` on two free loopback ports (nothing needs to answer).
fn netdev(id: &str) -> Value {
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return json!({"type": "socket", "id": id, "udp": format!("127.0.0.1:{port}"),
                          "localaddr": format!("127.0.0.1:{}", port + 1)});
        }
    }
}

/// `netdev(id)` as a command line's -netdev.
fn netdev_arg(id: &str) -> String {
    let n = netdev(id);
    format!(
        "socket,id={id},udp={},localaddr={}",
        n["udp"].as_str().unwrap(),
        n["localaddr"].as_str().unwrap()
    )
}

/// blockdev-add's arguments for a raw node `name` over `image`.
fn raw_node(name: &str, image: &Path) -> Value {
    json!({"driver": "raw", "node-name": name,
           "file": {"driver": "file", "filename": image.display().to_string()}})
}

/// The error a reply carries: (class, text).
fn error(reply: &Value) -> (String, String) {
    let Some(e) = reply.get("error") else {
        panic!("expected an error, got {reply}")
    };
    (
        e["class"].as_str().unwrap_or_default().to_string(),
        e["desc"].as_str().unwrap_or_default().to_string(),
    )
}

/// Both peers, each with d0 (node disk0) and nic0 on n0 at launch, then the spare node
/// `spare` and netdev n1.
struct Peers {
    _dir: TempDir,
    _qemu: PcQemu,
    _gateway: Gateway,
    qemu: QmpClient,
    ours: QmpClient,
}

fn peers() -> Peers {
    let dir = TempDir::new("hotplug");
    let image = |name: &str| {
        let p = dir.path().join(name);
        empty_image(&p, DISK_BYTES);
        p
    };
    let (q0, q1, g0, g1) = (image("q0"), image("q1"), image("g0"), image("g1"));
    let nic = "virtio-net-pci,netdev=n0,id=nic0";
    let qemu = PcQemu::start(&[
        "-drive",
        &format!(
            "file={},format=raw,if=none,id=d0,node-name=disk0",
            q0.display()
        ),
        "-device",
        "virtio-blk-pci,drive=d0",
        "-netdev",
        &netdev_arg("n0"),
        "-device",
        nic,
    ]);
    let gateway = Gateway::start_with(
        1,
        "",
        &[
            "-S",
            "--drive",
            &format!("file={},format=raw,id=d0,node-name=disk0", g0.display()),
            "--netdev",
            &netdev_arg("n0"),
            "--device",
            nic,
        ],
    );
    let mut q = QmpClient::negotiated(&qemu.qmp);
    let mut g = gateway.client();
    for (c, image) in [(&mut q, &q1), (&mut g, &g1)] {
        c.ok("blockdev-add", raw_node("spare", image));
        c.ok("netdev_add", netdev("n1"));
        c.ok(
            "object-add",
            json!({"qom-type": "memory-backend-ram", "id": "m0", "size": 4096}),
        );
    }
    Peers {
        _dir: dir,
        _qemu: qemu,
        _gateway: gateway,
        qemu: q,
        ours: g,
    }
}

/// QEMU's launch devices sit one slot higher than ours (its PIIX3 has slot 1).
const QEMU_SLOT_OFFSET: u64 = 1;

#[test]
fn refusals_match_qemu() {
    let mut p = peers();
    let blk = |more: Value| {
        let mut args = json!({"driver": "virtio-blk-pci"});
        args.as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        args
    };
    let net = |more: Value| {
        let mut args = json!({"driver": "virtio-net-pci"});
        args.as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        args
    };
    let same: Vec<(&str, &str, Value)> = vec![
        (
            "unknown driver",
            "device_add",
            json!({"driver": "no-such-model", "id": "x1"}),
        ),
        ("missing driver", "device_add", json!({"id": "x2"})),
        (
            "bad id",
            "device_add",
            net(json!({"netdev": "n1", "id": "1x"})),
        ),
        (
            "duplicate id",
            "device_add",
            net(json!({"netdev": "n1", "id": "nic0"})),
        ),
        (
            "bus that does not exist",
            "device_add",
            net(json!({"netdev": "n1", "bus": "pci.7", "id": "x3"})),
        ),
        (
            "a q35 bus name",
            "device_add",
            net(json!({"netdev": "n1", "bus": "pcie.0", "id": "x3"})),
        ),
        (
            "unknown property",
            "device_add",
            net(json!({"netdev": "n1", "id": "x4", "no-such-property": "10"})),
        ),
        (
            "bad mac",
            "device_add",
            net(json!({"netdev": "n1", "id": "x4", "mac": "52:54:00:zz:00:01"})),
        ),
        (
            "drive that does not exist",
            "device_add",
            blk(json!({"drive": "zz", "id": "x5"})),
        ),
        (
            "drive in use, by its name",
            "device_add",
            blk(json!({"drive": "d0", "id": "x6"})),
        ),
        (
            "drive in use, by its node",
            "device_add",
            blk(json!({"drive": "disk0", "id": "x7"})),
        ),
        (
            "drive in use, by its node, anonymous",
            "device_add",
            blk(json!({"drive": "disk0"})),
        ),
        ("no drive", "device_add", blk(json!({"id": "x8"}))),
        (
            "no queues",
            "device_add",
            blk(json!({"drive": "spare", "id": "x9", "num-queues": 0})),
        ),
        (
            "queues not a number",
            "device_add",
            blk(json!({"drive": "spare", "id": "x9", "num-queues": "two"})),
        ),
        (
            "iothread that does not exist",
            "device_add",
            blk(json!({"drive": "spare", "id": "x14", "iothread": "nosuch"})),
        ),
        (
            "iothread that is another object",
            "device_add",
            blk(json!({"drive": "spare", "id": "x14", "iothread": "m0"})),
        ),
        (
            "iothread on a NIC",
            "device_add",
            net(json!({"netdev": "n1", "id": "x14", "iothread": "m0"})),
        ),
        (
            "netdev that does not exist",
            "device_add",
            net(json!({"netdev": "zz", "id": "x10"})),
        ),
        (
            "netdev in use",
            "device_add",
            net(json!({"netdev": "n0", "id": "x11"})),
        ),
        (
            "bad address",
            "device_add",
            net(json!({"netdev": "n1", "id": "x12", "addr": "zz"})),
        ),
        (
            "slot past the bus",
            "device_add",
            net(json!({"netdev": "n1", "id": "x12", "addr": "0x20"})),
        ),
        (
            "function past the slot",
            "device_add",
            blk(json!({"drive": "spare", "id": "x12", "addr": "4.8"})),
        ),
        (
            "device_del of an unknown id",
            "device_del",
            json!({"id": "nope"}),
        ),
        (
            "device_del of an unknown path",
            "device_del",
            json!({"id": "/machine/peripheral/nope"}),
        ),
        (
            "device_del of a container",
            "device_del",
            json!({"id": "/machine/peripheral"}),
        ),
        (
            "device_del of a virtio backend",
            "device_del",
            json!({"id": "nic0/virtio-backend"}),
        ),
        (
            "device_del of an anonymous device's virtio backend",
            "device_del",
            json!({"id": "/machine/peripheral-anon/device[0]/virtio-backend"}),
        ),
        ("device_del without id", "device_del", json!({})),
        ("device_del with a number", "device_del", json!({"id": 5})),
    ];
    for (label, command, args) in same {
        let (q, g) = (
            p.qemu.execute(command, args.clone()),
            p.ours.execute(command, args.clone()),
        );
        let (q, g) = (error(&q), error(&g));
        assert_eq!(g, q, "{label}: {args}");
    }
    // A slot in use: the launch disk's, the launch NIC's (QEMU's are one higher).
    for (ours, what) in [(1u64, "the disk's"), (2, "the NIC's")] {
        let theirs = ours + QEMU_SLOT_OFFSET;
        for args in [
            net(json!({"netdev": "n1", "id": "x13", "addr": format!("{theirs:x}")})),
            blk(json!({"drive": "spare", "id": "x13", "addr": format!("{theirs:x}.0")})),
        ] {
            let q = error(&p.qemu.execute("device_add", args.clone()));
            let mut mine = args.clone();
            mine["addr"] = json!(args["addr"].as_str().unwrap().replacen(
                &format!("{theirs:x}"),
                &format!("{ours:x}"),
                1
            ));
            let g = error(&p.ours.execute("device_add", mine));
            let expected = (
                q.0,
                q.1.replace(&format!("slot {theirs} "), &format!("slot {ours} ")),
            );
            assert_eq!(g, expected, "{what} slot: {args}");
        }
    }
    // Nothing of all that stayed: query-block lists the launch disk alone, the spare
    // node and netdev are free (a refused device_add named them).
    let block = p.ours.ok("query-block", json!({}));
    assert_eq!(block.as_array().map(Vec::len), Some(1), "{block}");
    assert_eq!(block[0]["device"], "d0");
    assert_eq!(
        block[0]["qdev"],
        "/machine/peripheral-anon/device[0]/virtio-backend"
    );
    drives_match_qemu(&mut p);
}

/// `text` with the peer's image directory's names made ours (`q` prefix to `g`) and
/// QEMU's automatic node names ("#block" and digits) without their digits.
fn in_our_names(text: &str, dir: &Path) -> String {
    let mut out = text.replace(
        &format!("{}/q", dir.display()),
        &format!("{}/g", dir.display()),
    );
    while let Some(at) = out.find("#block") {
        let digits = out[at + 6..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        out.replace_range(at..at + 6 + digits, "#BLOCK");
    }
    out
}

/// `text` with the unnamed drives' names the same on both peers. QEMU's d0 is an if=none
/// drive (unit 0 among them), ours a --drive, QEMU's if=virtio: QEMU's unnamed drives are
/// one unit higher. `noneA` and `noneB` are the first two unnamed drives on each.
fn unnamed(text: String, ours: bool) -> String {
    match ours {
        true => text.replace("none1", "noneA").replace("none0", "noneB"),
        false => text.replace("none2", "noneA").replace("none1", "noneB"),
    }
}

/// `line` with `noneA` and `noneB` as the peer (`ours` or QEMU) names them.
fn named(line: &str, ours: bool) -> String {
    match ours {
        true => line.replace("noneA", "none1").replace("noneB", "none0"),
        false => line.replace("noneA", "none2").replace("noneB", "none1"),
    }
}

/// HMP drive_add and drive_del on both peers (with refusals_match_qemu's d0, disk0 and
/// spare), every answer compared with QEMU's: drives with and without an image and an
/// id (QEMU's noneN), every refusal (a duplicate id, a name a node has, a node name a
/// drive has, an interface other than none, a bad interface, an option the format does
/// not take, an image of another format, a format without a file, node options without
/// a file, a bad id, -n's node that does not exist and its missing node-name, missing
/// arguments, an unknown drive), query-block and info block listing the drives as QEMU
/// does, device_add over a drive and over a drive's node (an empty drive refused, one in
/// use refused, its node in use by it), drive_del of a drive (one whose node a device
/// uses: the node stays), of a node, of an attached drive's node, and of an attached
/// drive (its device stays without a medium), then the commands that need a medium on
/// what has none (no_medium_matches_qemu); then, on ours, the bound on drives.
fn drives_match_qemu(p: &mut Peers) {
    let dir = p._dir.path().to_path_buf();
    for peer in ["q", "g"] {
        for name in ["a", "c"] {
            empty_image(&dir.join(format!("{peer}{name}.raw")), 1 << 20);
        }
        let qcow2 = dir.join(format!("{peer}b.qcow2"));
        flotilla_tests::blk::qemu_img_ok(&["create", "-q", "-f", "qcow2", path_arg(&qcow2), "1M"]);
    }
    let hmp = |c: &mut QmpClient, line: &str| -> String {
        let reply = c.ok("human-monitor-command", json!({"command-line": line}));
        reply.as_str().unwrap_or_default().to_string()
    };
    let both = |p: &mut Peers, line: &str| -> (String, String) {
        let q = hmp(
            &mut p.qemu,
            &named(line, false).replace("IMG/", &format!("{}/q", dir.display())),
        );
        let g = hmp(
            &mut p.ours,
            &named(line, true).replace("IMG/", &format!("{}/g", dir.display())),
        );
        let (q, g) = (unnamed(q, false), unnamed(g, true));
        (in_our_names(&q, &dir), in_our_names(&g, &dir))
    };
    let lines = [
        (
            "drive_add 0 if=none,file=IMG/a.raw,format=raw,id=x1",
            "OK\r\n",
        ),
        (
            "drive_add 0 if=none,file=IMG/a.raw,format=raw,id=x1",
            "Duplicate ID 'x1' for drive\r\n",
        ),
        ("drive_add 0 if=none", "OK\r\n"),
        (
            "drive_add 0 if=none,file=IMG/b.qcow2,format=qcow2,id=x2,node-name=q2",
            "OK\r\n",
        ),
        (
            "drive_add 0 if=none,file=IMG/c.raw,format=raw,id=x3,node-name=n3,readonly=on",
            "OK\r\n",
        ),
        (
            "drive_add 0 if=none,id=d0",
            "Duplicate ID 'd0' for drive\r\n",
        ),
        (
            "drive_add 0 if=none,id=disk0",
            "Device name 'disk0' conflicts with an existing node name\r\n",
        ),
        (
            "drive_add 0 if=none,file=IMG/a.raw,format=raw,id=x9,node-name=spare",
            "",
        ),
        (
            "drive_add 0 if=none,file=IMG/a.raw,format=raw,id=x9,node-name=x1",
            "",
        ),
        (
            "drive_add 0 file=IMG/c.raw,format=raw,id=x4",
            "Can't hot-add drive to type 1\r\n",
        ),
        (
            "drive_add 0 if=virtio,file=IMG/c.raw,format=raw,id=x4",
            "Can't hot-add drive to type 7\r\n",
        ),
        ("drive_add 0 if=bogus", "unsupported bus type 'bogus'\r\n"),
        (
            "drive_add 0 if=none,file=IMG/c.raw,format=raw,id=x5,bogus=1",
            "Block format 'raw' does not support the option 'bogus'\r\n",
        ),
        (
            "drive_add 0 if=none,file=IMG/c.raw,format=qcow2,id=x6",
            "Image is not in qcow2 format\r\n",
        ),
        (
            "drive_add 0 if=none,format=raw,id=x7",
            "A block device must be specified for \"file\"\r\n",
        ),
        (
            "drive_add 0 if=none,id=x8,node-name=n8",
            "Must specify either driver or file\r\n",
        ),
        ("drive_add 0 if=none,id=9x", ""),
        (
            "drive_add -n 0 file=nosuch,node-name=n1",
            "Cannot find device='nosuch' nor node-name='nosuch'\r\n",
        ),
        (
            "drive_add -n 0 file=spare",
            "'node-name' needs to be specified\r\n",
        ),
        (
            "drive_add",
            "drive_add: string expected\r\nTry \"help drive_add\" for more information\r\n",
        ),
        (
            "drive_add 0",
            "drive_add: string expected\r\nTry \"help drive_add\" for more information\r\n",
        ),
        ("drive_del nope", "Device 'nope' not found\r\n"),
        ("drive_del", ""),
        ("drive_add -n 0 node-name=n1,driver=raw,file=spare", ""),
        ("drive_del n1", ""),
        ("info block", ""),
    ];
    for (line, expected) in lines {
        let (q, g) = both(p, line);
        assert_eq!(g, q, "{line}");
        if !expected.is_empty() {
            assert_eq!(g, expected, "{line}");
        }
    }
    // query-block: the launch disk, then x1 (its image), noneA (none), x2 (qcow2), x3
    // (read-only, its node named).
    let blocks = |c: &mut QmpClient, ours: bool| {
        let b = c.ok("query-block", json!({}));
        unnamed(in_our_names(&b.to_string(), &dir), ours)
    };
    let (q, g) = (blocks(&mut p.qemu, false), blocks(&mut p.ours, true));
    assert_eq!(g, q);
    let listed: Value = serde_json::from_str(&g).unwrap();
    let devices: Vec<&str> = (listed.as_array().unwrap().iter())
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["d0", "x1", "noneA", "x2", "x3"]);
    // A drive's name is no node's.
    let node = raw_node("x1", &dir.join("gc.raw"));
    let q = error(&p.qemu.execute("blockdev-add", node.clone()));
    let g = error(&p.ours.execute("blockdev-add", node));
    assert_eq!(g, q, "blockdev-add named as a drive");
    // device_add over drives: one, and a drive's node; an empty drive, one in use, its
    // node in use by it refused.
    let blk = |drive: &str, id: &str| json!({"driver": "virtio-blk-pci", "drive": drive, "id": id});
    for c in [&mut p.qemu, &mut p.ours] {
        assert_eq!(c.ok("device_add", blk("x2", "v1")), json!({}));
        // A drive's node by its name: the drive takes no permission there.
        assert_eq!(c.ok("device_add", blk("n3", "v3")), json!({}));
    }
    for (label, drive) in [
        ("an empty drive", "noneA"),
        ("a drive in use", "x2"),
        ("a drive's node in use by its device", "q2"),
    ] {
        let args = blk(&named(drive, true), "v2");
        let q = error(
            &p.qemu
                .execute("device_add", blk(&named(drive, false), "v2")),
        );
        let g = error(&p.ours.execute("device_add", args.clone()));
        let (q, g) = ((q.0, unnamed(q.1, false)), (g.0, unnamed(g.1, true)));
        assert_eq!(g, q, "{label}: {args}");
    }
    let (q, g) = (blocks(&mut p.qemu, false), blocks(&mut p.ours, true));
    assert_eq!(g, q, "with x2 attached");
    for line in [
        "drive_del q2",
        "drive_del x3",
        "drive_del n3",
        "info block",
        "drive_del x1",
        "drive_del noneA",
        "drive_del x1",
        "drive_del x3",
        "info block",
        "drive_add 0 if=none",
        "info block noneB",
    ] {
        let (q, g) = both(p, line);
        assert_eq!(g, q, "{line}");
    }
    // A disk's drive in use by a block job (a mirror, kept slow) is not deleted.
    for (c, peer) in [(&mut p.qemu, "q"), (&mut p.ours, "g")] {
        let target = dir.join(format!("{peer}m.raw"));
        empty_image(&target, 1 << 20);
        c.ok("blockdev-add", raw_node("mt", &target));
        c.ok(
            "blockdev-mirror",
            json!({"job-id": "j2", "device": "x2", "target": "mt", "sync": "full", "speed": 1}),
        );
    }
    let (q, g) = both(p, "drive_del x2");
    assert_eq!(g, q, "drive_del x2 under a job");
    assert_eq!(
        g,
        "Node 'x2' is busy: block device is in use by block job: mirror\r\n"
    );
    for c in [&mut p.qemu, &mut p.ours] {
        c.ok("block-job-cancel", json!({"device": "j2", "force": true}));
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            c.ok("query-block-jobs", json!({})) == json!([])
        });
        assert!(gone, "the mirror j2 did not end");
        c.ok("blockdev-del", json!({"node-name": "mt"}));
    }
    // The drive of a disk deleted: the device stays without a medium, anonymous, its
    // drive's id taken until it goes; the drive's nodes are gone.
    for line in [
        "drive_del x2",
        "info block",
        "drive_add 0 if=none,id=x2",
        "drive_del x2",
        "drive_del q2",
    ] {
        let (q, g) = both(p, line);
        assert_eq!(g, q, "{line}");
    }
    assert!(both(p, "info block").1.contains(
        "/machine/peripheral/v1/virtio-backend: [not inserted]\r\n    \
         Attached to:      /machine/peripheral/v1/virtio-backend\r\n"
    ));
    let (q, g) = (blocks(&mut p.qemu, false), blocks(&mut p.ours, true));
    assert_eq!(g, q, "x2 deleted");
    let q = error(&p.qemu.execute("device_add", blk("x2", "v2")));
    let g = error(&p.ours.execute("device_add", blk("x2", "v2")));
    assert_eq!(g, q, "device_add over a deleted drive");
    // Its counters stay, under no node: query-blockstats' entry for it as QEMU's.
    let stats_of = |c: &mut QmpClient, qdev: &str| {
        let all = c.ok("query-blockstats", json!({}));
        (all.as_array().unwrap().iter())
            .find(|s| s["qdev"] == qdev)
            .cloned()
            .unwrap_or_else(|| panic!("no {qdev} in {all}"))
    };
    let v1 = "/machine/peripheral/v1/virtio-backend";
    let (q, g) = (stats_of(&mut p.qemu, v1), stats_of(&mut p.ours, v1));
    assert_eq!(g, q, "query-blockstats of v1");
    assert_eq!(g.get("node-name"), None);
    // A --drive disk's drive (QEMU's: -drive if=none with -device) deleted the same way.
    for line in [
        "drive_del d0",
        "info block",
        "info blockstats",
        "drive_add 0 if=none,id=d0",
    ] {
        let (q, g) = both(p, line);
        assert_eq!(g, q, "{line}");
    }
    let (q, g) = (blocks(&mut p.qemu, false), blocks(&mut p.ours, true));
    assert_eq!(g, q, "d0 deleted");
    let d0 = "/machine/peripheral-anon/device[0]/virtio-backend";
    let (q, g) = (stats_of(&mut p.qemu, d0), stats_of(&mut p.ours, d0));
    assert_eq!(g, q, "query-blockstats of d0");
    // All of them, the drive no device uses (noneB) among them.
    let all_stats = |c: &mut QmpClient, ours: bool| {
        let b = c.ok("query-blockstats", json!({}));
        unnamed(in_our_names(&b.to_string(), &dir), ours)
    };
    let (q, g) = (all_stats(&mut p.qemu, false), all_stats(&mut p.ours, true));
    assert_eq!(g, q, "query-blockstats");
    no_medium_matches_qemu(p, &dir);
    for line in [
        "block_resize noneB 1M",
        "drive_add -n 0 file=noneB,node-name=r3",
        "drive_add -n 0 file=noneB,node-name=r3,driver=raw",
    ] {
        let (q, g) = both(p, line);
        assert_eq!(g, q, "{line}");
        assert!(q.contains("has no medium"), "QEMU's answer to {line}: {q}");
    }
    // Ours only: no more than MAX_DRIVES drives at once (none0 is one), also without
    // images.
    for i in 1..64 {
        assert_eq!(
            hmp(&mut p.ours, &format!("drive_add 0 if=none,id=m{i}")),
            "OK\r\n"
        );
    }
    assert_eq!(
        hmp(&mut p.ours, "drive_add 0 if=none,id=m64"),
        "Too many drives: at most 64 made by drive_add may exist\r\n"
    );
    assert_eq!(hmp(&mut p.ours, "drive_del m1"), "");
    assert_eq!(hmp(&mut p.ours, "drive_add 0 if=none,id=m64"), "OK\r\n");
}

/// After drives_match_qemu's drive_del of v1's drive (x2) and of d0: the commands that need
/// a medium, each answer compared whole with QEMU's. By "id" on the devices left without
/// one (their BlockBackends are anonymous: their devices' QOM paths name them) and by name
/// on noneB (a drive made without one), each must be QEMU's refusal for the medium
/// (QEMU 7.2's block_set_io_throttle names nothing, its lookup of a node by a
/// BlockBackend's name does: bdrv_lookup_bs); the tray commands there, block-commit on
/// noneB and the deleted drives' names (which name nothing now) are compared too.
fn no_medium_matches_qemu(p: &mut Peers, dir: &Path) {
    let limits = |disk: Value, bps: i64| {
        let mut args = json!({"bps": bps, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0,
                              "iops_wr": 0});
        let more = disk.as_object().unwrap().clone();
        args.as_object_mut().unwrap().extend(more);
        args
    };
    // (QEMU refuses it for the medium, command, arguments).
    let mut cases: Vec<(bool, &str, Value)> = Vec::new();
    for id in [
        "/machine/peripheral/v1/virtio-backend",
        "/machine/peripheral-anon/device[0]/virtio-backend",
    ] {
        for bps in [1 << 20, 0, -1] {
            cases.push((
                true,
                "block_set_io_throttle",
                limits(json!({"id": id}), bps),
            ));
        }
        let grouped = limits(json!({"id": id, "group": "g1"}), 1 << 20);
        cases.push((true, "block_set_io_throttle", grouped));
        for command in [
            "eject",
            "blockdev-open-tray",
            "blockdev-close-tray",
            "blockdev-remove-medium",
        ] {
            cases.push((false, command, json!({"id": id})));
        }
    }
    let n = "noneB";
    let never = "IMG/never.raw";
    let snapshot = json!({"device": n, "snapshot-file": "IMG/never.qcow2", "format": "qcow2"});
    let backup = json!({"device": n, "target": never, "sync": "full", "format": "raw"});
    // n3 (v3's node) has no BlockBackend name to make a job's id of.
    let into_it = json!({"job-id": "j3", "device": "n3", "target": n, "sync": "full"});
    let bitmap = json!({"node": n, "name": "b"});
    let actions = |kind: &str, data: &Value| json!({"actions": [{"type": kind, "data": data}]});
    cases.extend([
        (
            true,
            "block_set_io_throttle",
            limits(json!({"device": n}), 1 << 20),
        ),
        (
            true,
            "block_set_io_throttle",
            limits(json!({"device": n}), -1),
        ),
        (true, "block_resize", json!({"device": n, "size": 1 << 20})),
        (
            true,
            "block_resize",
            json!({"device": n, "node-name": "spare", "size": 1 << 20}),
        ),
        (true, "block-dirty-bitmap-add", bitmap.clone()),
        (true, "blockdev-snapshot-sync", snapshot.clone()),
        (
            true,
            "blockdev-snapshot-internal-sync",
            json!({"device": n, "name": "s"}),
        ),
        (
            true,
            "blockdev-snapshot-delete-internal-sync",
            json!({"device": n, "name": "s"}),
        ),
        (
            true,
            "blockdev-snapshot",
            json!({"node": n, "overlay": "spare"}),
        ),
        (
            true,
            "blockdev-snapshot",
            json!({"node": "n3", "overlay": n}),
        ),
        (true, "drive-backup", backup.clone()),
        (true, "drive-mirror", backup.clone()),
        (
            true,
            "blockdev-mirror",
            json!({"device": n, "target": "spare", "sync": "full"}),
        ),
        (
            true,
            "blockdev-backup",
            json!({"device": n, "target": "spare", "sync": "full"}),
        ),
        (true, "blockdev-mirror", into_it.clone()),
        (true, "blockdev-backup", into_it.clone()),
        (true, "block-stream", json!({"device": n})),
        (false, "block-commit", json!({"device": n})),
        (
            true,
            "change-backing-file",
            json!({"device": n, "image-node-name": "n3", "backing-file": "x"}),
        ),
        (
            true,
            "x-blockdev-change",
            json!({"parent": n, "node": "spare"}),
        ),
        (
            true,
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r1", "file": n}),
        ),
        (
            true,
            "transaction",
            actions("blockdev-snapshot-sync", &snapshot),
        ),
        (
            true,
            "transaction",
            actions("block-dirty-bitmap-add", &bitmap),
        ),
        (true, "transaction", actions("drive-backup", &backup)),
        (true, "transaction", actions("blockdev-backup", &into_it)),
    ]);
    for deleted in ["x2", "d0"] {
        cases.extend([
            (
                false,
                "block_set_io_throttle",
                limits(json!({"device": deleted}), 1 << 20),
            ),
            (
                false,
                "block_resize",
                json!({"device": deleted, "size": 1 << 20}),
            ),
            (
                false,
                "block-dirty-bitmap-add",
                json!({"node": deleted, "name": "b"}),
            ),
            (
                false,
                "drive-mirror",
                json!({"device": deleted, "target": never, "sync": "full", "format": "raw"}),
            ),
        ]);
    }
    for (no_medium, command, args) in cases {
        let answer = |c: &mut QmpClient, ours: bool| {
            let peer = if ours { "g" } else { "q" };
            let text = named(&args.to_string(), ours)
                .replace("IMG/", &format!("{}/{peer}", dir.display()));
            let reply = c.execute(command, serde_json::from_str(&text).unwrap());
            unnamed(in_our_names(&reply.to_string(), dir), ours)
        };
        let (q, g) = (answer(&mut p.qemu, false), answer(&mut p.ours, true));
        assert_eq!(g, q, "{command} {args}");
        assert!(q.contains("\"error\""), "QEMU took {command} {args}: {q}");
        assert_eq!(
            q.contains("has no medium"),
            no_medium,
            "QEMU's answer to {command} {args}: {q}"
        );
    }
}

/// The BlockBackends block commands find, every answer compared whole with a live
/// QEMU 7.2's (its qmp_get_blk and bdrv_lookup_bs). With drives h1 (1 MiB, node nh1) and
/// k1 (node nk1) under devices hb and kb, and drives x1 and x2 (1 MiB, read-only) that
/// no device uses, each with its medium:
/// - "id" names a device's virtio backend by a QOM path (relative to
///   /machine/peripheral unless absolute, empty parts skipped); a device itself (a
///   disk's "hb", a NIC, a path to one) has no block device backend, a container is not
///   a device, a drive's name is no device: block_set_io_throttle, eject, the tray
///   commands and blockdev-insert-medium (whose "not removable" names no device);
///   a group once set stays when a later call names none;
/// - HMP block_set_io_throttle: its arguments read as QEMU's monitor reads them, a
///   BlockBackend's name or else a device's id;
/// - a drive no device uses is found by its name: its limits (listed by query-block and
///   info block, then the device_add'ed disk's), block_resize, a dirty bitmap, a
///   mirror's or backup's target (QEMU's permission conflict, sizes);
/// - a disk's name as a job's target is its root node: into itself, QEMU's permission
///   conflicts with the disk, a backup's sizes;
/// - a drive no device uses has no tray: blockdev-open-tray and -close-tray do nothing,
///   eject takes its medium out (its nodes and bitmaps go, its limits stay but no
///   medium has them; refused, as drive_del, while a backup writes into it);
/// - blockdev-change-medium gives a drive no device uses a new medium (a fixed disk
///   refuses after the file is opened);
/// - a child blockdev-add or drive_add -n names by a drive's name is its medium's root,
///   kept by its new parent past the drive's drive_del or eject.
#[test]
fn block_backends_match_qemu() {
    let mut p = peers();
    let dir = p._dir.path().to_path_buf();
    for peer in ["q", "g"] {
        for (name, bytes) in [
            ("h", 1 << 20),
            ("k", DISK_BYTES),
            ("x", DISK_BYTES),
            ("y", 1 << 20),
            ("z", DISK_BYTES),
            ("f", 1 << 20),
            ("r", 1 << 20),
            ("s", 1 << 20),
            ("t", 1 << 20),
            ("u", 1 << 20),
        ] {
            empty_image(&dir.join(format!("{peer}{name}.raw")), bytes);
        }
    }
    let answer = |c: &mut QmpClient, ours: bool, command: &str, args: &Value| {
        let peer = if ours { "g" } else { "q" };
        let text = (args.to_string()).replace("IMG/", &format!("{}/{peer}", dir.display()));
        let reply = c.execute(command, serde_json::from_str(&text).unwrap());
        in_our_names(&reply.to_string(), &dir)
    };
    let both = |p: &mut Peers, command: &str, args: Value| {
        let q = answer(&mut p.qemu, false, command, &args);
        let g = answer(&mut p.ours, true, command, &args);
        assert_eq!(g, q, "{command} {args}");
        q
    };
    let hmp =
        |p: &mut Peers, line: &str| both(p, "human-monitor-command", json!({"command-line": line}));
    for line in [
        "drive_add 0 if=none,file=IMG/h.raw,format=raw,id=h1,node-name=nh1",
        "drive_add 0 if=none,file=IMG/k.raw,format=raw,id=k1,node-name=nk1",
        "drive_add 0 if=none,file=IMG/x.raw,format=raw,id=x1,node-name=nx1",
        "drive_add 0 if=none,file=IMG/y.raw,format=raw,id=x2,node-name=nx2,readonly=on",
    ] {
        assert_eq!(hmp(&mut p, line), r#"{"return":"OK\r\n"}"#, "{line}");
    }
    // sb: an anonymous BlockBackend (over a node); a node nobody uses.
    for (c, peer) in [(&mut p.qemu, "q"), (&mut p.ours, "g")] {
        c.ok(
            "blockdev-add",
            raw_node("free", &dir.join(format!("{peer}f.raw"))),
        );
    }
    for (drive, id) in [("h1", "hb"), ("k1", "kb"), ("spare", "sb")] {
        let disk = json!({"driver": "virtio-blk-pci", "drive": drive, "id": id});
        both(&mut p, "device_add", disk);
    }
    let limits = |name: (&str, &str), bps: i64| {
        json!({name.0: name.1, "bps": bps, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0,
               "iops_wr": 0})
    };
    // "id": (id, what QEMU says of it, or "" where it takes it).
    let no_backend = "Device does not have a block device backend";
    for (id, said) in [
        ("hb", no_backend),
        ("/machine/peripheral/hb", no_backend),
        ("hb/", no_backend),
        ("nic0", no_backend),
        ("nic0/virtio-backend", no_backend),
        ("/machine/peripheral-anon/device[0]", no_backend),
        ("hb/virtio-backend", ""),
        ("/machine/peripheral/hb/virtio-backend", ""),
        ("//machine//peripheral/kb/virtio-backend/", ""),
        ("/machine/peripheral-anon/device[0]/virtio-backend", ""),
        (
            "hb/virtio-backend/x",
            "Device 'hb/virtio-backend/x' not found",
        ),
        ("virtio-backend", "Device 'virtio-backend' not found"),
        ("d0", "Device 'd0' not found"),
        ("x1", "Device 'x1' not found"),
        ("nosuch", "Device 'nosuch' not found"),
        ("", " is not a hotpluggable device"),
        ("/machine", "/machine is not a hotpluggable device"),
        (
            "/machine/peripheral/",
            "/machine/peripheral/ is not a hotpluggable device",
        ),
        (
            "/machine/unattached",
            "/machine/unattached is not a hotpluggable device",
        ),
    ] {
        let q = both(&mut p, "block_set_io_throttle", limits(("id", id), 1 << 20));
        match said {
            "" => assert_eq!(q, r#"{"return":{}}"#, "{id}"),
            said => assert!(
                q.contains(said),
                "QEMU's block_set_io_throttle of {id}: {q}"
            ),
        }
        for command in [
            "eject",
            "blockdev-open-tray",
            "blockdev-close-tray",
            "blockdev-remove-medium",
        ] {
            let q = both(&mut p, command, json!({"id": id}));
            match said {
                "" => assert!(q.contains("is not removable"), "{command} {id}: {q}"),
                said => assert!(q.contains(said), "QEMU's {command} of {id}: {q}"),
            }
        }
        let q = both(
            &mut p,
            "blockdev-insert-medium",
            json!({"id": id, "node-name": "free"}),
        );
        match said {
            "" => assert!(
                q.contains(r#""desc":"Device is not removable""#),
                "{id}: {q}"
            ),
            said => assert!(
                q.contains(said),
                "QEMU's blockdev-insert-medium of {id}: {q}"
            ),
        }
    }
    for node in ["nosuch", "spare", "nh1", "nx1"] {
        let args = json!({"id": "hb/virtio-backend", "node-name": node});
        both(&mut p, "blockdev-insert-medium", args);
    }
    // A group stays when none is named; a new one is taken.
    let grouped = |id: &str, group: Option<&str>| {
        let mut args = limits(("id", id), 2 << 20);
        if let Some(g) = group {
            args["group"] = json!(g);
        }
        args
    };
    both(
        &mut p,
        "block_set_io_throttle",
        grouped("/machine/peripheral/kb/virtio-backend", None),
    );
    both(
        &mut p,
        "block_set_io_throttle",
        grouped("kb/virtio-backend", Some("g1")),
    );
    both(
        &mut p,
        "block_set_io_throttle",
        grouped("/machine/peripheral/kb/virtio-backend", None),
    );
    both(&mut p, "query-block", json!({}));
    // HMP's block_set_io_throttle.
    for line in [
        "block_set_io_throttle",
        "block_set_io_throttle h1",
        "block_set_io_throttle h1 1 0 0 0 0",
        "block_set_io_throttle h1 1 0 0 0 0 0 0",
        "block_set_io_throttle h1 -1 0 0 0 0 0",
        "block_set_io_throttle h1 1k 0 0 0 0 0",
        "block_set_io_throttle h1 1 0 0 0 0 x",
        "block_set_io_throttle h1 99999999999999999999999 0 0 0 0 0",
        "block_set_io_throttle h1 1 2 0 0 0 0",
        "block_set_io_throttle nope 1 0 0 0 0 0",
        "block_set_io_throttle hb 1 0 0 0 0 0",
        "block_set_io_throttle h1 0x10 0 0 0 0 010",
        "block_set_io_throttle h1 (1+2)*4 -1 5 0 0 0 0",
        "block_set_io_throttle h1 6/4 ~0 0 0 0 0",
        "block_set_io_throttle h1 'a' 7%4|8^1 0 0 0 0",
        "block_set_io_throttle h1 1/0 0 0 0 0 0",
        "block_set_io_throttle h1 (1 0 0 0 0 0",
        "block_set_io_throttle h1 'ab' 0 0 0 0 0",
        "block_set_io_throttle h1 0x 0 0 0 0 0",
        "block_set_io_throttle h1 1 -1 0 0 0 0 0",
        "block_set_io_throttle h1 (1+2)*4 0 0 0 0 3%2|4",
        "info block h1",
        "block_set_io_throttle kb/virtio-backend 4096 0 0 0 0 0",
        "block_set_io_throttle /machine/peripheral/sb 1 0 0 0 0 0",
        "block_set_io_throttle sb/virtio-backend 1 0 0 0 0 0",
        "block_set_io_throttle spare 1 0 0 0 0 0",
        "block_set_io_throttle \"x2\" 0 8192 0 0 0 0",
        "help block_set_io_throttle",
        "info block",
    ] {
        let q = hmp(&mut p, line);
        assert!(!q.contains("unknown command"), "{line}: {q}");
    }
    // The drives no device uses, by their names.
    for (command, args) in [
        ("block_set_io_throttle", limits(("device", "x1"), 1 << 20)),
        ("block_set_io_throttle", {
            let mut args = limits(("device", "x2"), 1 << 20);
            args["group"] = json!("g1");
            args
        }),
        ("block_resize", json!({"device": "x1", "size": DISK_BYTES})),
        (
            "block-dirty-bitmap-add",
            json!({"node": "x1", "name": "b1"}),
        ),
        (
            "block-dirty-bitmap-remove",
            json!({"node": "x1", "name": "b1"}),
        ),
    ] {
        assert_eq!(
            both(&mut p, command, args.clone()),
            r#"{"return":{}}"#,
            "{command} {args}"
        );
    }
    both(&mut p, "query-block", json!({}));
    hmp(&mut p, "info block");
    // A job's target named by a disk's or a drive's name, or by its node's: all refused
    // (but a backup into x1, of d0's and k1's size, which QEMU runs as we do).
    let sources = ["d0", "k1", "h1"];
    let targets = [
        "nh1", "h1", "nk1", "k1", "disk0", "d0", "x1", "nx1", "x2", "nx2",
    ];
    for (source, target) in sources
        .iter()
        .flat_map(|s| targets.iter().map(move |t| (s, t)))
    {
        let job = json!({"job-id": "j1", "device": source, "target": target, "sync": "full"});
        let actions = json!({"actions": [{"type": "blockdev-backup", "data": job}]});
        let commands = match target.ends_with("x1") {
            true => 1,
            false => 3,
        };
        for (command, args) in [
            ("blockdev-mirror", &job),
            ("blockdev-backup", &job),
            ("transaction", &actions),
        ]
        .into_iter()
        .take(commands)
        {
            let q = both(&mut p, command, args.clone());
            assert!(q.contains("\"error\""), "QEMU took {command} {args}: {q}");
        }
    }
    assert_eq!(
        both(&mut p, "query-block-jobs", json!({})),
        r#"{"return":[]}"#
    );
    // A drive no device uses has no tray: opening or closing it does nothing, an eject
    // takes its medium out (not while a backup writes into it: x3, of d0's size).
    let ok = r#"{"return":{}}"#;
    let hmp_ok = r#"{"return":""}"#;
    let busy = "is busy: block device is in use by block job: backup";
    hmp(
        &mut p,
        "drive_add 0 if=none,file=IMG/z.raw,format=raw,id=x3",
    );
    let job = json!({"job-id": "j3", "device": "d0", "target": "x3", "sync": "full", "speed": 1});
    assert_eq!(both(&mut p, "blockdev-backup", job), ok);
    assert!(both(&mut p, "eject", json!({"device": "x3"})).contains(busy));
    assert!(hmp(&mut p, "drive_del x3").contains(busy));
    for c in [&mut p.qemu, &mut p.ours] {
        c.ok("block-job-cancel", json!({"device": "j3", "force": true}));
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            c.ok("query-block-jobs", json!({})) == json!([])
        });
        assert!(gone, "the backup j3 did not end");
    }
    assert_eq!(hmp(&mut p, "drive_del x3"), hmp_ok);
    hmp(&mut p, "drive_add 0 if=none,id=e1");
    let bitmap = json!({"node": "x2", "name": "b2"});
    assert_eq!(both(&mut p, "block-dirty-bitmap-add", bitmap), ok);
    for (command, drive) in [
        ("blockdev-open-tray", "x2"),
        ("blockdev-close-tray", "x2"),
        ("blockdev-open-tray", "e1"),
        ("blockdev-close-tray", "e1"),
        ("eject", "e1"),
    ] {
        assert_eq!(both(&mut p, command, json!({"device": drive})), ok);
    }
    both(&mut p, "query-block", json!({}));
    assert_eq!(hmp(&mut p, "eject x2"), hmp_ok);
    both(&mut p, "query-block", json!({}));
    hmp(&mut p, "info block");
    assert_eq!(
        both(&mut p, "eject", json!({"device": "x2", "force": true})),
        ok
    );
    both(
        &mut p,
        "block_set_io_throttle",
        limits(("device", "x2"), 1 << 20),
    );
    let disk = json!({"driver": "virtio-blk-pci", "drive": "x2", "id": "xc"});
    both(&mut p, "device_add", disk);
    assert_eq!(hmp(&mut p, "drive_del x2"), hmp_ok);
    // blockdev-change-medium: a new medium for e1, under an automatic node name, its
    // read-only mode kept or changed; a fixed disk's refusal after the file's.
    let change = |device: &str, file: &str, more: Value| {
        let mut args = json!({"device": device, "filename": format!("IMG/{file}"),
                              "format": "raw"});
        args.as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        args
    };
    let changes = [
        (change("e1", "t.raw", json!({})), true),
        (
            change("e1", "t.raw", json!({"read-only-mode": "read-only"})),
            true,
        ),
        (change("e1", "t.raw", json!({"force": true})), true),
        (change("e1", "nosuch.raw", json!({})), false),
        (change("e1", "t.raw", json!({"format": "vmdkx"})), false),
        (change("e1", "t.raw", json!({"format": "qcow2"})), false),
        (change("d0", "nosuch.raw", json!({})), false),
        (change("d0", "u.raw", json!({})), false),
        (change("nope", "u.raw", json!({})), false),
    ];
    for (args, taken) in changes {
        let q = both(&mut p, "blockdev-change-medium", args.clone());
        assert_eq!(q == ok, taken, "{args}: {q}");
        both(&mut p, "query-block", json!({}));
    }
    let by_id = json!({"id": "hb/virtio-backend", "filename": "IMG/u.raw", "format": "raw"});
    both(&mut p, "blockdev-change-medium", by_id);
    hmp(&mut p, "info block e1");
    assert_eq!(both(&mut p, "eject", json!({"device": "e1"})), ok);
    // A device over x1 takes its limits.
    both(
        &mut p,
        "device_add",
        json!({"driver": "virtio-blk-pci", "drive": "x1", "id": "xb"}),
    );
    let q = both(&mut p, "query-block", json!({}));
    assert!(q.contains(r#""group":"x1""#), "{q}");
    hmp(&mut p, "info block");
    // A child named by a drive's name is its medium's root, which then outlives the
    // drive's drive_del or eject until its new parent goes.
    for line in [
        "drive_add 0 if=none,file=IMG/r.raw,format=raw,id=y1,node-name=ny1",
        "drive_add 0 if=none,file=IMG/s.raw,format=raw,id=y2,node-name=ny2",
        "drive_add -n 0 node-name=s2,driver=raw,file=y2",
    ] {
        hmp(&mut p, line);
    }
    for (command, args) in [
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r1", "file": "y1"}),
        ),
        (
            "blockdev-add",
            json!({"driver": "raw", "node-name": "r2", "file": "e1"}),
        ),
        (
            "human-monitor-command",
            json!({"command-line": "drive_del y1"}),
        ),
        ("eject", json!({"device": "y2"})),
        ("blockdev-del", json!({"node-name": "ny1"})),
        ("blockdev-del", json!({"node-name": "ny2"})),
        ("blockdev-del", json!({"node-name": "r1"})),
        ("blockdev-del", json!({"node-name": "s2"})),
        ("blockdev-del", json!({"node-name": "ny1"})),
    ] {
        both(&mut p, command, args);
    }
    let named_nodes = |c: &mut QmpClient| {
        let nodes = c.ok("query-named-block-nodes", json!({}));
        let mut names: Vec<String> = (nodes.as_array().unwrap().iter())
            .filter_map(|n| n["node-name"].as_str())
            .filter(|n| !n.starts_with('#'))
            .map(str::to_string)
            .collect();
        names.sort();
        names
    };
    assert_eq!(named_nodes(&mut p.ours), named_nodes(&mut p.qemu));
}

/// A device_add whose daemon cannot start is undone: the node is free again (its image
/// unlocked, and deleted by blockdev-del, which refuses a node in use), its id and slot
/// free, no disk listed.
#[test]
fn a_failed_device_add_leaves_nothing() {
    let dir = TempDir::new("hotplug-undo");
    let image = dir.path().join("g1");
    empty_image(&image, DISK_BYTES);
    let gateway = Gateway::start_with(1, "", &["-S", "--block-daemon", "/bin/false"]);
    let mut g = gateway.client();
    g.ok("blockdev-add", raw_node("spare", &image));
    let add = json!({"driver": "virtio-blk-pci", "drive": "spare", "id": "vb", "addr": "1"});
    let (class, first) = error(&g.execute("device_add", add.clone()));
    assert_eq!(class, "GenericError");
    // The daemon (/bin/false) ended at once: "exited before answering" or the like.
    let daemon = "block-daemon of /machine/peripheral/vb";
    assert!(first.contains(daemon), "{first}");
    // The same again: not a permission conflict, not a slot or an id in use.
    let (_, again) = error(&g.execute("device_add", add));
    assert!(again.contains(daemon), "{again}");
    assert_eq!(g.ok("query-block", json!({})), json!([]));
    assert_eq!(
        error(&g.execute("device_del", json!({"id": "vb"}))),
        ("DeviceNotFound".into(), "Device 'vb' not found".into())
    );
    // Nothing holds the image's locks the disk took: another writer may open it.
    let out = Command::new(require_tool("qemu-io", "qemu-utils"))
        .args(["-f", "raw", "-c", "write 0 512"])
        .arg(&image)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !said.contains("lock"), "{said}");
    g.ok("blockdev-del", json!({"node-name": "spare"}));
}

/// Devices added and removed on a paused VM on both peers: the add answers {} alike, the
/// refusals that need a hot-added device (its node, its netdev, its id in use), the
/// disk as query-block shows it, and a removal that stays pending (the VM never ran, so
/// QEMU's request never expires).
#[test]
fn added_devices_match_qemu() {
    let mut p = peers();
    for c in [&mut p.qemu, &mut p.ours] {
        let disk = json!({"driver": "virtio-blk-pci", "drive": "spare", "id": "hb",
                          "serial": "s1", "bootindex": 1});
        assert_eq!(c.ok("device_add", disk), json!({}));
        let nic = json!({"driver": "virtio-net-pci", "netdev": "n1", "id": "hn"});
        assert_eq!(c.ok("device_add", nic), json!({}));
    }
    for (label, command, args) in [
        (
            "a hot-added disk's node",
            "device_add",
            json!({"driver": "virtio-blk-pci", "drive": "spare", "id": "hb2"}),
        ),
        (
            "a hot-added disk's id",
            "device_add",
            json!({"driver": "virtio-net-pci", "netdev": "zz", "id": "hb"}),
        ),
        (
            "a hot-added NIC's netdev",
            "device_add",
            json!({"driver": "virtio-net-pci", "netdev": "n1", "id": "hn2"}),
        ),
        (
            "device_del of an unknown id",
            "device_del",
            json!({"id": "hb3"}),
        ),
        (
            "a hot-added disk's boot index",
            "device_add",
            json!({"driver": "virtio-net-pci", "id": "hn3", "bootindex": 1}),
        ),
    ] {
        let q = error(&p.qemu.execute(command, args.clone()));
        let g = error(&p.ours.execute(command, args.clone()));
        assert_eq!(g, q, "{label}: {args}");
    }
    // The disk over the node: an anonymous BlockBackend with the device's backend path.
    let shown = |c: &mut QmpClient| {
        let block = c.ok("query-block", json!({}));
        let hb = block
            .as_array()
            .and_then(|b| b.iter().find(|d| d["inserted"]["node-name"] == "spare"))
            .cloned()
            .unwrap_or_else(|| panic!("no disk over node spare: {block}"));
        (hb["device"].clone(), hb["qdev"].clone())
    };
    assert_eq!(shown(&mut p.ours), shown(&mut p.qemu));
    assert_eq!(
        shown(&mut p.ours),
        (json!(""), json!("/machine/peripheral/hb/virtio-backend"))
    );
    // In query-pci with its id, in the lowest free slot (ours 3: the launch's take 1, 2).
    let pci = p.ours.ok("query-pci", json!({}));
    let slot_of = |id: &str| {
        pci[0]["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|f| f["qdev_id"] == id))
            .map(|f| f["slot"].clone())
    };
    assert_eq!(
        (slot_of("hb"), slot_of("hn")),
        (Some(json!(3)), Some(json!(4))),
        "{pci}"
    );
    for c in [&mut p.qemu, &mut p.ours] {
        assert_eq!(c.ok("device_del", json!({"id": "hb"})), json!({}));
    }
    for id in ["hb", "/machine/peripheral/hb"] {
        let q = error(&p.qemu.execute("device_del", json!({"id": id})));
        let g = error(&p.ours.execute("device_del", json!({"id": id})));
        assert_eq!(g, q, "device_del {id} again");
        assert_eq!(
            g.1,
            format!("Device {id} is already in the process of unplug")
        );
    }
}

/// How long one add or removal may take, the guest's checks included.
const STEP: Duration = Duration::from_secs(30);
/// How long a guest that ignores the eject is given to eject all the same.
const NO_EJECT: Duration = Duration::from_secs(3);

/// The gateway running the test guest's pci-hotplug scenario (`more` on its command
/// line) with `extra` arguments; READY seen (the registers where QEMU's pc has them).
fn hotplug_guest(cmdline: &str, extra: &[&str]) -> (Gateway, QmpClient) {
    let mut gateway = Gateway::start_with(
        1,
        &format!("scenario=pci-hotplug {cmdline}"),
        &[&["-S"], extra].concat(),
    );
    let mut client = gateway.client();
    client.ok("cont", json!({}));
    let ready = gateway.vm.expect_prefix("GUEST HOTPLUG READY", STEP);
    assert!(
        ready.contains(" pciu=0xae00 pcid=0xae04 b0ej=0xae08 "),
        "{ready}"
    );
    (gateway, client)
}

/// The value of ` key=` in a guest line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// Waits for the guest's line starting with `prefix` about `slot`.
fn expect_slot(gateway: &mut Gateway, prefix: &str, slot: &str) -> String {
    let want = format!("slot={slot}");
    gateway
        .vm
        .expect_line(&format!("{prefix} {want}"), STEP, |l| {
            l.starts_with(prefix) && l.split_whitespace().any(|w| w == want)
        })
}

/// device_add of `device`, then the guest's ADDED line: the slot. Ours are modern-only
/// virtio functions (0x1040 + the device type).
fn add(gateway: &mut Gateway, client: &mut QmpClient, device: Value, pci_device: &str) -> String {
    assert_eq!(client.ok("device_add", device), json!({}));
    let added = gateway.vm.expect_prefix("GUEST HOTPLUG ADDED slot=", STEP);
    assert!(
        added.contains(&format!(" vendor=0x1af4 device={pci_device} ")),
        "{added}"
    );
    field(&added, "slot").to_string()
}

/// device_del of `id` (at QOM path `path`, "device" in the event if `named`), the
/// guest's REMOVED line, and DEVICE_DELETED as QEMU 7.2 sends it.
fn remove(gateway: &mut Gateway, client: &mut QmpClient, id: &str, path: &str, slot: &str) {
    assert_eq!(client.ok("device_del", json!({"id": id})), json!({}));
    expect_slot(gateway, "GUEST HOTPLUG REMOVED", slot);
    let mut deleted = || {
        client
            .event_within("DEVICE_DELETED", STEP)
            .unwrap_or_else(|| panic!("no DEVICE_DELETED for {id}"))
    };
    let backend = deleted();
    assert_eq!(
        backend["data"],
        json!({"path": format!("{path}/virtio-backend")})
    );
    let device = deleted();
    let mut data = json!({"path": path});
    if path.starts_with("/machine/peripheral/") {
        data["device"] = json!(id);
    }
    assert_eq!(device["data"], data);
}

/// The qdev ids query-pci lists on bus 0, with their slots.
fn pci_ids(client: &mut QmpClient) -> Vec<(u64, String)> {
    let buses = client.ok("query-pci", json!({}));
    (buses[0]["devices"].as_array().expect("devices").iter())
        .map(|d| {
            let id = d["qdev_id"].as_str().unwrap_or_default().to_string();
            (d["slot"].as_u64().unwrap_or_default(), id)
        })
        .collect()
}

/// A 1 MiB raw image and its node `hp0`.
fn hot_disk(client: &mut QmpClient, dir: &Path) -> PathBuf {
    let image = dir.join("hot.img");
    empty_image(&image, 1 << 20);
    let file = json!({"driver": "file", "filename": path_arg(&image)});
    client.ok(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "hp0", "file": file}),
    );
    image
}

/// Whether the image's first 128 sectors hold the guest's P(seed).
fn holds_pattern(image: &Path, seed: u64) -> bool {
    let data = std::fs::read(image).expect("image");
    (0..128u64).all(|s| data[(s * 512) as usize..][..512] == pattern_sector(seed, s))
}

#[test]
fn a_disk_is_added_used_removed_and_added_again() {
    let dir = TempDir::new("hotplug-disk");
    let launch = dir.path().join("launch.img");
    empty_image(&launch, DISK_BYTES);
    let drive = format!("file={},format=raw,id=d0", launch.display());
    // --no-shutdown: the disks stay after the guest powers off (drive_add_then_drive_del).
    let (mut gw, mut c) = hotplug_guest("", &["--drive", &drive, "--no-shutdown"]);
    let image = hot_disk(&mut c, dir.path());
    let device =
        json!({"driver": "virtio-blk-pci", "drive": "hp0", "id": "disk1", "serial": "hot1"});
    let mut seeds = Vec::new();
    for _ in 0..2 {
        let slot = add(&mut gw, &mut c, device.clone(), "0x1042");
        // The lowest free slot: the launch disk has 1.
        assert_eq!(slot, "2");
        let ok = expect_slot(&mut gw, "GUEST HOTPLUG BLK OK", &slot);
        assert_eq!(field(&ok, "capacity"), "2048", "{ok}");
        assert!(ok.ends_with(" serial=hot1"), "{ok}");
        let seed = u64::from_str_radix(field(&ok, "seed").trim_start_matches("0x"), 16).unwrap();
        assert!(holds_pattern(&image, seed), "no P({seed:#x}) in the image");
        assert!(pci_ids(&mut c).contains(&(2, "disk1".into())));
        let block = c.ok("query-block", json!({}));
        assert_eq!(block.as_array().map(Vec::len), Some(2), "{block}");
        assert_eq!(block[1]["device"], "");
        assert_eq!(block[1]["qdev"], "/machine/peripheral/disk1/virtio-backend");
        remove(&mut gw, &mut c, "disk1", "/machine/peripheral/disk1", &slot);
        assert!(!pci_ids(&mut c).iter().any(|(_, id)| id == "disk1"));
        seeds.push(seed);
    }
    assert_ne!(seeds[0], seeds[1], "the second add wrote the same data");
    // The node stayed (QEMU's: blockdev-del removes it); the launch disk is alone.
    let block = c.ok("query-block", json!({}));
    assert_eq!(block.as_array().map(Vec::len), Some(1), "{block}");
    c.ok("blockdev-del", json!({"node-name": "hp0"}));
    // The launch disk's device goes too, and its drive with it (QEMU's auto-del).
    let path = "/machine/peripheral-anon/device[0]";
    remove(&mut gw, &mut c, path, path, "1");
    assert_eq!(c.ok("query-block", json!({})), json!([]));
    assert_eq!(c.ok("query-named-block-nodes", json!({})), json!([]));
    assert!(!gw.vm.transcript().contains("GUEST ERROR"));
    drive_add_then_drive_del(&mut gw, &mut c, dir.path());
}

/// A drive HMP drive_add made, attached by device_add: the guest's I/O on it; then its
/// drive deleted (drive_del): the device stays without a medium (query-block as QEMU's),
/// the id taken and no drive by it any more, the image closed (another writer may take
/// it), and the guest's next requests (the power button checks the disk again) fail with
/// an I/O error, reported whatever its rerror= (BLOCK_IO_ERROR as QEMU 7.2's for no
/// medium; the VM runs on), from a daemon started again on request and then after a
/// SIGKILL, which is still there afterwards. Another such disk's device_del frees its
/// drive's id.
fn drive_add_then_drive_del(gw: &mut Gateway, c: &mut QmpClient, dir: &Path) {
    let image = dir.join("drive.img");
    empty_image(&image, 1 << 20);
    let hmp = |c: &mut QmpClient, line: &str| {
        let said = c.ok("human-monitor-command", json!({"command-line": line}));
        said.as_str().unwrap_or_default().to_string()
    };
    let add_line = format!(
        "drive_add 0 if=none,file={},format=raw,id=hd1,rerror=stop",
        path_arg(&image)
    );
    assert_eq!(hmp(c, &add_line), "OK\r\n");
    let device = json!({"driver": "virtio-blk-pci", "drive": "hd1", "id": "disk2"});
    let slot = add(gw, c, device, "0x1042");
    let ok = expect_slot(gw, "GUEST HOTPLUG BLK OK", &slot);
    let seed = u64::from_str_radix(field(&ok, "seed").trim_start_matches("0x"), 16).unwrap();
    assert!(holds_pattern(&image, seed), "no P({seed:#x}) in the image");
    let qdev = "/machine/peripheral/disk2/virtio-backend";
    let block = c.ok("query-block", json!({}));
    assert_eq!(
        (&block[0]["device"], &block[0]["qdev"]),
        (&json!("hd1"), &json!(qdev))
    );
    // A second one, its drive deleted, then its device: the device goes (DEVICE_DELETED)
    // and takes the drive's id with it (QEMU's auto-del of the drive's options).
    let image3 = dir.join("drive3.img");
    empty_image(&image3, 1 << 20);
    let add3 = format!(
        "drive_add 0 if=none,file={},format=raw,id=hd3",
        path_arg(&image3)
    );
    assert_eq!(hmp(c, &add3), "OK\r\n");
    let device3 = json!({"driver": "virtio-blk-pci", "drive": "hd3", "id": "disk3"});
    let slot3 = add(gw, c, device3, "0x1042");
    expect_slot(gw, "GUEST HOTPLUG BLK OK", &slot3);
    assert_eq!(hmp(c, "drive_del hd3"), "");
    assert_eq!(
        hmp(c, "drive_add 0 if=none,id=hd3"),
        "Duplicate ID 'hd3' for drive\r\n"
    );
    remove(gw, c, "disk3", "/machine/peripheral/disk3", &slot3);
    assert_eq!(hmp(c, "drive_add 0 if=none,id=hd3"), "OK\r\n");
    assert_eq!(hmp(c, "drive_del hd3"), "");
    assert_eq!(hmp(c, "drive_del hd1"), "");
    assert_eq!(
        c.ok("query-block", json!({})),
        json!([{"device": "", "qdev": qdev, "type": "unknown", "removable": false,
                "locked": false}])
    );
    assert_eq!(hmp(c, "drive_del hd1"), "Device 'hd1' not found\r\n");
    let out = Command::new(require_tool("qemu-io", "qemu-utils"))
        .args(["-f", "raw", "-c", "write 0 512"])
        .arg(&image)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !said.contains("lock"), "{said}");
    // A daemon started again for the disk serves no medium either: one asked for
    // (__io.flotilla_block-daemon-restart), then one after a SIGKILL.
    let asked = c.ok("__io.flotilla_block-daemon-restart", json!({"id": "disk2"}));
    let asked = asked["pid"].as_i64().expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(asked),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    // The restart asked for says so too: the SIGKILLed one's successor is the next.
    let restarted = (0..3)
        .filter_map(|_| c.event_within("__io.flotilla_BLOCK_DAEMON_RESTARTED", STEP))
        .find(|e| e["data"]["pid"] != json!(asked))
        .expect("no restart after the SIGKILL");
    assert_eq!(restarted["data"]["device"], "hd1");
    let daemon = ProcId::of(restarted["data"]["pid"].as_i64().expect("pid") as i32);
    c.ok("system_powerdown", json!({}));
    let failed = gw
        .vm
        .expect_prefix(&format!("GUEST ERROR hotplug blk slot={slot} "), STEP);
    // VIRTIO_BLK_S_IOERR.
    assert!(failed.ends_with(" status=1"), "{failed}");
    let event = c
        .event_within("BLOCK_IO_ERROR", STEP)
        .expect("no BLOCK_IO_ERROR");
    assert_eq!(
        event["data"],
        json!({"device": "", "operation": "read", "action": "report",
               "reason": "No medium found"})
    );
    gw.vm.expect_prefix("GUEST POWER BUTTON", STEP);
    c.event_within("SHUTDOWN", STEP).expect("no SHUTDOWN");
    // The errors did not end it.
    assert!(daemon.exists(), "the disk's daemon {daemon} ended");
}

#[test]
fn a_nic_is_added_carries_traffic_and_its_netdev_serves_again() {
    let reflector = Reflector::start();
    let peer = PEER_IP.map(|b| b.to_string()).join(".");
    let (mut gw, mut c) = hotplug_guest(&format!("ip={GUEST_IP} peer={peer} port={PORT}"), &[]);
    let mut local = netdev("x");
    local = json!({"type": "inet", "host": "127.0.0.1",
                   "port": local["localaddr"].as_str().unwrap().rsplit(':').next()});
    let remote = json!({"type": "inet", "host": "127.0.0.1", "port": reflector.port.to_string()});
    c.ok(
        "netdev_add",
        json!({"type": "dgram", "id": "hn1", "local": local, "remote": remote}),
    );
    let mac = "52:54:00:12:34:99";
    let device = json!({"driver": "virtio-net-pci", "netdev": "hn1", "id": "nic1", "mac": mac});
    for round in 0..2 {
        let slot = add(&mut gw, &mut c, device.clone(), "0x1041");
        let ok = expect_slot(&mut gw, "GUEST HOTPLUG NET OK", &slot);
        assert_eq!(field(&ok, "mac"), mac, "{ok}");
        let traffic = expect_slot(&mut gw, "GUEST HOTPLUG NET TRAFFIC OK", &slot);
        assert_eq!(field(&traffic, "echoed"), "16", "{traffic}");
        assert!(reflector.udp.load(Ordering::Relaxed) >= 16 * (round + 1));
        // The NIC's name is its id (set_link, query-rx-filter).
        let filters = c.ok("query-rx-filter", json!({"name": "nic1"}));
        assert_eq!(filters[0]["main-mac"], mac);
        remove(&mut gw, &mut c, "nic1", "/machine/peripheral/nic1", &slot);
        // Its netdev is free again, for the same device_add (as in QEMU).
    }
    assert!(!gw.vm.transcript().contains("GUEST ERROR"));
}

/// A hot-added disk's daemon killed while the guest brings the disk up: the supervisor
/// starts another, vmm-core reconnects it (DiskReconnect with the disk's index), and the
/// guest's check of the disk completes.
#[test]
fn a_hot_added_disks_daemon_survives_sigkill() {
    let dir = TempDir::new("hotplug-kill");
    let (mut gw, mut c) = hotplug_guest("", &[]);
    let image = hot_disk(&mut c, dir.path());
    let device = json!({"driver": "virtio-blk-pci", "drive": "hp0", "id": "disk1"});
    let gateway_pid = gw.vm.pid();
    assert_eq!(c.ok("device_add", device), json!({}));
    // The only block daemon: the hot-added disk's.
    let daemon = live_child(gateway_pid, "block-daemon", STEP);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let restarted = c
        .event_within("__io.flotilla_BLOCK_DAEMON_RESTARTED", STEP)
        .expect("no restart");
    assert_eq!(restarted["data"]["device"], "/machine/peripheral/disk1");
    let added = gw.vm.expect_prefix("GUEST HOTPLUG ADDED slot=", STEP);
    let slot = field(&added, "slot").to_string();
    let ok = expect_slot(&mut gw, "GUEST HOTPLUG BLK OK", &slot);
    let seed = u64::from_str_radix(field(&ok, "seed").trim_start_matches("0x"), 16).unwrap();
    assert!(holds_pattern(&image, seed), "no P({seed:#x}) in the image");
    assert_ne!(live_child(gateway_pid, "block-daemon", STEP), daemon);
    remove(&mut gw, &mut c, "disk1", "/machine/peripheral/disk1", &slot);
    assert!(!gw.vm.transcript().contains("GUEST ERROR"));
}

/// A guest that never ejects: the device stays (query-pci, query-block), no
/// DEVICE_DELETED, and device_del asks again (the VM has run: QEMU's request expired).
#[test]
fn a_guest_that_never_ejects_keeps_the_device() {
    let dir = TempDir::new("hotplug-ignore");
    let (mut gw, mut c) = hotplug_guest("hotplug-ignore-eject=1", &[]);
    hot_disk(&mut c, dir.path());
    let device = json!({"driver": "virtio-blk-pci", "drive": "hp0", "id": "disk1"});
    let slot = add(&mut gw, &mut c, device, "0x1042");
    expect_slot(&mut gw, "GUEST HOTPLUG BLK OK", &slot);
    for _ in 0..2 {
        assert_eq!(c.ok("device_del", json!({"id": "disk1"})), json!({}));
        expect_slot(&mut gw, "GUEST HOTPLUG IGNORED", &slot);
        let deleted = c.event_within("DEVICE_DELETED", NO_EJECT);
        assert!(deleted.is_none(), "deleted without an eject: {deleted:?}");
        assert!(pci_ids(&mut c).iter().any(|(_, id)| id == "disk1"));
        assert_eq!(
            c.ok("query-block", json!({})).as_array().map(Vec::len),
            Some(1)
        );
    }
    assert!(!gw.vm.transcript().contains("GUEST HOTPLUG REMOVED"));
}

/// A live upgrade after an add and a removal: the new vmm-core gets the devices there
/// are, in their slots (the launch disk gone from slot 1, the added one in slot 2), and
/// serves them: the added disk is removed through it, and the next add takes slot 1.
#[test]
fn a_live_upgrade_keeps_the_devices_where_they_are() {
    let dir = TempDir::new("hotplug-upgrade");
    let launch = dir.path().join("launch.img");
    empty_image(&launch, DISK_BYTES);
    let drive = format!("file={},format=raw,id=d0", launch.display());
    let (mut gw, mut c) = hotplug_guest("", &["--drive", &drive]);
    hot_disk(&mut c, dir.path());
    let device = json!({"driver": "virtio-blk-pci", "drive": "hp0", "id": "disk1"});
    let slot = add(&mut gw, &mut c, device.clone(), "0x1042");
    assert_eq!(slot, "2");
    expect_slot(&mut gw, "GUEST HOTPLUG BLK OK", &slot);
    let path = "/machine/peripheral-anon/device[0]";
    remove(&mut gw, &mut c, path, path, "1");
    let before = pci_ids(&mut c);
    let upgraded = c.ok("__io.flotilla_vmm-upgrade", json!({}));
    assert!(upgraded["pid"].as_u64().is_some(), "{upgraded}");
    assert_eq!(pci_ids(&mut c), before);
    assert!(before.contains(&(2, "disk1".into())), "{before:?}");
    remove(&mut gw, &mut c, "disk1", "/machine/peripheral/disk1", "2");
    let slot = add(&mut gw, &mut c, device, "0x1042");
    assert_eq!(slot, "1");
    expect_slot(&mut gw, "GUEST HOTPLUG BLK OK", &slot);
    assert!(!gw.vm.transcript().contains("GUEST ERROR"));
}

/// An iothread is a block daemon's I/O thread from its object-add on: query-iothreads
/// lists it at once with the thread of a block daemon (a child of the gateway) that waits
/// for a disk, and the first disk placed on it (device_add iothread=) is served by that
/// very thread (the same thread-id, which wakes for the guest's I/O; killing its process
/// restarts the disk's daemon). A restarted daemon serves the disk on a thread of its
/// own; the iothread is held while the disk uses it (QEMU lets object-del take it away
/// from its device); once the guest let the disk go, a new daemon waits on the iothread,
/// and object-del stops it.
#[test]
fn an_iothread_is_the_thread_that_serves_its_disk() {
    let dir = TempDir::new("hotplug-iothread");
    let (mut gw, mut c) = hotplug_guest("", &[]);
    hot_disk(&mut c, dir.path());
    c.ok(
        "object-add",
        json!({"qom-type": "iothread", "id": "io0", "poll-max-ns": 100, "poll-grow": 2}),
    );
    let gateway_pid = gw.vm.pid();
    let listed = |c: &mut QmpClient| {
        let list = c.ok("query-iothreads", json!({}));
        let [entry] = list.as_array().expect("a list").as_slice() else {
            panic!("one iothread expected: {list}")
        };
        assert_eq!(
            (&entry["id"], &entry["poll-max-ns"], &entry["poll-grow"]),
            (&json!("io0"), &json!(100), &json!(2))
        );
        assert_eq!(
            (&entry["poll-shrink"], &entry["aio-max-batch"]),
            (&json!(0), &json!(0))
        );
        let tid = entry["thread-id"].as_u64().expect("thread-id") as i32;
        let daemon = block_daemon_io_thread(gateway_pid, tid)
            .unwrap_or_else(|| panic!("thread {tid} is no block daemon's I/O thread"));
        (tid, daemon)
    };
    let (waiting, waiting_daemon) = listed(&mut c);
    let waits = thread_waits(waiting);
    let device = json!({"driver": "virtio-blk-pci", "drive": "hp0", "id": "disk1",
                        "iothread": "io0"});
    let slot = add(&mut gw, &mut c, device, "0x1042");
    expect_slot(&mut gw, "GUEST HOTPLUG BLK OK", &slot);
    let (tid, daemon) = listed(&mut c);
    assert_eq!(
        (tid, daemon),
        (waiting, waiting_daemon),
        "the disk is served by the daemon that waited on its iothread"
    );
    // It woke for the connection and the guest's requests (the scenario's few reads and
    // writes): a thread that only waits does not wake.
    let woke = thread_waits(tid) - waits;
    assert!(woke >= 3, "the iothread's thread woke {woke} times");
    let (class, desc) = error(&c.execute("object-del", json!({"id": "io0"})));
    assert_eq!(
        (class.as_str(), desc.as_str()),
        ("GenericError", "object 'io0' is in use, can not be deleted")
    );
    // It is the disk's daemon; restarted, it serves the disk on a thread of its own.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    c.event_within("__io.flotilla_BLOCK_DAEMON_RESTARTED", STEP)
        .expect("no restart");
    let deadline = std::time::Instant::now() + STEP;
    let restarted = loop {
        let list = c.ok("query-iothreads", json!({}));
        // Left out while no daemon runs.
        if list != json!([]) {
            let (tid, new) = listed(&mut c);
            if new != daemon {
                break (tid, new);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new daemon's I/O thread ({list})"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    remove(&mut gw, &mut c, "disk1", "/machine/peripheral/disk1", &slot);
    // The disk's daemon stopped with it; another one waits for the iothread's next disk.
    let (_, next) = listed(&mut c);
    assert!(next != restarted.1 && next != daemon, "a new daemon waits");
    let next = ProcId::of(next);
    assert_eq!(c.ok("object-del", json!({"id": "io0"})), json!({}));
    assert_eq!(c.ok("query-iothreads", json!({})), json!([]));
    assert!(
        !next.exists(),
        "object-del stops the iothread's daemon: {next}"
    );
    assert!(!gw.vm.transcript().contains("GUEST ERROR"));
}

/// addr= on the command line: a launch can put its devices where a source that
/// hot-plugged has them (a migration's destination). Devices with addr= keep their slot,
/// the others take the lowest free in launch order (the --drive disks, then the --device
/// disks and NICs in their order: a --drive is QEMU's -drive if=none and its -device, as
/// if written first), and device_add the lowest free after them.
#[test]
fn launch_devices_take_the_slots_addr_gives() {
    let dir = TempDir::new("hotplug-addr");
    let image = |name: &str| {
        let p = dir.path().join(name);
        empty_image(&p, DISK_BYTES);
        p
    };
    let (a, b, c, d) = (image("a"), image("b"), image("c"), image("d"));
    let cold_node = json!({"driver": "raw", "node-name": "cb",
                           "file": {"driver": "file", "filename": path_arg(&d)}});
    let gateway = Gateway::start_with(
        1,
        "",
        &[
            "-S",
            "--drive",
            &format!("file={},format=raw,id=da,addr=5", a.display()),
            "--drive",
            &format!("file={},format=raw,id=db", b.display()),
            "--netdev",
            &netdev_arg("n0"),
            "--device",
            "virtio-net-pci,netdev=n0,id=nic0,addr=0x3.0",
            "--object",
            "iothread,id=io0",
            "--blockdev",
            &cold_node.to_string(),
            "--device",
            "virtio-blk-pci,drive=cb,id=cold,iothread=io0",
        ],
    );
    let mut client = gateway.client();
    client.ok("blockdev-add", raw_node("hp", &c));
    assert_eq!(
        client.ok(
            "device_add",
            json!({"driver": "virtio-blk-pci", "drive": "hp", "id": "hot"})
        ),
        json!({})
    );
    let mut slots = pci_ids(&mut client);
    slots.sort();
    assert_eq!(
        slots,
        [
            (0, String::new()),
            (1, String::new()),
            (2, "cold".to_string()),
            (3, "nic0".to_string()),
            (4, "hot".to_string()),
            (5, String::new()),
        ]
    );
    // The disk in slot 5 is da (query-block names the anonymous device's path).
    let block = client.ok("query-block", json!({}));
    let da = block
        .as_array()
        .and_then(|b| b.iter().find(|d| d["device"] == "da"))
        .unwrap_or_else(|| panic!("no da: {block}"));
    assert_eq!(
        da["qdev"],
        "/machine/peripheral-anon/device[0]/virtio-backend"
    );
    // The --device disk on the --object iothread holds it; its thread is a block daemon's.
    let (class, desc) = error(&client.execute("object-del", json!({"id": "io0"})));
    assert_eq!(
        (class.as_str(), desc.as_str()),
        ("GenericError", "object 'io0' is in use, can not be deleted")
    );
    let threads = client.ok("query-iothreads", json!({}));
    let tid = threads[0]["thread-id"].as_u64().expect("an iothread") as i32;
    assert!(
        block_daemon_io_thread(gateway.vm.pid(), tid).is_some(),
        "{threads}"
    );
}

/// The -blockdev pair libvirt 9.0 writes for disk `n` (a file node, a format node over it),
/// in its JSON.
fn libvirt_blockdevs(n: u32, image: &Path, format: &str) -> [String; 2] {
    let storage = format!("libvirt-{n}-storage");
    [
        json!({"driver": "file", "filename": path_arg(image), "node-name": storage,
               "auto-read-only": true, "discard": "unmap"})
        .to_string(),
        json!({"node-name": format!("libvirt-{n}-format"), "read-only": false,
               "driver": format, "file": storage})
        .to_string(),
    ]
}

/// The devices of a VM as libvirt describes it, QEMU's options (ours are the same with
/// `--`): a qcow2 disk over libvirt's -blockdev pair (bootindex and all), a raw disk over a
/// key=value -blockdev with an anonymous JSON -device, and a NIC on a datagram netdev;
/// each in the slot addr= gives.
fn libvirt_devices(dir: &Path, netdev: &str) -> Vec<String> {
    let qcow2 = dir.join("disk.qcow2");
    let raw = dir.join("disk.raw");
    let [storage, format] = libvirt_blockdevs(1, &qcow2, "qcow2");
    vec![
        "-blockdev".into(),
        storage,
        "-blockdev".into(),
        format,
        "-blockdev".into(),
        format!(
            "driver=raw,node-name=rawdisk,file.driver=file,file.filename={}",
            raw.display()
        ),
        "-netdev".into(),
        netdev.into(),
        "-device".into(),
        "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:4e:e7:01,bus=pci.0,addr=0x3".into(),
        "-device".into(),
        "virtio-blk-pci,bus=pci.0,addr=0x4,drive=libvirt-1-format,id=virtio-disk0,bootindex=1"
            .into(),
        "-device".into(),
        json!({"driver": "virtio-blk-pci", "drive": "rawdisk", "addr": "0x5",
               "serial": "cold2"})
        .to_string(),
    ]
}

/// QEMU's options as ours: `--blockdev` for `-blockdev`.
fn as_ours(options: &[String]) -> Vec<String> {
    options
        .iter()
        .map(|o| match o.strip_prefix('-') {
            Some(name) if !o.starts_with("--") && !o.starts_with("-{") => format!("--{name}"),
            _ => o.clone(),
        })
        .collect()
}

/// The images of `libvirt_devices` in `dir`: a 16 MiB qcow2 and a 16 MiB raw one.
fn libvirt_images(dir: &Path) {
    let qcow2 = dir.join("disk.qcow2");
    flotilla_tests::blk::qemu_img_ok(&["create", "-q", "-f", "qcow2", path_arg(&qcow2), "16M"]);
    empty_image(&dir.join("disk.raw"), DISK_BYTES);
}

/// A query's answer with `dir`'s path as DIR.
fn in_dir(v: &Value, dir: &Path) -> Value {
    let text = v.to_string().replace(path_arg(dir), "DIR");
    serde_json::from_str(&text).expect("JSON")
}

/// Whether `image` (qcow2) holds the guest's P(seed) in its first 128 sectors.
fn qcow2_holds_pattern(image: &Path, seed: u64) -> bool {
    let raw = image.with_extension("check.raw");
    flotilla_tests::blk::qemu_img_ok(&[
        "convert",
        "-U",
        "-O",
        "raw",
        path_arg(image),
        path_arg(&raw),
    ]);
    let held = holds_pattern(&raw, seed);
    let _ = std::fs::remove_file(raw);
    held
}

/// The seed= of a guest line, as a number.
fn seed_of(line: &str) -> u64 {
    u64::from_str_radix(field(line, "seed").trim_start_matches("0x"), 16).expect("a hex seed")
}

/// Disks and a NIC on the command line as libvirt writes them (issue 18: -blockdev JSON and
/// key=value, -device with bus=, addr=, bootindex=, and JSON): before the guest runs,
/// query-block and query-pci answer as QEMU 7.2's given the same options (its cold-plugged
/// devices; the images' directory is all that differs); the guest finds the disks at boot
/// and does I/O on them (boot-blk=1). Then a disk device_add'ed to the running guest moves
/// with it (issue 16's hot-plugged devices): the destination is launched with the source's
/// devices, that disk included, on its command line (--blockdev and --device ... addr=, as
/// libvirt starts a destination); at the power button there the guest finds every disk's
/// data and does more I/O on each (BLK KEPT), and the images hold what it wrote last.
#[test]
fn command_line_devices_are_qemus_and_a_hot_added_disk_migrates() {
    use flotilla_tests::migration::{destination, expect_completed, free_port, wait_for_status};
    let dir = TempDir::new("cold-plug");
    let (ours_dir, qemu_dir) = (dir.path().join("ours"), dir.path().join("qemu"));
    for d in [&ours_dir, &qemu_dir] {
        std::fs::create_dir(d).unwrap();
        libvirt_images(d);
    }
    let netdev = netdev_arg("hostnet0");
    let theirs = libvirt_devices(&qemu_dir, &netdev);
    let qemu = PcQemu::start(&theirs.iter().map(String::as_str).collect::<Vec<_>>());
    let ours = as_ours(&libvirt_devices(&ours_dir, &netdev_arg("hostnet0")));
    let mut args: Vec<&str> = vec!["-S"];
    args.extend(ours.iter().map(String::as_str));
    let mut gw = Gateway::start_with(1, "scenario=pci-hotplug boot-blk=1", &args);
    let mut c = gw.client();
    let mut q = QmpClient::negotiated(&qemu.qmp);
    let block = |c: &mut QmpClient, dir: &Path| in_dir(&c.ok("query-block", json!({})), dir);
    assert_eq!(
        block(&mut c, &ours_dir),
        block(&mut q, &qemu_dir),
        "query-block: ours, then QEMU's"
    );
    // Bus 0 as QEMU's with the same addr= (QEMU's pc has its PIIX3 functions in slot 1,
    // the slot ours leaves free).
    let mut slots = pci_ids(&mut c);
    slots.sort();
    let mut qemu_slots: Vec<(u64, String)> = pci_ids(&mut q)
        .into_iter()
        .filter(|(slot, _)| *slot != 1)
        .collect();
    qemu_slots.sort();
    assert_eq!(slots, qemu_slots);
    assert_eq!(
        slots,
        [
            (0, String::new()),
            (3, "net0".into()),
            (4, "virtio-disk0".into()),
            (5, String::new())
        ]
    );
    drop(q);
    drop(qemu);

    // The guest finds both disks at boot and writes, reads back and checks each.
    c.ok("cont", json!({}));
    let qcow2_seed = seed_of(&expect_slot(&mut gw, "GUEST HOTPLUG BLK OK", "4"));
    let raw_ok = expect_slot(&mut gw, "GUEST HOTPLUG BLK OK", "5");
    assert!(raw_ok.ends_with(" serial=cold2"), "{raw_ok}");
    gw.vm.expect_prefix("GUEST HOTPLUG READY", STEP);
    assert!(qcow2_holds_pattern(
        &ours_dir.join("disk.qcow2"),
        qcow2_seed
    ));
    assert!(holds_pattern(&ours_dir.join("disk.raw"), seed_of(&raw_ok)));

    // A disk added to the running guest, in the lowest free slot.
    let hot = hot_disk(&mut c, &ours_dir);
    let device = json!({"driver": "virtio-blk-pci", "drive": "hp0", "id": "disk1"});
    let slot = add(&mut gw, &mut c, device, "0x1042");
    assert_eq!(slot, "1");
    let hot_seed = seed_of(&expect_slot(&mut gw, "GUEST HOTPLUG BLK OK", &slot));

    // The destination as libvirt launches it: the source's devices, the added disk too.
    let hot_node = json!({"driver": "raw", "node-name": "hp0",
                          "file": {"driver": "file", "filename": path_arg(&hot)}});
    let mut dst_args = as_ours(&libvirt_devices(&ours_dir, &netdev_arg("hostnet0")));
    dst_args.extend([
        "--blockdev".into(),
        hot_node.to_string(),
        "--device".into(),
        "virtio-blk-pci,drive=hp0,id=disk1,addr=0x1".into(),
    ]);
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let dst_refs: Vec<&str> = dst_args.iter().map(String::as_str).collect();
    let mut dst = destination(1, "scenario=pci-hotplug boot-blk=1", &uri, &dst_refs);
    let mut d = dst.client();
    c.ok("migrate", json!({"uri": uri}));
    expect_completed(&mut c, &gw.vm);
    wait_for_status(&mut d, "running");
    let mut dst_slots = pci_ids(&mut d);
    dst_slots.sort();
    assert_eq!(
        dst_slots,
        [
            (0, String::new()),
            (1, "disk1".into()),
            (3, "net0".into()),
            (4, "virtio-disk0".into()),
            (5, String::new())
        ]
    );
    // At the power button, each disk still holds what the guest wrote at the source, and
    // takes more I/O here.
    d.ok("system_powerdown", json!({}));
    let mut kept = Vec::new();
    for slot in ["1", "4", "5"] {
        kept.push(expect_slot(&mut dst, "GUEST HOTPLUG BLK KEPT", slot));
    }
    dst.vm.expect_prefix("GUEST POWER BUTTON", STEP);
    assert_eq!(seed_of(&kept[0]), hot_seed, "{}", kept[0]);
    assert_eq!(seed_of(&kept[1]), qcow2_seed, "{}", kept[1]);
    assert!(
        holds_pattern(&hot, hot_seed + 1),
        "no P(seed + 1) on the hot disk"
    );
    assert!(qcow2_holds_pattern(
        &ours_dir.join("disk.qcow2"),
        qcow2_seed + 1
    ));
    assert!(!dst.vm.transcript().contains("GUEST ERROR"));
}

/// What QEMU 7.2 says of a command line it refuses: the message after its
/// "qemu-system-x86_64: -OPTION VALUE: " prefix.
fn qemu_refusal(options: &[String]) -> String {
    let mut cmd = pc_qemu();
    cmd.args(options);
    let (status, _, err) = flotilla_tests::run_to_end(cmd, STEP);
    assert!(!status.success(), "QEMU took {options:?}");
    let line = err
        .lines()
        .find_map(|l| {
            l.trim_start_matches("[stderr] ")
                .strip_prefix("qemu-system-x86_64: ")
        })
        .unwrap_or_else(|| panic!("no QEMU error in {err}"));
    // The option quoted ("-device TEXT: "), then the message.
    let quoted = options
        .chunks(2)
        .map(|o| format!("{} {}: ", o[0], o[1]))
        .find(|q| line.starts_with(q.as_str()))
        .unwrap_or_else(|| panic!("QEMU's error quotes none of the options: {line}"));
    line[quoted.len()..].to_string()
}

/// Bad -blockdev and -device lines: the gateway stops before the VM runs, saying what QEMU
/// 7.2 says of the same options (images that do not open, node names taken or missing, a
/// property that is not there or cannot take its value, a bus or netdev that does not
/// exist, a drive another device uses, an id twice, a slot twice, no drive at all).
#[test]
fn bad_command_line_devices_are_refused_in_qemus_words() {
    let dir = TempDir::new("cold-plug-bad");
    libvirt_images(dir.path());
    let qcow2 = dir.path().join("disk.qcow2");
    let [storage, format] = libvirt_blockdevs(1, &qcow2, "qcow2");
    let node = |more: &[&str]| -> Vec<String> {
        let mut o = vec![
            "-blockdev".to_string(),
            storage.clone(),
            "-blockdev".into(),
            format.clone(),
        ];
        o.extend(more.iter().map(|s| s.to_string()));
        o
    };
    let disk = "virtio-blk-pci,drive=libvirt-1-format";
    let cases: Vec<Vec<String>> = vec![
        vec![
            "-blockdev".into(),
            json!({"driver": "file", "filename": "/nonexistent/x.qcow2", "node-name": "s"})
                .to_string(),
        ],
        vec![
            "-blockdev".into(),
            storage.clone(),
            "-blockdev".into(),
            storage.clone(),
        ],
        vec![
            "-blockdev".into(),
            json!({"driver": "qcow2", "file": "nosuch", "node-name": "f"}).to_string(),
        ],
        vec![
            "-blockdev".into(),
            json!({"driver": "file", "filename": path_arg(&qcow2)}).to_string(),
        ],
        vec![
            "-blockdev".into(),
            format!(
                "driver=file,filename={},node-name=s,bogus=1",
                path_arg(&qcow2)
            ),
        ],
        node(&["-device", "virtio-blk-pci,drive=nosuch"]),
        node(&[
            "-device",
            &format!("{disk},id=a"),
            "-device",
            &format!("{disk},id=b"),
        ]),
        node(&["-device", &format!("{disk},id=a,bus=pci.1")]),
        node(&["-device", &format!("{disk},id=a,bogus=1")]),
        node(&["-device", &format!("{disk},id=a,bootindex=x")]),
        node(&["-device", &format!("{disk},id=a,addr=0x20")]),
        node(&[
            "-device",
            &format!("{disk},id=a,addr=5"),
            "-device",
            "virtio-blk-pci,drive=libvirt-1-storage,addr=5",
        ]),
        node(&[
            "-device",
            &format!("{disk},id=a"),
            "-device",
            "virtio-blk-pci,drive=libvirt-1-storage,id=a",
        ]),
        node(&[
            "-device",
            &format!("{disk},id=a,bootindex=1"),
            "-device",
            "virtio-blk-pci,drive=libvirt-1-storage,bootindex=1",
        ]),
        vec!["-device".into(), "virtio-blk-pci".into()],
        vec!["-device".into(), "virtio-net-pci,netdev=nn,id=b".into()],
    ];
    for options in cases {
        let want = qemu_refusal(&options);
        let mut cmd = Command::new(flotilla_tests::bin("qmp-gateway"));
        cmd.arg("--kernel")
            .arg(flotilla_tests::test_guest())
            .args(["--serial", "none"])
            .args(as_ours(&options));
        let (status, _, err) = flotilla_tests::run_to_end(cmd, STEP);
        assert!(!status.success(), "{options:?} started");
        assert!(
            err.contains(&want),
            "{options:?}: QEMU says {want:?}, we {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
