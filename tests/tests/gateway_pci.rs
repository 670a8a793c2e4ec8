//! query-pci and HMP `info pci` through the gateway: bus 0 as vmm-core reads it from the
//! functions' configuration spaces (the host bridge, a --drive disk's virtio-blk and a
//! NIC's virtio-net), before the guest runs and after its driver turned a BAR on; and the
//! same against a live QEMU 7.2 (microvm, paused) with the same devices: the same keys at
//! every level, the same identities where ours are meant to match, the differences of a
//! modern-only virtio transport said and asserted, `info pci` line for line, and the same
//! refusal of an argument.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::Duration;

use flotilla_tests::blk::empty_image;
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::{Gateway, QmpClient};
use flotilla_tests::TempDir;
use qmp_gateway::qmp::handlers::pci::info_pci;
use serde_json::{json, Value};
use vmm_core::devices::virtio_pci::BAR_SIZE;
use vmm_core::layout::PCI_MMIO_START;

const MAC: &str = "52:54:00:12:34:56";
const DISK_BYTES: u64 = 16 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

/// A datagram netdev `n0` on two free loopback ports (nothing needs to answer).
fn netdev() -> String {
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return format!(
                "socket,id=n0,udp=127.0.0.1:{port},localaddr=127.0.0.1:{}",
                port + 1
            );
        }
    }
}

fn nic() -> String {
    format!("virtio-net-pci,netdev=n0,id=nic0,mac={MAC}")
}

/// The gateway, paused (-S), with a raw disk d0 (no device id: --drive makes an
/// anonymous device, as QEMU's -drive if=virtio) and the NIC nic0.
fn gateway(dir: &TempDir, cmdline: &str) -> Gateway {
    let image = dir.path().join("g.img");
    empty_image(&image, DISK_BYTES);
    Gateway::start_with(
        1,
        cmdline,
        &[
            "-S",
            "--drive",
            &format!("file={},format=raw,id=d0", image.display()),
            "--netdev",
            &netdev(),
            "--device",
            &nic(),
        ],
    )
}

/// QEMU 7.2 with the test guest, paused, with the same devices: virtio-blk-pci without
/// an id over drive d0, then the NIC.
fn qemu(dir: &TempDir, cmdline: &str) -> Qemu {
    let image = dir.path().join("q.img");
    empty_image(&image, DISK_BYTES);
    Qemu::guest(
        cmdline,
        &[
            "-drive",
            &format!("file={},format=raw,if=none,id=d0", image.display()),
            "-device",
            "virtio-blk-pci,drive=d0",
            "-netdev",
            &netdev(),
            "-device",
            &nic(),
        ],
    )
}

fn hmp(c: &mut QmpClient, line: &str) -> String {
    c.ok("human-monitor-command", json!({"command-line": line}))
        .as_str()
        .expect("HMP answers text")
        .replace("\r\n", "\n")
}

/// The function in `slot` of bus 0.
fn function(pci: &Value, slot: u64) -> &Value {
    pci[0]["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|f| f["slot"] == slot))
        .unwrap_or_else(|| panic!("no function in slot {slot}: {pci}"))
}

/// A modern-only virtio function as ours presents it: no interrupt pin (MSI-X only), one
/// 32-bit memory BAR holding every region and the MSI-X table, `address` where it
/// decodes (-1: nowhere).
fn virtio(slot: u64, device: u64, class: (u64, &str), qdev_id: &str, address: i64) -> Value {
    json!({
        "bus": 0, "slot": slot, "function": 0,
        "class_info": {"class": class.0, "desc": class.1},
        "id": {"device": device, "vendor": 0x1af4, "subsystem": 0x40,
               "subsystem-vendor": 0x1af4},
        "irq_pin": 0,
        "qdev_id": qdev_id,
        "regions": [{"bar": 0, "type": "memory", "address": address, "size": BAR_SIZE,
                     "mem_type_64": false, "prefetch": false}],
    })
}

/// Our host bridge: QEMU's GPEX host bridge's identity (microvm,pcie=on has one).
fn host_bridge() -> Value {
    json!({
        "bus": 0, "slot": 0, "function": 0,
        "class_info": {"class": 0x0600, "desc": "Host bridge"},
        "id": {"device": 0x0008, "vendor": 0x1b36, "subsystem": 0x1100,
               "subsystem-vendor": 0x1af4},
        "irq_pin": 0, "qdev_id": "", "regions": [],
    })
}

#[test]
fn query_pci_reads_bus_0_as_the_guest_sees_it() {
    let dir = TempDir::new("pci");
    let mut gw = gateway(&dir, "scenario=net-echo ip=10.77.60.2/24");
    let mut c = gw.client();
    let blk = |address| virtio(1, 0x1042, (0x0100, "SCSI controller"), "", address);
    let net = |address| virtio(2, 0x1041, (0x0200, "Ethernet controller"), "nic0", address);
    // Before the guest runs every function is at power-on: memory decoding off, so no
    // BAR decodes anywhere (QEMU's -1), though vmm-core assigned each one a range.
    let paused = c.ok("query-pci", json!({}));
    assert_eq!(
        paused,
        json!([{"bus": 0, "devices": [host_bridge(), blk(-1), net(-1)]}])
    );
    assert_eq!(
        hmp(&mut c, "info pci"),
        "  Bus  0, device   0, function 0:\n\
         \x20   Host bridge: PCI device 1b36:0008\n\
         \x20     PCI subsystem 1af4:1100\n\
         \x20     id \"\"\n\
         \x20 Bus  0, device   1, function 0:\n\
         \x20   SCSI controller: PCI device 1af4:1042\n\
         \x20     PCI subsystem 1af4:0040\n\
         \x20     BAR0: 32 bit memory at 0xffffffffffffffff [0x00007ffe].\n\
         \x20     id \"\"\n\
         \x20 Bus  0, device   2, function 0:\n\
         \x20   Ethernet controller: PCI device 1af4:1041\n\
         \x20     PCI subsystem 1af4:0040\n\
         \x20     BAR0: 32 bit memory at 0xffffffffffffffff [0x00007ffe].\n\
         \x20     id \"nic0\"\n"
    );
    // The guest's virtio-net driver turns memory decoding on: the NIC's BAR now decodes
    // where vmm-core put it (after the disk's); the disk, which no driver touched,
    // still decodes nothing.
    c.ok("cont", json!({}));
    gw.vm.expect_line("the guest's NIC", TIMEOUT, |l| {
        l.starts_with("GUEST NET ECHO READY")
    });
    let nic_bar = (PCI_MMIO_START + BAR_SIZE) as i64;
    let running = c.ok("query-pci", json!({}));
    assert_eq!(
        running,
        json!([{"bus": 0, "devices": [host_bridge(), blk(-1), net(nic_bar)]}])
    );
    assert!(hmp(&mut c, "info pci").contains(&format!(
        "      BAR0: 32 bit memory at 0x{nic_bar:08x} [0x{:08x}].\n      id \"nic0\"\n",
        nic_bar + BAR_SIZE as i64 - 1
    )));
    // Stopped and reset, the functions are back at power-on: nothing decodes again.
    c.ok("stop", json!({}));
    c.ok("system_reset", json!({}));
    assert_eq!(c.ok("query-pci", json!({})), paused);
}

/// The keys of an object.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// What kind of line of `info pci` this is (its words up to the values).
fn line_kind(line: &str) -> String {
    let t = line.trim_start();
    let kind = match t {
        _ if t.starts_with("Bus ") => "bus",
        _ if t.contains(": PCI device ") => "class",
        _ if t.starts_with("PCI subsystem ") => "subsystem",
        _ if t.starts_with("IRQ ") => "irq",
        _ if t.starts_with("BAR") => "bar",
        _ if t.starts_with("id \"") => "id",
        _ => t,
    };
    format!("{}{kind}", " ".repeat(line.len() - t.len()))
}

#[test]
fn query_pci_and_info_pci_match_qemu_7_2() {
    let dir = TempDir::new("pci-qemu");
    let gw = gateway(&dir, "");
    let qemu = qemu(&dir, "");
    let (mut ours, mut theirs) = (gw.client(), qemu.client());
    let (g, q) = (
        ours.ok("query-pci", json!({})),
        theirs.ok("query-pci", json!({})),
    );
    // One bus, 0, with the same three functions in the same slots.
    assert_eq!(g.as_array().map(Vec::len), Some(1), "{g}");
    assert_eq!(q.as_array().map(Vec::len), Some(1), "{q}");
    assert_eq!((keys(&g[0]), &g[0]["bus"]), (keys(&q[0]), &q[0]["bus"]));
    let slots = |v: &Value| -> Vec<Value> {
        (v[0]["devices"].as_array().into_iter().flatten())
            .map(|d| d["slot"].clone())
            .collect()
    };
    assert_eq!(slots(&g), vec![json!(0), json!(1), json!(2)]);
    assert_eq!(slots(&g), slots(&q));
    // The host bridge is QEMU's GPEX host bridge, value for value.
    assert_eq!(function(&g, 0), function(&q, 0));
    for (slot, virtio_id) in [(1, 2), (2, 1)] {
        let (ours, theirs) = (function(&g, slot), function(&q, slot));
        let what = format!("slot {slot}:\nours {ours}\nQEMU {theirs}");
        // QEMU's virtio functions are transitional: an INTx pin (A), so an irq, where
        // ours are MSI-X only (no pin, so no irq, as QEMU leaves it out then).
        assert_eq!(theirs["irq_pin"], 1, "{what}");
        assert_eq!(ours["irq_pin"], 0, "{what}");
        let mut their_keys = keys(theirs);
        assert!(their_keys.remove("irq"), "{what}");
        assert_eq!(keys(ours), their_keys, "{what}");
        for same in ["bus", "function", "class_info", "qdev_id"] {
            assert_eq!(ours[same], theirs[same], "{same} of {what}");
        }
        assert_eq!(keys(&ours["id"]), keys(&theirs["id"]), "{what}");
        for same in ["vendor", "subsystem-vendor"] {
            assert_eq!(ours["id"][same], theirs["id"][same], "{same} of {what}");
        }
        // Device ids: QEMU's transitional 0x1000 + virtio id - 1 with the virtio id as
        // subsystem; ours modern-only, 0x1040 + virtio id, subsystem 0x40 (virtio 1.2
        // 4.1.2.1).
        assert_eq!(theirs["id"]["device"], 0x1000 + virtio_id - 1, "{what}");
        assert_eq!(theirs["id"]["subsystem"], virtio_id, "{what}");
        assert_eq!(ours["id"]["device"], 0x1040 + virtio_id, "{what}");
        assert_eq!(ours["id"]["subsystem"], 0x40, "{what}");
        // Regions: QEMU has a legacy I/O BAR 0, the MSI-X BAR 1 and the modern 64-bit
        // prefetchable BAR 4 (and the NIC's option ROM); ours is one 32-bit memory BAR
        // 0. A memory region has the same members on both, and before any firmware or
        // driver ran neither decodes anywhere (-1).
        let regions = |f: &Value| f["regions"].as_array().cloned().unwrap_or_default();
        let their_memory: Vec<Value> = (regions(theirs).into_iter())
            .filter(|r| r["type"] == "memory")
            .collect();
        assert!(!their_memory.is_empty(), "{what}");
        assert!(regions(theirs).iter().any(|r| r["type"] == "io"), "{what}");
        assert!(
            their_memory
                .iter()
                .any(|r| r["mem_type_64"] == true && r["prefetch"] == true),
            "{what}"
        );
        assert_eq!(regions(ours).len(), 1, "{what}");
        for r in regions(ours).iter().chain(&regions(theirs)) {
            assert_eq!(r["address"], -1, "{what}");
        }
        for r in &their_memory {
            assert_eq!(keys(&regions(ours)[0]), keys(r), "{what}");
        }
    }
    // info pci: QEMU's text is what our formatter makes of QEMU's own query-pci, and
    // ours of ours; line for line the same structure once QEMU's IRQ lines are left
    // out, the host bridge's lines the same text.
    let (g_text, q_text) = (hmp(&mut ours, "info pci"), hmp(&mut theirs, "info pci"));
    assert_eq!(info_pci(&q), q_text);
    assert_eq!(info_pci(&g), g_text);
    let host_bridge = |text: &str| text.split("  Bus ").nth(1).map(str::to_string);
    assert_eq!(host_bridge(&g_text), host_bridge(&q_text));
    let structure = |text: &str, keep_irq: bool| -> Vec<String> {
        let mut kinds: Vec<String> = (text.lines())
            .map(line_kind)
            .filter(|k| keep_irq || k.trim() != "irq")
            .collect();
        kinds.dedup();
        kinds
    };
    assert_eq!(structure(&g_text, true), structure(&q_text, false));
    assert!(q_text.contains("      IRQ 0, pin A\n"), "{q_text}");
    // query-pci takes no arguments: both refuse one with QEMU's words.
    let bad = json!({"x": 1});
    assert_eq!(
        ours.err("query-pci", bad.clone()),
        theirs.err("query-pci", bad)
    );
    assert_eq!(
        ours.err("query-pci", json!({"x": 1})),
        (
            "GenericError".to_string(),
            "Parameter 'x' is unexpected".to_string()
        )
    );
}
