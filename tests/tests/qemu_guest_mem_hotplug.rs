//! ACPI memory hotplug of the test guest's `mem-hotplug` scenario (tests/guest/src/scenarios/
//! mem_hotplug.rs) under QEMU 7.2's `-M pc -m 128,slots=4,maxmem=1G`, the machine whose register
//! interface vmm-core follows, through the scenario Flotilla's test runs too
//! (tests/src/mem_hotplug.rs): DIMMs of each backend type added, written all over by the guest
//! and used for a virtio-blk disk's I/O, refused in every way QEMU refuses them, removed and
//! added again. Also the guest's `Name (MDNR, ...)` lookup (tests/guest/src/acpi/aml_fields.rs,
//! built here on the host).
//!
//! What QEMU 7.2 does, as seen here (the shared scenario asserts it):
//! - The DSDT has `\_SB.PCI0.MHPD` with OperationRegion HPMR (SystemIO 0x0a00, 0x18), `\_SB.MHPC`
//!   with `Name (MDNR, 4)`, the fields MRBL, MRBH, MRLL, MRLH, MPX (DWordAcc, Preserve), MES,
//!   MINS, MRMV, MEJ at byte 0x14 (ByteAcc, WriteAsZeros), MSEL, MOEV, MOSC (DWordAcc), MSCN,
//!   MP00-MP03 (PNP0C80), and `\_GPE._E03` calling `\_SB.MHPC.MSCN`.
//! - device_add answers {} at once; the DIMM takes the first free slot (or slot=) and the first
//!   free range of device memory (4 GiB up, maxmem - RAM plus 1 GiB per slot), aligned to 2 MiB
//!   for memory-backend-ram and to the page for -memfd and -file (addr= 0 means "place it").
//! - The guest's _OST write (MOSC) raises ACPI_DEVICE_OST {"info": {"device", "slot",
//!   "slot-type": "DIMM", "source", "status"}}; query-acpi-ospm-status lists every slot with
//!   its last _OST (an emptied slot keeps it, without "device").
//! - query-memory-devices lists the DIMMs by address: {"type": "dimm", "data": {id, addr, size,
//!   slot, node, memdev: "/objects/ID", hotplugged, hotpluggable}}.
//! - Refusals, in QEMU's order: the id and bus ("Device 'pc-dimm' can't go on PCI bus"), each
//!   property as set (unknown, read-only size, integers, memdev not found: DeviceNotFound),
//!   then the slot ("invalid slot number N, valid range is [0-3]", "slot N is busy", "no free
//!   slots available", without slots "no slots where allocated, please specify the 'slots'
//!   option", and slot=0 then "invalid slot number 0, valid range is
//!   [0-18446744073709551615]"), memdev not set, the space left ("not enough space, currently
//!   0x.. in use of total space for memory devices 0x.."), addr alignment, size alignment,
//!   addr range and conflicts, then a busy memdev ("can't use already busy memdev: ID") and
//!   node. object-del of a backend in use: "object 'ID' is in use, can not be deleted".
//! - device_del answers {} (again and again while the guest has not ejected: no "already in
//!   the process of unplug" for a DIMM); the guest clears the remove event and ejects (MEJ): then
//!   DEVICE_DELETED {"device": "ID", "path": "/machine/peripheral/ID"} (one event: a DIMM has
//!   no backend child), the backend is free to delete, and a new DIMM takes the slot and range.
//! - system_reset keeps the DIMMs; a migration with DIMMs goes ahead (the destination must
//!   have them: Flotilla refuses to migrate a VM with DIMMs instead).

#[allow(dead_code)]
#[path = "../guest/src/acpi/aml_fields.rs"]
mod aml_fields;

use flotilla_tests::blk::empty_image;
use flotilla_tests::mem_hotplug::{self, CMDLINE, MEMORY};
use flotilla_tests::qemu::Qemu;
use flotilla_tests::{path_arg, TempDir};
use serde_json::json;

/// The DIMM scenario, with a virtio-blk disk carrying data through each DIMM.
#[test]
fn qemu_dimms_are_added_used_refused_and_removed() {
    let dir = TempDir::new("qemu-mem-hotplug");
    let image = dir.path().join("disk.img");
    empty_image(&image, 1 << 20);
    let drive = format!("file={},format=raw,if=none,id=d0", path_arg(&image));
    let mut qemu = Qemu::pc_guest(
        &format!("{CMDLINE} mem-blk=1"),
        &[
            "-m",
            MEMORY,
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
        ],
    );
    let mut qmp = qemu.client();
    qmp.ok("cont", json!({}));
    mem_hotplug::scenario(&mut qemu.vm, &mut qmp, dir.path(), Some(&image));
}

/// A pc machine without memory slots refuses DIMMs and has nothing to list.
#[test]
fn qemu_without_memory_slots() {
    let qemu = Qemu::pc_guest("scenario=idle", &[]);
    mem_hotplug::without_slots(&mut qemu.client());
}

/// device_del of a DIMM the guest never ejects (it does not run) is taken again and again.
#[test]
fn qemu_a_dimm_the_guest_does_not_eject_is_asked_for_again() {
    let memory = format!("-m {MEMORY}");
    let args: Vec<&str> = memory.split(' ').collect();
    let qemu = Qemu::pc_guest("scenario=idle", &args);
    mem_hotplug::asked_again(&mut qemu.client());
}

/// A table: the header (only its length matters to the scanner), then `aml`.
fn table(aml: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; aml_fields::TABLE_HEADER];
    t[..4].copy_from_slice(b"DSDT");
    t.extend_from_slice(aml);
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t
}

#[test]
fn the_slot_count_is_found_by_name() {
    // Name (MDNR, 0x04), as QEMU writes it (BytePrefix), after a Name of another value.
    let aml = table(b"\x08MDNA\x0a\x07\x08MDNR\x0a\x04");
    let found = aml_fields::find_integer_name(&aml, *b"MDNR");
    assert_eq!((found.found, found.conflict), (Some(4), None));
    // A root path, a word and a dword constant, Zero and One.
    for (aml, value) in [
        (&b"\x08\\MDNR\x0b\x00\x01"[..], 256),
        (b"\x08MDNR\x0c\x01\x00\x00\x00", 1),
        (b"\x08MDNR\x00", 0),
        (b"\x08MDNR\x01", 1),
    ] {
        assert_eq!(
            aml_fields::find_integer_name(&table(aml), *b"MDNR").found,
            Some(value),
            "{aml:x?}"
        );
    }
    // Not an integer (a string): not found, and why.
    let s = aml_fields::find_integer_name(&table(b"\x08MDNR\x0dfour\x00"), *b"MDNR");
    assert_eq!(s.found, None);
    assert_eq!(
        s.malformed.map(|p| p.what),
        Some(aml_fields::Malformed::NotConstant)
    );
    // Truncated in the middle of its value.
    let s = aml_fields::find_integer_name(&table(b"\x08MDNR\x0c\x01"), *b"MDNR");
    assert_eq!(
        s.malformed.map(|p| p.what),
        Some(aml_fields::Malformed::Truncated)
    );
    // Defined twice with two values: the first, and where the other is.
    let s = aml_fields::find_integer_name(&table(b"\x08MDNR\x0a\x04\x08MDNR\x0a\x08"), *b"MDNR");
    assert_eq!(
        (s.found, s.conflict),
        (Some(4), Some(aml_fields::TABLE_HEADER + 7))
    );
    assert_eq!(
        aml_fields::find_integer_name(&aml, *b"MDNX").found,
        None,
        "another name"
    );
}
