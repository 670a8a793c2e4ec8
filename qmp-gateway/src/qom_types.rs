//! The QOM types the VM is made of, as a management tool lists them (qom-list-types,
//! device-list-properties, qom-list-properties): our devices, the objects object-add
//! creates, the machine and the CPU model, each with its QEMU name, its parent, and the
//! properties our readers take (devices/spec.rs, devices/cpu.rs, devices/placement.rs,
//! the ObjectOptions branches object-add checks), typed as QEMU 7.2 types them.

use serde_json::{json, Value};

use crate::qmp::qapi::{Member, Ty, TypeKind};
use crate::qmp::types::TYPES;

/// A property as ObjectPropertyInfo describes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Property {
    pub name: &'static str,
    /// QEMU's type string ("str", "int32", "link<iothread>"...).
    pub ty: &'static str,
    pub description: Option<&'static str>,
    pub default: Option<Default>,
}

/// A property's default, as QEMU reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Default {
    Int(i64),
    Uint(u64),
    Bool(bool),
}

const fn prop(name: &'static str, ty: &'static str) -> Property {
    Property {
        name,
        ty,
        description: None,
        default: None,
    }
}

const fn described(p: Property, description: &'static str) -> Property {
    Property {
        description: Some(description),
        ..p
    }
}

const fn defaults(p: Property, default: Default) -> Property {
    Property {
        default: Some(default),
        ..p
    }
}

/// Where a type's properties come from.
#[derive(Debug, Clone, Copy)]
pub enum Properties {
    /// Listed here (a device's, as its reader takes them).
    Listed(&'static [Property]),
    /// The members of this ObjectOptions branch (object-add's reader).
    Object(&'static str),
}

/// A QOM type.
#[derive(Debug, Clone, Copy)]
pub struct QomType {
    pub name: &'static str,
    /// None for the root.
    pub parent: Option<&'static str>,
    pub is_abstract: bool,
    pub properties: Properties,
}

const NONE: Properties = Properties::Listed(&[]);

const fn abstract_type(name: &'static str, parent: &'static str) -> QomType {
    QomType {
        name,
        parent: Some(parent),
        is_abstract: true,
        properties: NONE,
    }
}

const fn concrete(name: &'static str, parent: &'static str, properties: Properties) -> QomType {
    QomType {
        name,
        parent: Some(parent),
        is_abstract: false,
        properties,
    }
}

const PCI_ADDR: Property = defaults(
    described(
        prop("addr", "int32"),
        "Slot and optional function number, example: 06.0 or 06",
    ),
    Default::Int(-1),
);
const VECTORS: Property = defaults(prop("vectors", "uint32"), Default::Uint(u32::MAX as u64));
/// Checked (no two devices share one) and otherwise unused: the kernel boots directly.
const BOOTINDEX: Property = prop("bootindex", "int32");

/// virtio-blk-pci's, as devices/spec.rs reads them.
const BLK: &[Property] = &[
    described(
        prop("drive", "str"),
        "Node name or ID of a block device to use as a backend",
    ),
    prop("serial", "str"),
    prop("num-queues", "uint16"),
    PCI_ADDR,
    prop("iothread", "link<iothread>"),
    VECTORS,
    BOOTINDEX,
];

/// virtio-net-pci's, as devices/spec.rs reads them.
const NET: &[Property] = &[
    described(prop("netdev", "str"), "ID of a netdev to use as a backend"),
    described(
        prop("mac", "str"),
        "Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56",
    ),
    PCI_ADDR,
    defaults(
        described(prop("mq", "bool"), "on/off"),
        Default::Bool(false),
    ),
    VECTORS,
    BOOTINDEX,
];

/// pc-dimm's, as devices/placement.rs reads them (size is read-only: the backend's).
const DIMM: &[Property] = &[
    prop("memdev", "link<memory-backend>"),
    defaults(prop("node", "uint32"), Default::Uint(0)),
    defaults(prop("addr", "uint64"), Default::Uint(0)),
    defaults(prop("slot", "int32"), Default::Int(-1)),
    prop("size", "uint64"),
];

/// A CPU's topology properties, as devices/cpu.rs reads them.
const CPU: &[Property] = &[
    defaults(prop("socket-id", "int32"), Default::Int(-1)),
    defaults(prop("die-id", "int32"), Default::Int(-1)),
    defaults(prop("core-id", "int32"), Default::Int(-1)),
    defaults(prop("thread-id", "int32"), Default::Int(-1)),
    defaults(prop("node-id", "int32"), Default::Int(-1)),
    defaults(prop("apic-id", "uint32"), Default::Uint(u32::MAX as u64)),
];

/// What -device isa-serial takes (qemu_cli/devices.rs): the one UART is index 0.
const ISA_SERIAL: &[Property] = &[
    defaults(prop("index", "uint32"), Default::Uint(u32::MAX as u64)),
    described(
        prop("chardev", "str"),
        "ID of a chardev to use as a backend",
    ),
];

/// Every type, parents before children.
pub const QOM_TYPES: &[QomType] = &[
    QomType {
        name: "object",
        parent: None,
        is_abstract: true,
        properties: NONE,
    },
    abstract_type("device", "object"),
    abstract_type("pci-device", "device"),
    abstract_type("virtio-pci", "pci-device"),
    abstract_type("virtio-blk-pci-base", "virtio-pci"),
    concrete(
        "virtio-blk-pci",
        "virtio-blk-pci-base",
        Properties::Listed(BLK),
    ),
    abstract_type("virtio-net-pci-base", "virtio-pci"),
    concrete(
        "virtio-net-pci",
        "virtio-net-pci-base",
        Properties::Listed(NET),
    ),
    abstract_type("virtio-balloon-pci-base", "virtio-pci"),
    // From the command line only, which takes no property but its id.
    concrete("virtio-balloon-pci", "virtio-balloon-pci-base", NONE),
    concrete("pc-dimm", "device", Properties::Listed(DIMM)),
    abstract_type("isa-device", "device"),
    // COM1 on a chardev, from the command line only (flotilla-qemu's -device isa-serial).
    concrete("isa-serial", "isa-device", Properties::Listed(ISA_SERIAL)),
    abstract_type("cpu", "device"),
    abstract_type("x86_64-cpu", "cpu"),
    // QEMU's parent is max-x86_64-cpu, a model we do not have.
    concrete(
        crate::devices::cpu::CPU_TYPE,
        "x86_64-cpu",
        Properties::Listed(CPU),
    ),
    // Its properties are those every backend has (QEMU's MemoryBackendProperties).
    QomType {
        properties: Properties::Object("memory-backend-ram"),
        ..abstract_type("memory-backend", "object")
    },
    concrete(
        "memory-backend-ram",
        "memory-backend",
        Properties::Object("memory-backend-ram"),
    ),
    concrete(
        "memory-backend-memfd",
        "memory-backend",
        Properties::Object("memory-backend-memfd"),
    ),
    concrete(
        "memory-backend-file",
        "memory-backend",
        Properties::Object("memory-backend-file"),
    ),
    abstract_type("event-loop-base", "object"),
    concrete(
        "iothread",
        "event-loop-base",
        Properties::Object("iothread"),
    ),
    abstract_type("machine", "object"),
    // No property of the machine can be set (no -machine options).
    concrete(MACHINE_TYPE, "machine", NONE),
    // --machine none (QMP only): libvirt's probe asks for its properties whatever the
    // machines are, and libvirt 9.0 crashes if the class is not found.
    concrete("none-machine", "machine", NONE),
];

/// The machine type's QOM name (QEMU names a machine NAME's type NAME-machine).
pub const MACHINE_TYPE: &str = "pc-machine";

pub fn find(name: &str) -> Option<&'static QomType> {
    QOM_TYPES.iter().find(|t| t.name == name)
}

/// Whether `t` is `ancestor` or descends from it.
pub fn implements(t: &QomType, ancestor: &str) -> bool {
    let mut at = Some(t);
    while let Some(t) = at {
        if t.name == ancestor {
            return true;
        }
        at = t.parent.and_then(find);
    }
    false
}

/// QEMU's type string for an object property of QAPI type `ty`.
fn object_property_type(m: &Member) -> &'static str {
    match (m.name, m.ty) {
        // QEMU's link properties.
        ("prealloc-context", _) => "link<thread-context>",
        // A list of host nodes, which QEMU's property calls int.
        (_, Ty::Array(_)) => "int",
        (_, Ty::Bool) => "bool",
        (_, Ty::Str) => "string",
        (_, Ty::Named(n)) => n,
        _ => "int",
    }
}

impl QomType {
    /// The properties, as ObjectPropertyInfo.
    pub fn property_infos(&self) -> Vec<Value> {
        match self.properties {
            Properties::Listed(list) => list.iter().map(property_info).collect(),
            Properties::Object(branch) => {
                // QEMU lists the type's own "type" property first.
                let mut out = vec![json!({"name": "type", "type": "string"})];
                out.extend(
                    object_members(branch)
                        .iter()
                        .map(|m| json!({"name": m.name, "type": object_property_type(m)})),
                );
                out
            }
        }
    }

    /// Whether it is a device (device-list-properties takes only those).
    pub fn is_device(&self) -> bool {
        implements(self, "device")
    }
}

/// The members object-add checks for `qom_type`'s branch of ObjectOptions.
fn object_members(qom_type: &str) -> &'static [Member] {
    let Some(TypeKind::Union(u)) = TYPES.get("ObjectOptions").map(|t| t.kind) else {
        return &[];
    };
    let branch = u.variants.iter().find(|(case, _)| *case == qom_type);
    match branch.and_then(|(_, ty)| TYPES.get(ty)).map(|t| t.kind) {
        Some(TypeKind::Object(members)) => members,
        _ => &[],
    }
}

fn property_info(p: &Property) -> Value {
    let mut v = json!({"name": p.name, "type": p.ty});
    if let Some(d) = p.description {
        v["description"] = json!(d);
    }
    match p.default {
        Some(Default::Int(n)) => v["default-value"] = json!(n),
        Some(Default::Uint(n)) => v["default-value"] = json!(n),
        Some(Default::Bool(b)) => v["default-value"] = json!(b),
        None => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::cpu::CpuProps;
    use crate::devices::spec::DeviceSpec;
    use serde_json::Map;

    fn spec(driver: &str, k: &str, v: &str) -> DeviceSpec {
        let mut m = Map::new();
        m.insert("driver".into(), json!(driver));
        m.insert(k.into(), json!(v));
        DeviceSpec::read(&m).expect("a device spec")
    }

    /// A value each listed property's reader takes.
    fn sample(name: &str) -> &'static str {
        match name {
            "mac" => "52:54:00:12:34:56",
            "addr" => "4",
            "mq" => "on",
            _ => "1",
        }
    }

    #[test]
    fn listed_device_properties_are_what_the_readers_take() {
        for (driver, list) in [("virtio-blk-pci", BLK), ("virtio-net-pci", NET)] {
            for p in list {
                let s = spec(driver, p.name, sample(p.name));
                assert!(s.properties().is_ok(), "{driver}.{}", p.name);
            }
            assert!(spec(driver, "no-such", "1").properties().is_err());
        }
        for p in CPU {
            let props = [(p.name.to_string(), "0".to_string())];
            assert!(
                CpuProps::read("host-x86_64-cpu", &props).is_ok(),
                "{}",
                p.name
            );
        }
        let bad = [("no-such".to_string(), "0".to_string())];
        assert!(CpuProps::read("host-x86_64-cpu", &bad).is_err());
    }

    #[test]
    fn parents_are_listed_and_objects_have_their_branch() {
        for t in QOM_TYPES {
            if let Some(p) = t.parent {
                assert!(find(p).is_some(), "{}'s parent {p}", t.name);
            }
            if let Properties::Object(branch) = t.properties {
                assert!(!object_members(branch).is_empty(), "{branch}");
            }
        }
    }
}
