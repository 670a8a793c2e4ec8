//! The CPU model a management tool may choose from and what it is made of: only "host",
//! what vmm-core's vCPUs are (the CPUID KVM holds for them, devices/cpu.rs; QEMU's named models
//! and "max" are not taken by -cpu or device_add, so they are not listed), its expansion
//! (query-cpu-model-expansion) and a vCPU's QOM properties (`vcpu_properties`, for
//! qom-list and qom-get), all read from the CPUID the vCPUs get (cpuid_features.rs).

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

/// One QOM property of a vCPU: its name, QEMU's type for it, its value.
pub type Property = (&'static str, &'static str, Value);

/// vCPU `apic_id`'s properties as QEMU 7.2's host-x86_64-cpu names and types them:
/// the device's state, the CPU's identity, then every feature of the table under each
/// of its spellings. `hotplugged`: added after the launch.
pub fn vcpu_properties(cpuid: &GuestCpuid, apic_id: u32, hotplugged: bool) -> Vec<Property> {
    let mut props: Vec<Property> = vec![
        ("type", "string", json!(CPU_TYPE)),
        ("realized", "bool", json!(true)),
        ("hotplugged", "bool", json!(hotplugged)),
        // As QEMU's pc: every CPU may be hot-plugged (none unplugged here: devices/).
        ("hotpluggable", "bool", json!(true)),
        ("start-powered-off", "bool", json!(false)),
        ("apic-id", "uint32", json!(apic_id)),
    ];
    props.extend(identity(cpuid, "level", "xlevel"));
    props.extend(features(cpuid, true));
    props
}

/// family ... model-id, and the highest leaves under the names `level`, `xlevel`.
fn identity(cpuid: &GuestCpuid, level: &'static str, xlevel: &'static str) -> Vec<Property> {
    vec![
        ("family", "int", json!(cpuid.family())),
        ("model", "int", json!(cpuid.model())),
        ("stepping", "int", json!(cpuid.stepping())),
        ("vendor", "string", json!(cpuid.vendor())),
        ("model-id", "string", json!(cpuid.model_id())),
        (level, "uint32", json!(cpuid.level())),
        (xlevel, "uint32", json!(cpuid.xlevel())),
    ]
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
            p.extend(identity(&cpuid, "min-level", "min-xlevel"));
            ("base", p)
        }
        Expansion::Full => {
            let mut p = features(&cpuid, true);
            p.extend(identity(&cpuid, "level", "xlevel"));
            p.extend(
                identity(&cpuid, "min-level", "min-xlevel")
                    .into_iter()
                    .skip(5),
            );
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
