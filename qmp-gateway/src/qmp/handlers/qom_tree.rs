//! qom-list and qom-get on the QOM objects a management tool reads (libvirt 9.0 at a
//! domain's start: a vCPU's properties, /machine/peripheral's children): the vCPUs
//! (/machine/unattached/device[N] for the launch's and cpu-add's, device_add's path for
//! the others) with QEMU 7.2's x86 CPU properties read from the CPUID they get
//! (cpu_models.rs; a qom-get reads only the property asked for), the containers /machine/peripheral and /machine/peripheral-anon
//! with a `child<TYPE>` per device, and each device's type, realized and hotpluggable.
//! Other paths are not modelled: QEMU's "Device '...' not found". Paths are absolute
//! (QEMU's partial paths are not resolved).

use ipc::ErrorClass;
use serde::Deserialize;
use serde_json::{json, Value};

use super::cpu_models::{Property, Vcpu};
use crate::devices::cpu::CPU_TYPE;
use crate::qmp::args::serde_arguments;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{req, Ty};

const CONTAINERS: [&str; 2] = ["/machine/peripheral", "/machine/peripheral-anon"];

#[derive(Debug, Deserialize)]
pub struct QomList {
    pub path: String,
}

serde_arguments!(QomList, [req("path", Ty::Str)]);

#[derive(Debug, Deserialize)]
pub struct QomGet {
    pub path: String,
    pub property: String,
}

serde_arguments!(QomGet, [req("path", Ty::Str), req("property", Ty::Str)]);

/// An object of the tree.
enum Object {
    /// A container or a device: its QEMU type and properties (name, type, value).
    Listed {
        typename: &'static str,
        properties: Vec<(String, String, Value)>,
    },
    /// A vCPU: its properties are many, each read when asked for.
    Vcpu(Vcpu),
}

impl Object {
    fn listed(typename: &'static str, properties: Vec<Property>) -> Object {
        let properties = (properties.into_iter())
            .map(|(n, t, v)| (n.to_string(), t.to_string(), v))
            .collect();
        Object::Listed {
            typename,
            properties,
        }
    }

    fn typename(&self) -> &'static str {
        match self {
            Object::Listed { typename, .. } => typename,
            Object::Vcpu(_) => CPU_TYPE,
        }
    }

    /// qom-list's answer: each property's name and type.
    fn list(&self) -> Value {
        let entry = |(name, ty): (&str, &str)| json!({"name": name, "type": ty});
        match self {
            Object::Listed { properties, .. } => (properties.iter())
                .map(|(name, ty, _)| entry((name, ty)))
                .collect(),
            Object::Vcpu(_) => Vcpu::properties().map(entry).collect(),
        }
    }

    /// Property `name`'s value, if the object has it.
    fn get(self, name: &str) -> Option<Value> {
        match self {
            Object::Listed { properties, .. } => (properties.into_iter())
                .find(|(n, _, _)| *n == name)
                .map(|(_, _, value)| value),
            Object::Vcpu(vcpu) => vcpu.property(name),
        }
    }
}

/// The object at `path`, as QEMU's object_resolve_path finds it (empty components
/// skipped), or QEMU's error.
fn resolve(c: &mut Ctx, path: &str) -> Result<Object, QmpError> {
    if path.is_empty() {
        return Err(QmpError::generic("Path '' is ambiguous"));
    }
    let not_found = || QmpError {
        class: ErrorClass::DeviceNotFound,
        desc: format!("Device '{path}' not found"),
    };
    if !path.starts_with('/') {
        return Err(not_found());
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let canonical = format!("/{}", parts.join("/"));
    if let Some(container) = CONTAINERS.iter().find(|c| **c == canonical) {
        let mut properties = vec![("type".into(), "string".into(), json!("container"))];
        let children = c.gw.devices.lock().children_of(container);
        // A child<> property reads as the child's path.
        properties.extend(children.into_iter().map(|(name, ty)| {
            let path = json!(format!("{container}/{name}"));
            (name, format!("child<{ty}>"), path)
        }));
        return Ok(Object::Listed {
            typename: "container",
            properties,
        });
    }
    for vcpu in c.gw.vcpus() {
        if c.gw.vcpu_qom_path(vcpu.index) == canonical {
            let hotplugged = c.gw.vcpu_added(vcpu.index).unwrap_or(false);
            return Ok(Object::Vcpu(Vcpu {
                cpuid: c.gw.guest_cpuid()?,
                apic_id: vcpu.index,
                hotplugged,
            }));
        }
    }
    // A device straight in a container (not its virtio backend, which find also takes).
    let in_container = CONTAINERS.iter().any(|c| {
        (canonical.strip_prefix(c))
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|name| !name.contains('/'))
    });
    let devices = c.gw.devices.lock();
    match devices.find(&canonical) {
        Ok(device) if in_container => {
            let typename = device.model.typename();
            Ok(Object::listed(
                typename,
                vec![
                    ("type", "string", json!(typename)),
                    ("realized", "bool", json!(true)),
                    // Our devices are all on pc's bus 0 or in memory slots, which
                    // plug and unplug.
                    ("hotpluggable", "bool", json!(true)),
                ],
            ))
        }
        _ => Err(not_found()),
    }
}

pub fn qom_list(c: &mut Ctx, a: QomList) -> QmpResult {
    Ok(resolve(c, &a.path)?.list())
}

pub fn qom_get(c: &mut Ctx, a: QomGet) -> QmpResult {
    // QEMU's qom-get finds no object at "" where its qom-list finds it ambiguous.
    if a.path.is_empty() {
        return Err(QmpError {
            class: ErrorClass::DeviceNotFound,
            desc: "Device '' not found".into(),
        });
    }
    let object = resolve(c, &a.path)?;
    let typename = object.typename();
    (object.get(&a.property))
        .ok_or_else(|| QmpError::generic(format!("Property '{typename}.{}' not found", a.property)))
}
