//! The machine's commands: introspection (version, commands, events, schema), run
//! state (status, stop, cont, reset, powerdown, quit), identity and the vCPUs.

use ipc::{VmmReply, VmmRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::events::EVENTS;
use crate::gateway::{ExitReason, Gateway};
use crate::qmp::args::{serde_arguments, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{self, QmpError, QmpResult};
use crate::qmp::qapi::{opt, Ty};
use crate::qmp::schema;
use crate::qmp::types::TYPES;

/// A capability a client may enable (QMPCapability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    Oob,
}

/// qmp_capabilities.
#[derive(Debug, Deserialize)]
pub struct QmpCapabilities {
    pub enable: Option<Vec<Capability>>,
}

serde_arguments!(
    QmpCapabilities,
    [opt("enable", Ty::Array(&Ty::Named("QMPCapability")))]
);

impl QmpCapabilities {
    /// Whether the client asked for out-of-band execution.
    pub fn oob(&self) -> bool {
        self.enable
            .as_ref()
            .is_some_and(|caps| caps.contains(&Capability::Oob))
    }
}

pub fn qmp_capabilities(_: &mut Ctx, _: QmpCapabilities) -> QmpResult {
    // Before negotiation the session handles this command itself.
    Err(QmpError::not_found(
        "Capabilities negotiation is already complete, command ignored",
    ))
}

pub fn query_version(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(protocol::version())
}

pub fn query_commands(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(c.commands.iter().map(|c| json!({"name": c.name})).collect())
}

pub fn query_events(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(EVENTS.iter().map(|e| json!({"name": e.name})).collect())
}

pub fn query_qmp_schema(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(schema::build(c.commands, EVENTS, &TYPES))
}

/// StatusInfo (query-status, and HMP's `info status`).
pub fn status_info(gw: &Gateway) -> Value {
    json!({
        "running": gw.run_state() == ipc::RunState::Running,
        "singlestep": false,
        "status": gw.run_state_name(),
    })
}

pub fn query_status(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(status_info(c.gw))
}

/// A command vmm-core carries out, answered with `{}`.
fn vmm_does(c: &mut Ctx, request: VmmRequest) -> QmpResult {
    c.vmm(request).map(|_| json!({}))
}

pub fn stop(c: &mut Ctx, _: NoArgs) -> QmpResult {
    c.gw.stop()?;
    Ok(json!({}))
}

pub fn cont(c: &mut Ctx, _: NoArgs) -> QmpResult {
    c.gw.cont()?;
    Ok(json!({}))
}

pub fn system_reset(c: &mut Ctx, _: NoArgs) -> QmpResult {
    vmm_does(c, VmmRequest::SystemReset)
}

pub fn system_powerdown(c: &mut Ctx, _: NoArgs) -> QmpResult {
    vmm_does(c, VmmRequest::SystemPowerdown)
}

pub fn inject_nmi(c: &mut Ctx, _: NoArgs) -> QmpResult {
    vmm_does(c, VmmRequest::InjectNmi)
}

pub fn system_wakeup(_: &mut Ctx, _: NoArgs) -> QmpResult {
    // The platform has no S3 (no \_S3 in the DSDT): there is never a suspended guest.
    Err(QmpError::generic(
        "wake-up from suspend is not supported by this guest",
    ))
}

pub fn quit(c: &mut Ctx, _: NoArgs) -> QmpResult {
    c.exit_after_reply = Some(ExitReason::Quit);
    Ok(json!({}))
}

/// `present`: this binary has KVM support (QEMU's accel_find("kvm")); `enabled`: it is
/// the accelerator in use (TCG only with the none machine).
pub fn query_kvm(c: &mut Ctx, _: NoArgs) -> QmpResult {
    let enabled = c.gw.accel() == crate::machine_none::Accel::Kvm;
    Ok(json!({"enabled": enabled, "present": true}))
}

pub fn query_cpus(c: &mut Ctx, _: NoArgs) -> QmpResult {
    let VmmReply::Cpus(cpus) = c.vmm(VmmRequest::QueryCpus)? else {
        return Err(QmpError::generic(
            "vmm-core answered query-cpus with something else",
        ));
    };
    Ok(cpus
        .iter()
        .map(|cpu| {
            json!({
                "CPU": cpu.index,
                "current": cpu.index == 0,
                "halted": cpu.halted,
                "qom_path": c.gw.vcpu_qom_path(cpu.index),
                "thread_id": c.gw.host_tid(cpu.thread_id),
                "arch": "x86",
                "pc": cpu.pc,
            })
        })
        .collect())
}

pub fn query_cpus_fast(c: &mut Ctx, _: NoArgs) -> QmpResult {
    // One package of N cores with one thread each, as vmm-core's CPUID describes it.
    Ok(c.gw
        .vcpus()
        .iter()
        .map(|v| {
            json!({
                "cpu-index": v.index,
                "qom-path": c.gw.vcpu_qom_path(v.index),
                "thread-id": v.thread_id,
                "props": c.gw.cpu_props(v.index),
                "target": "x86_64",
            })
        })
        .collect())
}

pub fn query_name(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(match &c.gw.identity.name {
        Some(n) => json!({"name": n}),
        None => json!({}),
    })
}

pub fn query_uuid(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(json!({"UUID": c.gw.identity.uuid}))
}
