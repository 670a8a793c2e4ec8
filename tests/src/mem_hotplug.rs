//! The memory hotplug scenario, run the same way on QEMU 7.2 (`-M pc -m 128,slots=4,maxmem=1G`)
//! and on Flotilla (`--memory 128,slots=4,maxmem=1G`): the test guest's `mem-hotplug` scenario
//! (tests/guest/README.md), driven over QMP with object-add, device_add pc-dimm, device_del,
//! object-del, query-memory-devices and query-acpi-ospm-status, checking what the guest prints
//! (each DIMM where QEMU places it, written and read back, and with a disk, disk I/O through
//! it), every reply and the ACPI_DEVICE_OST and DEVICE_DELETED events. The replies asserted are
//! QEMU 7.2's, as seen; what each VMM answered is also kept, for a test to compare them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::blk::{first_mismatch, pattern_sector};
use crate::qmp::QmpClient;
use crate::Vm;

/// The memory option of both VMMs (QEMU's `-m`, the gateway's `--memory`).
pub const MEMORY: &str = "128,slots=4,maxmem=1G";
pub const CMDLINE: &str = "scenario=mem-hotplug";
/// What the guest finds: QEMU's register block at 0xa00, four slots, GPE 3.
pub const READY: &str = "GUEST MEM HOTPLUG READY slots=4 port=0xa00 gpe=3";
const MIB: u64 = 1 << 20;
/// Where device memory starts (QEMU pc: at 4 GiB when RAM fits below it).
const BASE: u64 = 1 << 32;
/// SeaBIOS runs emulated on kvm-pvm hosts: a few seconds to the guest's first line.
pub const BOOT: Duration = Duration::from_secs(90);
/// One DIMM's check (128 MiB written and read back: about a second here).
const STEP: Duration = Duration::from_secs(60);
/// mem-blk=1's data: P(seed) over sectors 0-127, seed = slot << 32 | 0x4d454d00.
const BLK_SECTORS: u64 = 128;

/// What a VMM answered and sent.
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// Every command, its arguments and the whole reply, in order.
    pub answers: Vec<(String, Value, Value)>,
    /// ACPI_DEVICE_OST and DEVICE_DELETED events' data, in order.
    pub events: Vec<(String, Value)>,
}

struct Run<'a> {
    vm: &'a mut Vm,
    qmp: &'a mut QmpClient,
    dir: PathBuf,
    disk: Option<PathBuf>,
    seen: Observed,
}

impl Run<'_> {
    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let reply = self.qmp.execute(command, arguments.clone());
        self.seen
            .answers
            .push((command.to_string(), arguments, reply.clone()));
        reply
    }

    fn ok(&mut self, command: &str, arguments: Value) -> Value {
        let reply = self.execute(command, arguments.clone());
        match reply.get("return") {
            Some(r) => r.clone(),
            None => panic!(
                "{command} {arguments} failed: {reply}\n{}",
                self.vm.transcript()
            ),
        }
    }

    /// A command that must fail with `class` and `desc`.
    fn refused(&mut self, command: &str, arguments: Value, class: &str, desc: &str) {
        let reply = self.execute(command, arguments.clone());
        assert_eq!(
            reply,
            json!({"error": {"class": class, "desc": desc}}),
            "{command} {arguments}"
        );
    }

    fn event(&mut self, name: &str) -> Value {
        let e = self.qmp.event_within(name, STEP).unwrap_or_else(|| {
            panic!(
                "no {name} within {STEP:?}; guest:\n{}",
                self.vm.transcript()
            )
        });
        self.seen.events.push((name.to_string(), e["data"].clone()));
        e["data"].clone()
    }

    /// The next guest line starting with `prefix`; a guest error line first fails.
    fn line(&mut self, prefix: &str) -> String {
        let line = self.vm.expect_line(prefix, STEP, |l| {
            l.starts_with(prefix) || l.starts_with("GUEST ERROR")
        });
        assert!(line.starts_with(prefix), "{line}\n{}", self.vm.transcript());
        line
    }

    fn backend(&mut self, qom_type: &str, id: &str, mib: u64) {
        let mut args = json!({"qom-type": qom_type, "id": id, "size": mib * MIB});
        if qom_type == "memory-backend-file" {
            args["mem-path"] = json!(self.dir.join(id));
            args["share"] = json!(true);
        }
        assert_eq!(self.ok("object-add", args), json!({}));
    }

    /// device_add of a DIMM that goes into `slot` at `base`: the guest's check, its _OST.
    fn add(&mut self, args: Value, slot: u64, base: u64, mib: u64) {
        let id = args["id"].as_str().unwrap_or_default().to_string();
        let mut device = json!({"driver": "pc-dimm"});
        for (k, v) in args.as_object().into_iter().flatten() {
            device[k] = v.clone();
        }
        assert_eq!(self.ok("device_add", device), json!({}));
        if let Some(image) = self.disk.clone() {
            let line = self.line("GUEST MEM BLK OK");
            let seed = slot << 32 | 0x4d45_4d00;
            assert_eq!(
                line,
                format!("GUEST MEM BLK OK slot={slot} sectors={BLK_SECTORS} seed={seed:#x}")
            );
            assert_eq!(
                first_mismatch(&image, 0..BLK_SECTORS, |s| pattern_sector(seed, s)),
                None,
                "the disk does not hold what the guest wrote from the DIMM"
            );
        }
        let line = self.line("GUEST MEM ADDED");
        assert_eq!(
            line,
            format!(
                "GUEST MEM ADDED slot={slot} base={base:#x} size={:#x} ok",
                mib * MIB
            )
        );
        let ost = self.event("ACPI_DEVICE_OST");
        assert_eq!(
            ost,
            json!({"info": {"device": id, "slot": slot.to_string(), "slot-type": "DIMM",
                            "source": 1, "status": 0}})
        );
    }

    /// query-memory-devices: `dimms` as (id, memdev, slot, address, MiB), in address order.
    fn expect_dimms(&mut self, dimms: &[(&str, &str, u64, u64, u64)]) {
        let want: Vec<Value> = dimms
            .iter()
            .map(|(id, memdev, slot, addr, mib)| {
                json!({"type": "dimm", "data": {
                    "id": id, "memdev": format!("/objects/{memdev}"), "slot": slot,
                    "addr": addr, "size": mib * MIB, "node": 0,
                    "hotplugged": true, "hotpluggable": true}})
            })
            .collect();
        assert_eq!(
            self.ok("query-memory-devices", json!({})),
            Value::Array(want)
        );
    }

    /// query-acpi-ospm-status: per slot, its device's id and the last _OST (event, status).
    fn expect_ospm(&mut self, slots: &[(Option<&str>, u64, u64)]) {
        let want: Vec<Value> = slots
            .iter()
            .enumerate()
            .map(|(slot, (device, source, status))| {
                let mut v = json!({"slot": slot.to_string(), "slot-type": "DIMM",
                                   "source": source, "status": status});
                if let Some(d) = device {
                    v["device"] = json!(d);
                }
                v
            })
            .collect();
        assert_eq!(
            self.ok("query-acpi-ospm-status", json!({})),
            Value::Array(want)
        );
    }
}

/// The whole scenario on a VM started with [`MEMORY`] and [`CMDLINE`] (plus ` mem-blk=1` when
/// `disk`, the image of its virtio-blk device 0, is given), its guest running: `dir` holds the
/// file backends. Returns what the VMM answered.
pub fn scenario(vm: &mut Vm, qmp: &mut QmpClient, dir: &Path, disk: Option<&Path>) -> Observed {
    let ready = vm.expect_prefix("GUEST MEM HOTPLUG READY", BOOT);
    assert_eq!(ready, READY, "{}", vm.transcript());
    let mut run = Run {
        vm,
        qmp,
        dir: dir.to_path_buf(),
        disk: disk.map(Path::to_path_buf),
        seen: Observed::default(),
    };
    // Each kind of backend, placed one after the other from 4 GiB: RAM (2 MiB aligned),
    // memfd and file (page aligned), the last into the slot asked for.
    run.backend("memory-backend-ram", "m1", 128);
    run.add(json!({"id": "d1", "memdev": "m1"}), 0, BASE, 128);
    run.backend("memory-backend-memfd", "m2", 128);
    run.add(
        json!({"id": "d2", "memdev": "m2"}),
        1,
        BASE + 128 * MIB,
        128,
    );
    run.backend("memory-backend-file", "m3", 64);
    run.add(
        json!({"id": "d3", "memdev": "m3", "slot": 3}),
        3,
        BASE + 256 * MIB,
        64,
    );
    run.expect_dimms(&[
        ("d1", "m1", 0, BASE, 128),
        ("d2", "m2", 1, BASE + 128 * MIB, 128),
        ("d3", "m3", 3, BASE + 256 * MIB, 64),
    ]);
    run.expect_ospm(&[
        (Some("d1"), 1, 0),
        (Some("d2"), 1, 0),
        (None, 0, 0),
        (Some("d3"), 1, 0),
    ]);
    refusals(&mut run);
    // The last free slot, then none.
    run.add(json!({"id": "d4", "memdev": "m4"}), 2, BASE + 320 * MIB, 64);
    run.backend("memory-backend-ram", "m7", 64);
    let generic = "GenericError";
    run.refused(
        "device_add",
        json!({"driver": "pc-dimm", "id": "d9", "memdev": "m7"}),
        generic,
        "no free slots available",
    );
    // Out again: the guest ejects it, the backend is free.
    assert_eq!(run.ok("device_del", json!({"id": "d1"})), json!({}));
    assert_eq!(run.line("GUEST MEM REMOVED"), "GUEST MEM REMOVED slot=0");
    let deleted = run.event("DEVICE_DELETED");
    assert_eq!(
        deleted,
        json!({"device": "d1", "path": "/machine/peripheral/d1"})
    );
    run.refused(
        "device_del",
        json!({"id": "d1"}),
        "DeviceNotFound",
        "Device 'd1' not found",
    );
    assert_eq!(run.ok("object-del", json!({"id": "m1"})), json!({}));
    run.expect_dimms(&[
        ("d2", "m2", 1, BASE + 128 * MIB, 128),
        ("d3", "m3", 3, BASE + 256 * MIB, 64),
        ("d4", "m4", 2, BASE + 320 * MIB, 64),
    ]);
    // The slot keeps the guest's last _OST; its device is gone.
    run.expect_ospm(&[
        (None, 1, 0),
        (Some("d2"), 1, 0),
        (Some("d4"), 1, 0),
        (Some("d3"), 1, 0),
    ]);
    // The first free slot and the first free range again.
    run.add(json!({"id": "d5", "memdev": "m7"}), 0, BASE, 64);
    // A reset keeps the DIMMs: the new boot finds each present, without an event.
    assert_eq!(run.ok("system_reset", json!({})), json!({}));
    for (slot, base, mib) in [
        (0, BASE, 64),
        (1, BASE + 128 * MIB, 128),
        (2, BASE + 320 * MIB, 64),
        (3, BASE + 256 * MIB, 64),
    ] {
        let prefix = format!("GUEST INFO mem hotplug slot={slot} present at boot");
        assert_eq!(
            run.line(&prefix),
            format!("{prefix} base={base:#x} size={:#x}", mib * MIB)
        );
    }
    assert_eq!(run.line("GUEST MEM HOTPLUG READY"), READY);
    run.expect_dimms(&[
        ("d5", "m7", 0, BASE, 64),
        ("d2", "m2", 1, BASE + 128 * MIB, 128),
        ("d3", "m3", 3, BASE + 256 * MIB, 64),
        ("d4", "m4", 2, BASE + 320 * MIB, 64),
    ]);
    run.seen
}

/// What a VM with DIMMs d1-d3 (m1-m3) in slots 0, 1 and 3 refuses; leaves m4 (64 MiB, RAM)
/// unused for slot 2.
fn refusals(run: &mut Run) {
    let generic = "GenericError";
    let dimm = |extra: Value| {
        let mut d = json!({"driver": "pc-dimm", "id": "d9"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            d[k] = v.clone();
        }
        d
    };
    run.backend("memory-backend-ram", "m4", 64);
    for (args, class, desc) in [
        (
            json!({"memdev": "m1"}),
            generic,
            "can't use already busy memdev: m1",
        ),
        (
            json!({"memdev": "nope"}),
            "DeviceNotFound",
            "Device 'nope' not found",
        ),
        (json!({}), generic, "'memdev' property must be set"),
        (
            json!({"memdev": "m4", "slot": 3}),
            generic,
            "slot 3 is busy",
        ),
        (
            json!({"memdev": "m4", "slot": 4}),
            generic,
            "invalid slot number 4, valid range is [0-3]",
        ),
        (
            json!({"memdev": "m4", "slot": -2}),
            generic,
            "invalid slot number -2, valid range is [0-3]",
        ),
        (
            json!({"memdev": "m4", "addr": BASE + 1}),
            generic,
            "address must be aligned to 0x200000 bytes",
        ),
        (
            json!({"memdev": "m4", "addr": 64u64 << 30}),
            generic,
            "can't add memory device [0x1000000000:0x4000000], usable range for memory \
             devices [0x100000000:0x138000000]",
        ),
        (
            json!({"memdev": "m4", "addr": BASE + 64 * MIB}),
            generic,
            "address range conflicts with memory device id='d1'",
        ),
        (
            json!({"memdev": "m4", "node": 1}),
            generic,
            "'DIMM property node has value 1' which exceeds the number of numa nodes: 1",
        ),
        (
            json!({"memdev": "m4", "bus": "pci.0"}),
            generic,
            "Device 'pc-dimm' can't go on PCI bus",
        ),
        (
            json!({"memdev": "m4", "foo": 1}),
            generic,
            "Property 'pc-dimm.foo' not found",
        ),
        (
            json!({"memdev": "m4", "size": 5}),
            generic,
            "Property 'pc-dimm.size' is not writable",
        ),
        (
            json!({"memdev": "m4", "slot": "x"}),
            generic,
            "Parameter 'slot' expects integer",
        ),
        (
            json!({"memdev": "m4", "addr": "x"}),
            generic,
            "Parameter 'addr' expects integer",
        ),
        (
            json!({"memdev": "m4", "id": "d1"}),
            generic,
            "Duplicate device ID 'd1'",
        ),
    ] {
        run.refused("device_add", dimm(args), class, desc);
    }
    run.refused(
        "object-del",
        json!({"id": "m1"}),
        generic,
        "object 'm1' is in use, can not be deleted",
    );
    // More than maxmem allows, and a size that is not a whole number of 2 MiB.
    run.backend("memory-backend-ram", "m5", 1024);
    run.refused(
        "device_add",
        dimm(json!({"memdev": "m5"})),
        generic,
        "not enough space, currently 0x14000000 in use of total space for memory devices \
         0x38000000",
    );
    let odd = json!({"qom-type": "memory-backend-ram", "id": "m6", "size": MIB + 4096});
    assert_eq!(run.ok("object-add", odd), json!({}));
    run.refused(
        "device_add",
        dimm(json!({"memdev": "m6"})),
        generic,
        "backend memory size must be multiple of 0x200000",
    );
    for id in ["m5", "m6"] {
        assert_eq!(run.ok("object-del", json!({"id": id})), json!({}));
    }
}

/// What a VM started without memory slots answers (QEMU `-m 128`): its replies.
pub fn without_slots(qmp: &mut QmpClient) -> Vec<Value> {
    let mut replies = Vec::new();
    let backend = json!({"qom-type": "memory-backend-ram", "id": "m1", "size": 128 * MIB});
    replies.push(qmp.execute("object-add", backend));
    for (args, desc) in [
        (
            json!({"driver": "pc-dimm", "id": "d1", "memdev": "m1"}),
            "no slots where allocated, please specify the 'slots' option",
        ),
        (
            json!({"driver": "pc-dimm", "id": "d1", "memdev": "m1", "slot": 0}),
            "invalid slot number 0, valid range is [0-18446744073709551615]",
        ),
    ] {
        let reply = qmp.execute("device_add", args.clone());
        assert_eq!(
            reply,
            json!({"error": {"class": "GenericError", "desc": desc}}),
            "{args}"
        );
        replies.push(reply);
    }
    for query in ["query-memory-devices", "query-acpi-ospm-status"] {
        let reply = qmp.execute(query, json!({}));
        assert_eq!(reply, json!({"return": []}), "{query}");
        replies.push(reply);
    }
    replies
}

/// A DIMM added to a VM whose guest does not run (-S, never continued): device_del is
/// taken every time it is asked (no "already in the process of unplug" for a DIMM), and the
/// DIMM stays until the guest ejects it.
pub fn asked_again(qmp: &mut QmpClient) {
    let backend = json!({"qom-type": "memory-backend-ram", "id": "m1", "size": 128 * MIB});
    assert_eq!(qmp.ok("object-add", backend), json!({}));
    let dimm = json!({"driver": "pc-dimm", "id": "d1", "memdev": "m1"});
    assert_eq!(qmp.ok("device_add", dimm), json!({}));
    for id in ["d1", "d1", "/machine/peripheral/d1"] {
        assert_eq!(qmp.ok("device_del", json!({"id": id})), json!({}), "{id}");
    }
    let listed = qmp.ok("query-memory-devices", json!({}));
    assert_eq!(listed[0]["data"]["id"], "d1", "{listed}");
    assert_eq!(
        qmp.err("object-del", json!({"id": "m1"})).1,
        "object 'm1' is in use, can not be deleted"
    );
}
