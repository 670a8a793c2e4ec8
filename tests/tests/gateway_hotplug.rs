//! device_add and device_del through the gateway, against a live QEMU 7.2 (`-M pc`,
//! TCG, paused, no default devices: its hotplug handler runs all the same) with the
//! same devices: a disk d0 (node disk0), the NIC nic0 on netdev n0, a spare node and a
//! spare netdev. Every refusal is compared whole (class and text): unknown and missing
//! driver, a bad id, a duplicate id, a bus that does not exist, unknown properties and
//! bad values, a drive that does not exist or is in use (by its name and by its node),
//! a netdev missing or in use, a slot in use (ours are one lower: QEMU's pc has its
//! PIIX3 in slot 1), bad addresses, a disk without a drive; device_del of an unknown id,
//! of a container, of a device's virtio backend. Then a failed device_add undoes itself
//! (its daemon could not start): the node is free, the slot too. What needs vmm-core's
//! hotplug (a device on the bus, DEVICE_DELETED) waits for it (the ignored tests).

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flotilla_tests::blk::empty_image;
use flotilla_tests::qmp::{wait_for_socket, Gateway, QmpClient};
use flotilla_tests::{require_tool, TempDir, Vm};
use serde_json::{json, Value};

const DISK_BYTES: u64 = 16 << 20;

/// QEMU 7.2's pc machine, paused, with QMP on a socket.
struct PcQemu {
    vm: Vm,
    qmp: PathBuf,
    _dir: TempDir,
}

impl PcQemu {
    fn start(extra: &[&str]) -> PcQemu {
        let dir = TempDir::new("qemu-pc");
        let qmp = dir.path().join("qmp.sock");
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
        .args(["-display", "none", "-m", "128"])
        .arg("-qmp")
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
