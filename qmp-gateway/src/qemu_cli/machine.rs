//! The machine's options: -machine, -accel, -cpu, -m with the machine's RAM backend,
//! and -smp. Flotilla's machine is one KVM PC ("pc", see qmp/handlers/machine_types.rs)
//! or `none` (libvirt's capability probe: QMP and no guest); its vCPUs are the host's
//! (KVM's supported CPUID, features turned off as -cpu says), one package of N cores
//! with one thread each.

use serde_json::{Map, Value};

use super::error::CliError;
use crate::cpu_model::CpuSpec;
use crate::keyval;
use crate::machine_none::{Accel, MachineType};

/// The machine's options gathered from the command line.
#[derive(Debug, Default)]
pub struct Machine {
    pub kind: MachineType,
    /// -machine memory-backend=: the id of the object that is the guest's RAM.
    pub memory_backend: Option<String>,
    /// -accel or -machine accel=: KVM, or TCG with the none machine (checked at the end,
    /// as the two options come in either order).
    pub accel: Accel,
}

/// QEMU's "on"/"off" check for a flag-like property.
fn on_off(key: &str, value: &str) -> Result<bool, CliError> {
    keyval::boolean(value)
        .ok_or_else(|| CliError::plain(format!("Parameter '{key}' expects 'on' or 'off'")))
}

/// An accelerator list (`kvm`, `kvm:tcg`): as in QEMU, the first in the list that works
/// is used; a list with none fails with QEMU's words for an accelerator this binary does
/// not have.
fn accel_list(list: &str) -> Result<Accel, CliError> {
    Accel::first_of(list).map_err(|e| CliError::plain(e.to_string()))
}

/// TCG runs no guest of Flotilla's: it is taken with the none machine only.
pub fn check_accel(m: &Machine) -> Result<(), CliError> {
    if m.accel == Accel::Tcg && m.kind != MachineType::None {
        return Err(CliError::plain(
            "Flotilla runs guests on KVM only: the tcg accelerator is taken with -machine none \
             (no guest code runs)"
                .to_string(),
        ));
    }
    Ok(())
}

pub fn machine(arg: &str, m: &mut Machine) -> Result<(), CliError> {
    let opts = keyval::qemu_opts(arg, "type");
    let kind = match opts.get("type").and_then(Value::as_str) {
        None => MachineType::Pc,
        Some(name) => name
            .parse::<MachineType>()
            .map_err(|e| CliError::plain(e.to_string()))?,
    };
    m.kind = kind;
    let class = match kind {
        MachineType::Pc => "pc-machine",
        MachineType::None => "none-machine",
    };
    for (key, value) in &opts {
        let value = value.as_str().unwrap_or_default();
        match key.as_str() {
            "type" => {}
            "accel" => m.accel = accel_list(value)?,
            // No USB controller: usb=off is what there is.
            "usb" if !on_off(&format!("{class}.usb"), value)? => {}
            "usb" => {
                return Err(refuse(
                    "machine",
                    arg,
                    "Flotilla's PC has no USB controller",
                ))
            }
            // Guest RAM is a memfd mapped into vmm-core, whose core dumps are off (its
            // sandbox sets it undumpable); a dump of guest memory is dump-guest-memory.
            "dump-guest-core" => {
                on_off(&format!("{class}.dump-guest-core"), value)?;
            }
            "memory-backend" => m.memory_backend = Some(value.to_string()),
            _ => {
                return Err(CliError::plain(format!(
                    "Property '{class}.{key}' not found"
                )))
            }
        }
    }
    Ok(())
}

/// A refusal of Flotilla's own, for what QEMU would take.
fn refuse(option: &str, arg: &str, why: &str) -> CliError {
    CliError::at(option, Some(arg), why)
}

/// -accel kvm (and -enable-kvm), or -accel tcg with the none machine; no accelerator
/// properties.
pub fn accel(arg: &str, m: &mut Machine) -> Result<(), CliError> {
    let opts = keyval::qemu_opts(arg, "accel");
    let name = opts
        .get("accel")
        .and_then(Value::as_str)
        .unwrap_or_default();
    m.accel = name
        .parse()
        .map_err(|e: crate::machine_none::InvalidAccel| refuse("accel", arg, &e.to_string()))?;
    if let Some(key) = opts.keys().find(|k| *k != "accel") {
        return Err(refuse(
            "accel",
            arg,
            &format!("Flotilla's accelerators take no properties ('{key}')"),
        ));
    }
    Ok(())
}

/// -cpu host[,FEATURE=on|off][,+FEATURE][,-FEATURE][,migratable=on|off]: the host's
/// CPU (KVM's supported CPUID) is the only model, its features turned on or off as QEMU
/// reads them (cpu_model.rs); checked here, passed on as the gateway's --cpu.
pub fn cpu(arg: &str) -> Result<(), CliError> {
    // QEMU's words, no option named.
    arg.parse::<CpuSpec>()
        .map(drop)
        .map_err(|e| CliError::plain(e.to_string()))
}

/// -smp: the vCPU count and the most vCPUs (`--cpus`, `--max-cpus`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Smp {
    pub cpus: u64,
    pub max_cpus: Option<u64>,
}

pub fn smp(arg: &str) -> Result<Smp, CliError> {
    let opts = keyval::qemu_opts(arg, "cpus");
    let get = |key: &str| -> Result<Option<u64>, CliError> {
        match opts.get(key).and_then(Value::as_str) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| CliError::plain(format!("Parameter 'smp.{key}' expects an integer"))),
        }
    };
    let (cpus, sockets, dies, cores, threads, maxcpus) = (
        get("cpus")?,
        get("sockets")?,
        get("dies")?,
        get("cores")?,
        get("threads")?,
        get("maxcpus")?,
    );
    if let Some(key) = opts
        .keys()
        .find(|k| !["cpus", "sockets", "dies", "cores", "threads", "maxcpus"].contains(&k.as_str()))
    {
        return Err(CliError::plain(format!(
            "Parameter 'smp.{key}' is unexpected"
        )));
    }
    let cpus = match (cpus, maxcpus, sockets, cores, threads) {
        (Some(n), ..) => n,
        (None, Some(m), ..) => m,
        (None, None, s, c, t) => {
            s.unwrap_or(1) * c.unwrap_or(1) * t.unwrap_or(1) * dies.unwrap_or(1)
        }
    };
    if cpus == 0 {
        return Err(refuse("smp", arg, "Flotilla needs at least one vCPU"));
    }
    // One package of cores with one thread each is the topology vmm-core's CPUID gives.
    let max = maxcpus.unwrap_or(cpus);
    let one = |v: Option<u64>| v.is_none_or(|n| n == 1);
    let cores_ok = cores.is_none_or(|c| c == max);
    if !one(sockets) || !one(dies) || !one(threads) || !cores_ok {
        return Err(refuse(
            "smp",
            arg,
            "Flotilla's vCPUs are one socket of cores with one thread each: give \
             sockets=1,cores=MAXCPUS,threads=1 or leave the topology out",
        ));
    }
    Ok(Smp {
        cpus,
        max_cpus: maxcpus.filter(|&m| m != cpus),
    })
}

/// The machine's RAM: -m, or a memory-backend= object's size. Flotilla's guest RAM is
/// always its own memfd (shared with the daemons and the migration agent), so a backend
/// named as the RAM may only say its size (memory-backend-ram or -memfd); its size must
/// be -m's, as QEMU checks. Returns --memory's text.
pub fn ram(
    m: Option<&str>,
    backend: Option<(&str, &Map<String, Value>)>,
) -> Result<Option<String>, CliError> {
    let Some((id, props)) = backend else {
        return Ok(m.map(str::to_string));
    };
    let kind = props
        .get("qom-type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != "memory-backend-ram" && kind != "memory-backend-memfd" {
        return Err(CliError::plain(format!(
            "Flotilla's guest RAM is a memfd of its own: its backend '{id}' can be \
             memory-backend-ram or memory-backend-memfd, not {kind}"
        )));
    }
    if let Some(key) = props
        .keys()
        .find(|k| !["qom-type", "id", "size"].contains(&k.as_str()))
    {
        return Err(CliError::plain(format!(
            "Flotilla's guest RAM is a memfd of its own: its backend '{id}' takes only a \
             size, not '{key}'"
        )));
    }
    let size = match props.get("size") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => ipc::host::parse_size(s, 1).ok(),
        _ => None,
    }
    .ok_or_else(|| CliError::plain(format!("memory backend '{id}': no size")))?;
    if let Some(text) = m {
        let asked: ipc::host::MemoryConfig = text
            .parse()
            .map_err(|e: String| CliError::at("m", Some(text), e))?;
        if asked.mib << 20 != size {
            return Err(CliError::plain(
                "Machine memory size does not match the size of the memory backend",
            ));
        }
        return Ok(Some(text.to_string()));
    }
    Ok(Some(format!("{size}B")))
}
