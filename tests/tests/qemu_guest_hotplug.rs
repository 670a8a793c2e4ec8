//! ACPI PCI hotplug of the test guest's `pci-hotplug` scenario (tests/guest/src/scenarios/
//! hotplug/) under QEMU 7.2's `-M pc`, the machine whose PIIX4 register interface vmm-core
//! follows: device_add of a virtio-blk and a virtio-net device (the guest finds the
//! registers in the DSDT, assigns the BARs SeaBIOS never saw, checks the disk's data and
//! the NIC's traffic), device_del (the guest quiesces the driver and ejects the slot), a
//! second add into the same slot, and a guest that never ejects. Also the guest's AML scanner
//! (tests/guest/src/acpi/aml_fields.rs, built here on the host) on tables that are broken.
//!
//! What QEMU 7.2 does:
//! - device_add answers {} at once; the slot's PCIU bit and GPE 1 are set and the SCI
//!   raised. The first free slot of bus 0 is 2 (0: host bridge, 1: PIIX3).
//! - device_del answers {} at once and sets PCID and GPE 1; the device stays until the guest
//!   writes its slot to B0EJ. Then, during that write, QEMU emits two DEVICE_DELETED events:
//!   first `{"path": "/machine/peripheral/ID/virtio-backend"}` (the virtio device inside
//!   the proxy, no "device" member), then `{"device": "ID", "path": "/machine/peripheral/ID"}`.
//! - A guest that never ejects: no DEVICE_DELETED, query-pci keeps listing the device, and a
//!   second device_del (3 s later) answers {} again, not "Device disk1 is already in the
//!   process of unplug", and raises GPE 1 again: the guest sees the slot in PCID once more
//!   (two sent back to back both answer {}, and the guest may see one event for both).
//!   device_add into the slot meanwhile: "PCI: slot 2 function 0 not available for
//!   virtio-blk-pci, in use by virtio-blk-pci,id=disk1".

#[allow(dead_code)]
#[path = "../guest/src/acpi/aml_fields.rs"]
mod aml_fields;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_tests::frame_reflector::{Reflector, GUEST_IP, PEER_IP, PORT};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::qmp::QmpClient;
use flotilla_tests::{path_arg, TempDir};
use serde_json::{json, Value};

/// SeaBIOS runs emulated on kvm-pvm hosts: a few seconds to the guest's first line.
const BOOT: Duration = Duration::from_secs(60);
/// One add or removal, checks included (about 50 ms here).
const STEP: Duration = Duration::from_secs(30);
/// How long a guest that ignores the eject is given to eject all the same.
const NO_EJECT: Duration = Duration::from_secs(3);
/// The BAR window for hot-added functions: inside the 32-bit PCI hole QEMU's _CRS gives
/// for 128 MiB of RAM (0x08000000-0xfebfffff) and below SeaBIOS's BARs, which it puts at
/// the top (0xfc000000 up).
const PCI_ASSIGN: &str = "pci_assign=0xc0000000,0x10000000";
/// What the guest finds in QEMU 7.2's pc DSDT: _E01 (PCI hotplug) and _E02 (CPU hotplug),
/// PCIU/PCID in region PCST at 0xae00, B0EJ in SEJ at 0xae08; slots 0 and 1 are taken.
const READY: &str = "GUEST HOTPLUG READY gpe=1,2 pciu=0xae00 pcid=0xae04 b0ej=0xae08 slots=0x3";

/// The guest on pc, running, with a QMP client; READY seen.
fn start(cmdline: &str) -> (Qemu, QmpClient) {
    let mut qemu = Qemu::pc_guest(&format!("scenario=pci-hotplug {PCI_ASSIGN} {cmdline}"), &[]);
    let mut client = qemu.client();
    client.ok("cont", json!({}));
    let ready = qemu.vm.expect_prefix("GUEST HOTPLUG READY", BOOT);
    assert_eq!(ready, READY, "{}", qemu.vm.transcript());
    (qemu, client)
}

/// The value of ` key=` in a guest line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Waits for a line starting with `prefix` that is about `slot`.
fn expect_slot(qemu: &mut Qemu, prefix: &str, slot: &str) -> String {
    let want = format!("slot={slot}");
    qemu.vm.expect_line(&format!("{prefix} {want}"), STEP, |l| {
        l.starts_with(prefix) && l.split_whitespace().any(|w| w == want)
    })
}

/// device_add of `device` (an object), then GUEST HOTPLUG ADDED: the slot.
fn add(qemu: &mut Qemu, client: &mut QmpClient, device: Value, vendor_device: &str) -> String {
    assert_eq!(client.ok("device_add", device), json!({}));
    let added = qemu.vm.expect_prefix("GUEST HOTPLUG ADDED slot=", STEP);
    assert!(
        added.contains(&format!(" vendor=0x1af4 device={vendor_device} ")),
        "{added}"
    );
    field(&added, "slot").to_string()
}

/// The data the guest writes: P(seed) over 128 sectors, word i of sector s =
/// (seed ^ (s << 16) ^ i) * 0x9E3779B97F4A7C15 (tests/guest/README.md, blk-pattern).
fn pattern(seed: u64) -> Vec<u8> {
    (0..128u64)
        .flat_map(|s| {
            (0..64u64).map(move |i| (seed ^ (s << 16) ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        })
        .flat_map(u64::to_le_bytes)
        .collect()
}

/// device_del of `id`, the guest's REMOVED line for `slot`, and QEMU's DEVICE_DELETED events
/// (the virtio backend's, then the device's).
fn remove(qemu: &mut Qemu, client: &mut QmpClient, id: &str, slot: &str) {
    assert_eq!(client.ok("device_del", json!({"id": id})), json!({}));
    expect_slot(qemu, "GUEST HOTPLUG REMOVED", slot);
    let mut deleted = || {
        client
            .event_within("DEVICE_DELETED", STEP)
            .unwrap_or_else(|| panic!("no DEVICE_DELETED for {id} within {STEP:?}: not ejected?"))
    };
    let backend = deleted();
    assert_eq!(
        backend["data"],
        json!({"path": format!("/machine/peripheral/{id}/virtio-backend")}),
        "{backend}"
    );
    let device = deleted();
    assert_eq!(
        device["data"],
        json!({"device": id, "path": format!("/machine/peripheral/{id}")}),
        "{device}"
    );
    assert!(
        !pci_ids(client).contains(&id.to_string()),
        "{id} still in query-pci"
    );
}

/// The qdev ids query-pci lists on bus 0.
fn pci_ids(client: &mut QmpClient) -> Vec<String> {
    let buses = client.ok("query-pci", json!({}));
    buses[0]["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["qdev_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A 1 MiB raw image and its blockdev node `hp0`.
fn disk(client: &mut QmpClient, dir: &Path) -> std::path::PathBuf {
    let image = dir.join("hot.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let file = json!({"driver": "file", "filename": path_arg(&image)});
    client.ok(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "hp0", "file": file}),
    );
    image
}

#[test]
fn a_disk_is_added_checked_removed_and_added_again() {
    let dir = TempDir::new("hotplug-disk");
    let (mut qemu, mut client) = start("");
    let image = disk(&mut client, dir.path());
    let device =
        json!({"driver": "virtio-blk-pci", "drive": "hp0", "id": "disk1", "serial": "hot1"});
    let mut seeds = Vec::new();
    let mut slots = Vec::new();
    for _ in 0..2 {
        // A transitional virtio-blk (0x1001): pc's bus is conventional PCI.
        let slot = add(&mut qemu, &mut client, device.clone(), "0x1001");
        let ok = expect_slot(&mut qemu, "GUEST HOTPLUG BLK OK", &slot);
        assert_eq!(field(&ok, "capacity"), "2048", "{ok}");
        assert!(ok.ends_with(" serial=hot1"), "{ok}");
        let seed = hex(field(&ok, "seed"));
        let data = std::fs::read(&image).expect("image");
        assert!(
            data[..64 << 10] == pattern(seed)[..],
            "the image does not hold P({seed:#x}) after {ok}"
        );
        remove(&mut qemu, &mut client, "disk1", &slot);
        seeds.push(seed);
        slots.push(slot);
    }
    assert_eq!(slots[0], slots[1], "added again into another slot");
    assert_ne!(seeds[0], seeds[1], "the second add wrote the same data");
    assert!(
        !qemu.vm.transcript().contains("GUEST ERROR"),
        "{}",
        qemu.vm.transcript()
    );
}

#[test]
fn a_nic_is_added_carries_traffic_and_is_removed() {
    let reflector = Reflector::start();
    let peer = PEER_IP.map(|b| b.to_string()).join(".");
    let (mut qemu, mut client) = start(&format!("ip={GUEST_IP} peer={peer} port={PORT}"));
    let local = json!({"type": "inet", "host": "127.0.0.1", "port": "0"});
    let remote = json!({"type": "inet", "host": "127.0.0.1", "port": reflector.port.to_string()});
    client.ok(
        "netdev_add",
        json!({"type": "dgram", "id": "hn1", "local": local, "remote": remote}),
    );
    let mac = "52:54:00:12:34:56";
    let device = json!({"driver": "virtio-net-pci", "netdev": "hn1", "id": "nic1", "mac": mac});
    let slot = add(&mut qemu, &mut client, device, "0x1000");
    let ok = expect_slot(&mut qemu, "GUEST HOTPLUG NET OK", &slot);
    assert_eq!(field(&ok, "mac"), mac, "{ok}");
    let traffic = expect_slot(&mut qemu, "GUEST HOTPLUG NET TRAFFIC OK", &slot);
    assert_eq!(field(&traffic, "echoed"), "16", "{traffic}");
    assert!(reflector.arp.load(Ordering::Relaxed) >= 1, "no ARP request");
    assert!(
        reflector.udp.load(Ordering::Relaxed) >= 16,
        "fewer than 16 datagrams"
    );
    remove(&mut qemu, &mut client, "nic1", &slot);
    assert!(
        !qemu.vm.transcript().contains("GUEST ERROR"),
        "{}",
        qemu.vm.transcript()
    );
}

#[test]
fn a_guest_that_never_ejects_keeps_the_device() {
    let dir = TempDir::new("hotplug-ignore");
    let (mut qemu, mut client) = start("hotplug-ignore-eject=1");
    disk(&mut client, dir.path());
    let device =
        json!({"driver": "virtio-blk-pci", "drive": "hp0", "id": "disk1", "serial": "kept"});
    let slot = add(&mut qemu, &mut client, device, "0x1001");
    expect_slot(&mut qemu, "GUEST HOTPLUG BLK OK", &slot);
    for _ in 0..2 {
        // QEMU 7.2 takes the request again (see the top of the file).
        assert_eq!(client.ok("device_del", json!({"id": "disk1"})), json!({}));
        expect_slot(&mut qemu, "GUEST HOTPLUG IGNORED", &slot);
        let deleted = client.event_within("DEVICE_DELETED", NO_EJECT);
        assert!(deleted.is_none(), "deleted without an eject: {deleted:?}");
        assert!(pci_ids(&mut client).contains(&"disk1".to_string()));
    }
    assert!(!qemu.vm.transcript().contains("GUEST HOTPLUG REMOVED"));
}

/// A table of `aml` with a DSDT header (the scanner skips the header's 36 bytes).
fn table(aml: &[u8]) -> Vec<u8> {
    let mut t = b"DSDT".to_vec();
    t.extend_from_slice(&((36 + aml.len()) as u32).to_le_bytes());
    t.resize(36, 0);
    t.extend_from_slice(aml);
    t
}

/// What QEMU 7.2's pc DSDT says about the hotplug registers, trimmed: OperationRegion
/// (PCST, SystemIO, 0xAE00, 0x08), Field (PCST, DWordAcc, NoLock, WriteAsZeros) {PCIU, 32,
/// PCID, 32}, OperationRegion (SEJ_, SystemIO, 0xAE08, 0x04), Field (SEJ_, ...) {B0EJ, 32},
/// Method (\_GPE._E02) and, inside Scope (_GPE), Method (_E01).
fn hotplug_aml() -> Vec<u8> {
    let mut aml = Vec::new();
    aml.extend_from_slice(b"\x5b\x80PCST\x01\x0b\x00\xae\x0a\x08");
    aml.extend_from_slice(b"\x5b\x81\x10PCST\x43PCIU\x20PCID\x20");
    aml.extend_from_slice(b"\x5b\x80SEJ_\x01\x0b\x08\xae\x0a\x04");
    aml.extend_from_slice(b"\x5b\x81\x0bSEJ_\x43B0EJ\x20");
    aml.extend_from_slice(b"\x14\x0f\x5c\x2e_GPE_E02\x00\xa3\xa3\xa3");
    aml.extend_from_slice(b"\x10\x0c_GPE\x14\x06_E01\x00");
    aml
}

#[test]
fn the_aml_scanner_finds_the_registers_and_survives_broken_tables() {
    use aml_fields::{edge_gpe_methods, find_field, find_region, Malformed};
    let good = table(&hotplug_aml());
    let pcid = find_field(&good, *b"PCID").found.expect("PCID");
    assert_eq!(
        (pcid.region, pcid.bit_offset, pcid.bit_width, pcid.access),
        (*b"PCST", 32, 32, 3)
    );
    let b0ej = find_field(&good, *b"B0EJ").found.expect("B0EJ");
    let sej = find_region(&good, b0ej.region).found.expect("SEJ_");
    assert_eq!((sej.space, sej.offset, sej.len), (1, 0xae08, 4));
    let mut gpes = [0u64; 4];
    edge_gpe_methods(&good, &mut gpes);
    assert_eq!(gpes, [0b110, 0, 0, 0]);

    // A Field whose PkgLength runs past the end of the table: not taken, and said why.
    let mut cut = good.clone();
    let field_at = cut
        .windows(2)
        .position(|w| w == b"\x5b\x81")
        .expect("a Field");
    cut.truncate(field_at + 12);
    let search = find_field(&cut, *b"PCID");
    assert!(search.found.is_none());
    let problem = search.malformed.expect("the cut Field is reported");
    assert_eq!(
        (problem.at, problem.what),
        (field_at, Malformed::PkgLengthPastEnd),
        "{}",
        problem.what.describe()
    );

    // Another region whose offset is computed at run time (a name here) is no concern;
    // the region looked for with one is refused.
    let mut other = b"\x5b\x80OTHR\x00FOO_\x0a\x10".to_vec();
    other.extend_from_slice(&hotplug_aml());
    let search = find_region(&table(&other), *b"PCST");
    assert!(search.found.is_some() && search.malformed.is_none());
    let search = find_region(&table(b"\x5b\x80PCST\x01FOO_\x0a\x08"), *b"PCST");
    assert_eq!(
        search.malformed.map(|p| p.what),
        Some(Malformed::NotConstant)
    );

    // Every truncation and every single-byte change decodes or is refused, never panics.
    for len in 0..=good.len() {
        let t = &good[..len];
        let _ = (find_field(t, *b"PCIU"), find_region(t, *b"PCST"));
        edge_gpe_methods(t, &mut [0; 4]);
    }
    for at in 36..good.len() {
        for value in 0..=255u8 {
            let mut t = good.clone();
            t[at] = value;
            let _ = (find_field(&t, *b"PCIU"), find_region(&t, *b"PCST"));
            edge_gpe_methods(&t, &mut [0; 4]);
        }
    }
}
