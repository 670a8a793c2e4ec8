//! query-pci: the PCI functions as vmm-core reads them from their configuration spaces,
//! in QEMU 7.2's shape (PciInfo per bus), with the class names QEMU gives; and the text
//! HMP's `info pci` makes of that answer.

use std::collections::BTreeMap;

use ipc::{PciBarKind, PciFunctionInfo, VmmReply, VmmRequest};
use serde_json::{json, Value};

use crate::qmp::args::NoArgs;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};

pub fn query_pci(c: &mut Ctx, _: NoArgs) -> QmpResult {
    let VmmReply::Pci(functions) = c.vmm(VmmRequest::QueryPci)? else {
        return Err(QmpError::generic(
            "vmm-core answered query-pci with something else",
        ));
    };
    Ok(pci_info(&functions))
}

/// One PciInfo per bus, in bus order: a VM's bus 0 always holds its host bridge, and the
/// none machine, which has no PCI bus, lists none (as QEMU's).
pub fn pci_info(functions: &[PciFunctionInfo]) -> Value {
    let mut buses: BTreeMap<u8, Vec<Value>> = BTreeMap::new();
    for f in functions {
        buses.entry(f.bus).or_default().push(device_info(f));
    }
    buses
        .into_iter()
        .map(|(bus, devices)| json!({"bus": bus, "devices": devices}))
        .collect()
}

/// PciDeviceInfo, as QEMU 7.2's qmp_query_pci_device fills it in.
fn device_info(f: &PciFunctionInfo) -> Value {
    // QEMU's "class" is the class code without its programming interface.
    let class = (f.class_code >> 8) as u16;
    let mut class_info = json!({"class": class});
    if let Some(desc) = class_description(class) {
        class_info["desc"] = json!(desc);
    }
    let mut id = json!({"device": f.device, "vendor": f.vendor});
    if let Some((vendor, subsystem)) = f.subsystem {
        id["subsystem"] = json!(subsystem);
        id["subsystem-vendor"] = json!(vendor);
    }
    let regions: Vec<Value> = f
        .bars
        .iter()
        .map(|bar| {
            // QEMU reports an unmapped BAR at its PCI_BAR_UNMAPPED, ~0 as an int64.
            let address = bar.address.map_or(-1, |a| a as i64);
            let mut region = json!({
                "bar": bar.index,
                "address": address,
                "size": bar.size as i64,
            });
            match bar.kind {
                PciBarKind::Io => region["type"] = json!("io"),
                PciBarKind::Memory {
                    is_64,
                    prefetchable,
                } => {
                    region["type"] = json!("memory");
                    region["mem_type_64"] = json!(is_64);
                    region["prefetch"] = json!(prefetchable);
                }
            }
            region
        })
        .collect();
    let mut device = json!({
        "bus": f.bus,
        "slot": f.slot,
        "function": f.function,
        "class_info": class_info,
        "id": id,
        "irq_pin": f.interrupt_pin,
        "qdev_id": f.qdev_id,
        "regions": regions,
    });
    // A function without an interrupt pin (ours use MSI-X only) has no IRQ to show.
    if f.interrupt_pin != 0 {
        device["irq"] = json!(f.interrupt_line);
    }
    device
}

/// QEMU's names for the classes it knows (pci_class_descriptions; only an exact
/// class and subclass match counts).
pub fn class_description(class: u16) -> Option<&'static str> {
    Some(match class {
        0x0001 => "VGA controller",
        0x0100 => "SCSI controller",
        0x0101 => "IDE controller",
        0x0102 => "Floppy controller",
        0x0103 => "IPI controller",
        0x0104 => "RAID controller",
        0x0106 => "SATA controller",
        0x0107 => "SAS controller",
        0x0180 => "Storage controller",
        0x0200 => "Ethernet controller",
        0x0201 => "Token Ring controller",
        0x0202 => "FDDI controller",
        0x0203 => "ATM controller",
        0x0280 => "Network controller",
        0x0300 => "VGA controller",
        0x0301 => "XGA controller",
        0x0302 => "3D controller",
        0x0380 => "Display controller",
        0x0400 => "Video controller",
        0x0401 | 0x0403 => "Audio controller",
        0x0402 => "Phone",
        0x0480 => "Multimedia controller",
        0x0500 => "RAM controller",
        0x0501 => "Flash controller",
        0x0580 => "Memory controller",
        0x0600 => "Host bridge",
        0x0601 => "ISA bridge",
        0x0602 => "EISA bridge",
        0x0603 => "MC bridge",
        0x0604 => "PCI bridge",
        0x0605 => "PCMCIA bridge",
        0x0606 => "NUBUS bridge",
        0x0607 => "CARDBUS bridge",
        0x0608 => "RACEWAY bridge",
        0x0680 => "Bridge",
        0x0700 => "Serial port",
        0x0701 => "Parallel port",
        0x0800 => "Interrupt controller",
        0x0801 => "DMA controller",
        0x0802 => "Timer",
        0x0803 => "RTC",
        0x0900 => "Keyboard",
        0x0901 => "Pen",
        0x0902 => "Mouse",
        0x0a00 => "Dock station",
        0x0b00 => "i386 cpu",
        0x0c00 => "Firewire controller",
        0x0c01 => "Access bus controller",
        0x0c02 => "SSA controller",
        0x0c03 => "USB controller",
        0x0c04 => "Fibre channel controller",
        0x0c05 => "SMBus",
        _ => return None,
    })
}

/// HMP's `info pci` for a query-pci answer, line for line as QEMU 7.2's
/// hmp_info_pci_device prints it (an unmapped BAR too: its -1 address and the end that
/// wraps from it). Bridges are not printed: bus 0 has none.
pub fn info_pci(buses: &Value) -> String {
    let int = |v: &Value| v.as_i64().unwrap_or_default();
    let hex = |v: &Value| int(v) as u64;
    let mut text = String::new();
    let devices = (buses.as_array().into_iter().flatten())
        .flat_map(|bus| bus["devices"].as_array().into_iter().flatten());
    for d in devices {
        text.push_str(&format!(
            "  Bus {:2}, device {:3}, function {}:\n",
            int(&d["bus"]),
            int(&d["slot"]),
            int(&d["function"])
        ));
        let class = match d["class_info"]["desc"].as_str() {
            Some(desc) => desc.to_string(),
            // QEMU prints the class number in decimal here, zero-padded.
            None => format!("Class {:04}", int(&d["class_info"]["class"])),
        };
        let id = &d["id"];
        text.push_str(&format!(
            "    {class}: PCI device {:04x}:{:04x}\n",
            hex(&id["vendor"]),
            hex(&id["device"])
        ));
        if id.get("subsystem").is_some() && id.get("subsystem-vendor").is_some() {
            text.push_str(&format!(
                "      PCI subsystem {:04x}:{:04x}\n",
                hex(&id["subsystem-vendor"]),
                hex(&id["subsystem"])
            ));
        }
        if let Some(irq) = d.get("irq") {
            let pin = (b'A' - 1).wrapping_add(int(&d["irq_pin"]) as u8) as char;
            text.push_str(&format!("      IRQ {}, pin {pin}\n", int(irq)));
        }
        for r in d["regions"].as_array().into_iter().flatten() {
            let (address, size) = (hex(&r["address"]), hex(&r["size"]));
            let last = address.wrapping_add(size).wrapping_sub(1);
            let bar = int(&r["bar"]);
            if r["type"] == "io" {
                text.push_str(&format!(
                    "      BAR{bar}: I/O at 0x{address:04x} [0x{last:04x}].\n"
                ));
            } else {
                let bits = if r["mem_type_64"] == true { 64 } else { 32 };
                let prefetch = if r["prefetch"] == true {
                    " prefetchable"
                } else {
                    ""
                };
                text.push_str(&format!(
                    "      BAR{bar}: {bits} bit{prefetch} memory at 0x{address:08x} [0x{last:08x}].\n"
                ));
            }
        }
        text.push_str(&format!(
            "      id \"{}\"\n",
            d["qdev_id"].as_str().unwrap_or_default()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::PciBarInfo;

    fn function(slot: u8, bars: Vec<PciBarInfo>, pin: u8) -> PciFunctionInfo {
        PciFunctionInfo {
            bus: 0,
            slot,
            function: 0,
            vendor: 0x1af4,
            device: 0x1042,
            subsystem: Some((0x1af4, 0x40)),
            class_code: 0x010000,
            revision: 1,
            interrupt_line: 11,
            interrupt_pin: pin,
            qdev_id: "vd".into(),
            bars,
        }
    }

    #[test]
    fn answers_in_qemus_shape() {
        let bar = PciBarInfo {
            index: 0,
            kind: PciBarKind::Memory {
                is_64: false,
                prefetchable: false,
            },
            address: Some(0xc000_0000),
            size: 0x8000,
        };
        let unmapped = PciBarInfo {
            index: 2,
            kind: PciBarKind::Io,
            address: None,
            size: 0x20,
        };
        let answer = pci_info(&[function(1, vec![bar, unmapped], 0)]);
        assert_eq!(
            answer,
            json!([{"bus": 0, "devices": [{
                "bus": 0, "slot": 1, "function": 0,
                "class_info": {"class": 0x0100, "desc": "SCSI controller"},
                "id": {"device": 0x1042, "vendor": 0x1af4, "subsystem": 0x40,
                       "subsystem-vendor": 0x1af4},
                "irq_pin": 0, "qdev_id": "vd",
                "regions": [
                    {"bar": 0, "type": "memory", "address": 0xc000_0000u32, "size": 0x8000,
                     "mem_type_64": false, "prefetch": false},
                    {"bar": 2, "type": "io", "address": -1, "size": 0x20},
                ],
            }]}])
        );
        // With a pin, the line register shows as the IRQ; an unknown class has no desc.
        let mut f = function(3, vec![], 1);
        f.class_code = 0xff0000;
        f.subsystem = None;
        let d = &pci_info(&[f])[0]["devices"][0];
        assert_eq!(
            (d["irq"].clone(), d["irq_pin"].clone()),
            (json!(11), json!(1))
        );
        assert_eq!(d["class_info"], json!({"class": 0xff00}));
        assert_eq!(d["id"], json!({"device": 0x1042, "vendor": 0x1af4}));
        assert_eq!(pci_info(&[]), json!([]));
    }

    #[test]
    fn info_pci_reads_as_qemus() {
        // QEMU 7.2's own answers (microvm, virtio-net-pci paused before any firmware
        // ran), trimmed to one device: its query-pci, then its `info pci`.
        let qemu = json!([{"bus": 0, "devices": [{
            "irq_pin": 1, "bus": 0, "qdev_id": "nic0", "irq": 0, "slot": 2,
            "class_info": {"class": 512, "desc": "Ethernet controller"},
            "id": {"device": 4096, "subsystem-vendor": 6900, "vendor": 6900, "subsystem": 1},
            "function": 0,
            "regions": [
                {"bar": 0, "size": 32, "address": -1, "type": "io"},
                {"prefetch": false, "mem_type_64": false, "bar": 1, "size": 4096,
                 "address": -1, "type": "memory"},
                {"prefetch": true, "mem_type_64": true, "bar": 4, "size": 16384,
                 "address": -1, "type": "memory"},
            ],
        }]}]);
        assert_eq!(
            info_pci(&qemu),
            "  Bus  0, device   2, function 0:\n\
             \x20   Ethernet controller: PCI device 1af4:1000\n\
             \x20     PCI subsystem 1af4:0001\n\
             \x20     IRQ 0, pin A\n\
             \x20     BAR0: I/O at 0xffffffffffffffff [0x001e].\n\
             \x20     BAR1: 32 bit memory at 0xffffffffffffffff [0x00000ffe].\n\
             \x20     BAR4: 64 bit prefetchable memory at 0xffffffffffffffff [0x00003ffe].\n\
             \x20     id \"nic0\"\n"
        );
        let mut unknown = function(0, vec![], 0);
        unknown.class_code = 0xff0000;
        assert!(info_pci(&pci_info(&[unknown])).contains("    Class 65280: PCI device"));
    }
}
