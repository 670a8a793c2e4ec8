//! The CPU model a management tool may choose from and what it is made of: only "host",
//! what vmm-core's vCPUs are (the CPUID KVM holds for them, devices/cpu.rs; QEMU's named models
//! and "max" are not taken by -cpu or device_add, so they are not listed), its expansion
//! (query-cpu-model-expansion) and a vCPU's QOM properties (`Vcpu`, for qom-list and
//! qom-get: each value read alone), all read from the CPUID the vCPUs get
//! (cpuid_features.rs).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cpuid_features::{self, GuestCpuid, FEATURES};
use crate::devices::cpu::CPU_TYPE;
use crate::machine_none::Accel;
use crate::qmp::args::{serde_arguments, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{req, Ty};

/// The one model's name.
pub const HOST_MODEL: &str = "host";

pub fn query_cpu_definitions(c: &mut Ctx, _: NoArgs) -> QmpResult {
    // Every feature of the model is the host's: none can be missing. Under TCG (the none
    // machine only) the model needs what is not there, KVM: QEMU's name for that.
    let unavailable = match c.gw.accel() {
        Accel::Kvm => json!([]),
        Accel::Tcg => json!(["kvm"]),
    };
    Ok(json!([{
        "name": HOST_MODEL,
        "typename": CPU_TYPE,
        "unavailable-features": unavailable,
        // Its features depend on the host (as QEMU's host model): neither static nor
        // safe to migrate to another host.
        "static": false,
        "migration-safe": false,
        "deprecated": false,
    }]))
}

/// One QOM property: its name, QEMU's type for it, its value.
pub type Property = (&'static str, &'static str, Value);

/// A vCPU as its QOM properties read it: the CPUID it gets, its APIC id, and whether it
/// was added after the launch.
pub struct Vcpu {
    pub cpuid: GuestCpuid,
    pub apic_id: u32,
    pub hotplugged: bool,
}

/// A property as a row of a table: its name, QEMU's type for it, and how its value is
/// read from a `T`.
type Row<T> = (&'static str, &'static str, fn(&T) -> Value);

/// A vCPU's properties as a device, with QEMU 7.2's names and types.
const DEVICE: [Row<Vcpu>; 6] = [
    ("type", "string", |_| json!(CPU_TYPE)),
    ("realized", "bool", |_| json!(true)),
    ("hotplugged", "bool", |v| json!(v.hotplugged)),
    // As QEMU's pc: every CPU may be hot-plugged (none unplugged here: devices/).
    ("hotpluggable", "bool", |_| json!(true)),
    ("start-powered-off", "bool", |_| json!(false)),
    ("apic-id", "uint32", |v| json!(v.apic_id)),
];

/// A CPU's identity read from its CPUID: family ... model-id.
const IDENTITY: [Row<GuestCpuid>; 5] = [
    ("family", "int", |c| json!(c.family())),
    ("model", "int", |c| json!(c.model())),
    ("stepping", "int", |c| json!(c.stepping())),
    ("vendor", "string", |c| json!(c.vendor())),
    ("model-id", "string", |c| json!(c.model_id())),
];

/// The highest basic and extended leaves, as a vCPU names them (an expansion has them
/// as `min-level` and `min-xlevel` too).
const LEVELS: [Row<GuestCpuid>; 2] = [
    ("level", "uint32", |c| json!(c.level())),
    ("xlevel", "uint32", |c| json!(c.xlevel())),
];
const MIN_LEVELS: [&str; 2] = ["min-level", "min-xlevel"];

impl Vcpu {
    /// Its properties' names and types as QEMU 7.2's host-x86_64-cpu has them, in its
    /// order (qom-list): the device's state, the CPU's identity, then every feature of
    /// the table under each of its spellings.
    pub fn properties() -> impl Iterator<Item = (&'static str, &'static str)> {
        let device = DEVICE.iter().map(|&(name, ty, _)| (name, ty));
        let cpu = (IDENTITY.iter().chain(&LEVELS)).map(|&(name, ty, _)| (name, ty));
        let features = FEATURES
            .iter()
            .flat_map(|f| std::iter::once(&f.name).chain(f.aliases))
            .map(|&name| (name, "bool"));
        device.chain(cpu).chain(features)
    }

    /// Property `name`'s value (qom-get), read alone: a vCPU has some 250, and libvirt
    /// reads them one qom-get at a time. None: no such property.
    pub fn property(&self, name: &str) -> Option<Value> {
        if let Some((_, _, read)) = DEVICE.iter().find(|row| row.0 == name) {
            return Some(read(self));
        }
        if let Some((_, _, read)) = IDENTITY.iter().chain(&LEVELS).find(|row| row.0 == name) {
            return Some(read(&self.cpuid));
        }
        cpuid_features::find(name).map(|f| json!(self.cpuid.has(f)))
    }
}

/// family ... model-id, and the highest leaves under the names `levels`.
fn identity(cpuid: &GuestCpuid, levels: [&'static str; 2]) -> Vec<Property> {
    let mut p: Vec<Property> = (IDENTITY.iter())
        .map(|&(name, ty, read)| (name, ty, read(cpuid)))
        .collect();
    p.extend(highest_leaves(cpuid, levels));
    p
}

/// The highest basic and extended leaves, under the names `levels`.
fn highest_leaves(cpuid: &GuestCpuid, levels: [&'static str; 2]) -> Vec<Property> {
    (LEVELS.iter().zip(levels))
        .map(|(&(_, ty, read), name)| (name, ty, read(cpuid)))
        .collect()
}

/// Each feature's value, under its name (and its other spellings with `aliases`).
fn features(cpuid: &GuestCpuid, aliases: bool) -> Vec<Property> {
    let mut out = Vec::new();
    for f in FEATURES {
        let has = json!(cpuid.has(f));
        out.push((f.name, "bool", has.clone()));
        if aliases {
            out.extend(f.aliases.iter().map(|a| (*a, "bool", has.clone())));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub props: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct CpuModelExpansion {
    #[serde(rename = "type")]
    pub expansion: Expansion,
    pub model: ModelInfo,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expansion {
    Static,
    Full,
}

serde_arguments!(
    CpuModelExpansion,
    [
        req("type", Ty::Named("CpuModelExpansionType")),
        req("model", Ty::Named("CpuModelInfo")),
    ]
);

/// Properties a client may set in the model that change nothing here: migratable (every
/// feature the vCPUs have migrates with them) and hv-passthrough (vmm-core gives no
/// Hyper-V enlightenments, so passing the host's through adds none). libvirt sends both.
const NEUTRAL_PROPS: &[&str] = &["migratable", "hv-passthrough"];

/// query-cpu-model-expansion of "host": static as QEMU's base model with every feature
/// of the table by its name and the CPU's identity; full as "host" with every spelling
/// and the CPU object's other values, as KVM holds the vCPUs' CPUID (with kvm-pvm, the
/// host's instruction-set bits too, which QEMU's answer leaves out although its guest
/// has them). A feature set false in the model's props is off in the answer, asked of
/// KVM (cpuid_probes.rs), and refused if KVM keeps it; set true it stays what the vCPUs
/// have (as QEMU's host model filters what KVM cannot give).
pub fn query_cpu_model_expansion(c: &mut Ctx, a: CpuModelExpansion) -> QmpResult {
    if a.model.name != HOST_MODEL {
        return Err(QmpError::generic(format!(
            "CPU model '{}' not found",
            a.model.name
        )));
    }
    let mut off = Vec::new();
    // QEMU reads props only as a dict: anything else sets nothing.
    if let Some(Value::Object(props)) = &a.model.props {
        for (name, value) in props {
            let is_feature = cpuid_features::find(name).is_some();
            if !is_feature && !NEUTRAL_PROPS.contains(&name.as_str()) {
                return Err(QmpError::generic(format!(
                    "Property '{CPU_TYPE}.{name}' not found"
                )));
            }
            match value {
                Value::Bool(false) if is_feature => off.extend(cpuid_features::find(name)),
                Value::Bool(_) => {}
                _ => {
                    return Err(QmpError::generic(format!(
                        "Invalid parameter type for '{name}', expected: boolean"
                    )))
                }
            }
        }
    }
    // QEMU 7.2 expands "host" under TCG to its emulated CPU (max's features); Flotilla
    // has no emulated CPU, so it says what QEMU says when such a vCPU is made.
    if c.gw.accel() == Accel::Tcg {
        return Err(QmpError::generic(format!(
            "CPU model '{HOST_MODEL}' requires KVM or HVF"
        )));
    }
    // Features turned off: a vCPU without them is asked of KVM, which may keep some.
    let cpuid = match off.is_empty() {
        true => c.gw.guest_cpuid()?,
        false => (c.gw.cpuid_without(&off)).map_err(|e| QmpError::generic(e.to_string()))?,
    };
    if let Some(f) = off.iter().find(|f| cpuid.has(f)) {
        return Err(QmpError::generic(format!(
            "Property '{CPU_TYPE}.{}' cannot be turned off on this host: its KVM keeps \
             the feature (the guest would have it)",
            f.name
        )));
    }
    let (name, props) = match a.expansion {
        Expansion::Static => {
            let mut p = features(&cpuid, false);
            p.extend(identity(&cpuid, MIN_LEVELS));
            ("base", p)
        }
        Expansion::Full => {
            let mut p = features(&cpuid, true);
            p.extend(identity(&cpuid, LEVELS.map(|(name, _, _)| name)));
            p.extend(highest_leaves(&cpuid, MIN_LEVELS));
            // A model is no vCPU: QEMU's expansion has no APIC id (unset) and is not
            // realized.
            p.push(("apic-id", "uint32", json!(u32::MAX)));
            p.push(("realized", "bool", json!(false)));
            p.push(("start-powered-off", "bool", json!(false)));
            ("host", p)
        }
    };
    let props: Map<String, Value> = props.into_iter().map(|(n, _, v)| (n.into(), v)).collect();
    Ok(json!({"model": {"name": name, "props": props}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpus_properties_read_alone_are_the_listed_ones() {
        let cpuid = crate::cpuid_features::test_cpuid();
        let vcpu = Vcpu {
            cpuid: cpuid.clone(),
            apic_id: 3,
            hotplugged: true,
        };
        // What qom-list of a vCPU listed and qom-get read when every value was computed
        // for each command.
        let mut expected: Vec<Property> = vec![
            ("type", "string", json!("host-x86_64-cpu")),
            ("realized", "bool", json!(true)),
            ("hotplugged", "bool", json!(true)),
            ("hotpluggable", "bool", json!(true)),
            ("start-powered-off", "bool", json!(false)),
            ("apic-id", "uint32", json!(3)),
            ("family", "int", json!(25)),
            ("model", "int", json!(17)),
            ("stepping", "int", json!(1)),
            ("vendor", "string", json!("AuthenticAMD")),
            ("model-id", "string", json!("AMD EPC")),
            ("level", "uint32", json!(0x10)),
            ("xlevel", "uint32", json!(0)),
        ];
        for f in FEATURES {
            let names = std::iter::once(&f.name).chain(f.aliases);
            expected.extend(names.map(|name| (*name, "bool", json!(cpuid.has(f)))));
        }
        let listed: Vec<(&str, &str)> = Vcpu::properties().collect();
        let read: Vec<Property> = (listed.iter())
            .map(|&(name, ty)| (name, ty, vcpu.property(name).expect(name)))
            .collect();
        assert_eq!(read, expected);
        // One name, one property: a read finds the one listed.
        let mut names: Vec<&str> = listed.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), listed.len());
        let on: Vec<&str> = (read.iter())
            .filter(|(_, ty, value)| *ty == "bool" && *value == json!(true))
            .map(|(name, _, _)| *name)
            .filter(|name| !DEVICE.iter().any(|row| row.0 == *name))
            .collect();
        assert_eq!(
            on,
            ["sse", "sse4.2", "sse4-2", "sse4_2", "avx2", "avx-vnni"]
        );
        // No property: an expansion's names, another case, names of nothing here.
        for name in [
            "min-level",
            "min-xlevel",
            "Level",
            "",
            "no-such",
            "migratable",
        ] {
            assert_eq!(vcpu.property(name), None, "{name}");
        }
    }
}
