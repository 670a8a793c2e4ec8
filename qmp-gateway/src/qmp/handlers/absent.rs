//! Commands for devices this VM does not have (no display, VNC, SPICE, TPM, rocker
//! switch...), answered exactly as QEMU 7.2 answers them when
//! the device is absent, so management tools see a coherent machine. (A VM without a
//! balloon answers balloon's commands as QEMU does too: handlers/balloon.rs.)

use ipc::ErrorClass;
use serde::Deserialize;
use serde_json::json;

use crate::qmp::args::{serde_arguments, Arguments, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};

fn not_active(desc: &str) -> QmpError {
    QmpError {
        class: ErrorClass::DeviceNotActive,
        desc: desc.into(),
    }
}

const SPICE: &str = "SPICE is not in use";

#[derive(Debug, Deserialize)]
pub struct Screendump {
    pub filename: String,
    pub device: Option<String>,
    pub head: Option<Int>,
}

serde_arguments!(
    Screendump,
    [
        req("filename", Ty::Str),
        opt("device", Ty::Str),
        opt("head", Ty::Int),
    ]
);

/// DisplayProtocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisplayProtocol {
    Vnc,
    Spice,
}

#[derive(Debug, Deserialize)]
pub struct SetPassword {
    pub protocol: DisplayProtocol,
    pub password: String,
    pub connected: Option<String>,
}

serde_arguments!(
    SetPassword,
    [
        req("protocol", Ty::Named("DisplayProtocol")),
        req("password", Ty::Str),
        opt("connected", Ty::Str),
    ]
);

#[derive(Debug, Deserialize)]
pub struct ExpirePassword {
    pub protocol: DisplayProtocol,
    pub time: String,
}

serde_arguments!(
    ExpirePassword,
    [
        req("protocol", Ty::Named("DisplayProtocol")),
        req("time", Ty::Str),
    ]
);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientMigrateInfo {
    pub protocol: String,
    pub hostname: String,
    pub port: Option<Int>,
    pub tls_port: Option<Int>,
    pub cert_subject: Option<String>,
}

serde_arguments!(
    ClientMigrateInfo,
    [
        req("protocol", Ty::Str),
        req("hostname", Ty::Str),
        opt("port", Ty::Int),
        opt("tls-port", Ty::Int),
        opt("cert-subject", Ty::Str),
    ]
);

/// A rocker switch's commands' arguments: they name the switch.
pub trait RockerSwitch {
    fn name(&self) -> &str;
}

/// query-rocker, query-rocker-ports.
#[derive(Debug, Deserialize)]
pub struct Rocker {
    pub name: String,
}

serde_arguments!(Rocker, [req("name", Ty::Str)]);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RockerFlows {
    pub name: String,
    pub tbl_id: Option<Int>,
}

serde_arguments!(RockerFlows, [req("name", Ty::Str), opt("tbl-id", Ty::Uint)]);

#[derive(Debug, Deserialize)]
pub struct RockerGroups {
    pub name: String,
    #[serde(rename = "type")]
    pub group_type: Option<Int>,
}

serde_arguments!(RockerGroups, [req("name", Ty::Str), opt("type", Ty::Uint)]);

impl RockerSwitch for Rocker {
    fn name(&self) -> &str {
        &self.name
    }
}

impl RockerSwitch for RockerFlows {
    fn name(&self) -> &str {
        &self.name
    }
}

impl RockerSwitch for RockerGroups {
    fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Debug, Deserialize)]
pub struct XenSetGlobalDirtyLog {
    pub enable: bool,
}

serde_arguments!(XenSetGlobalDirtyLog, [req("enable", Ty::Bool)]);

pub fn screendump(_: &mut Ctx, _: Screendump) -> QmpResult {
    Err(QmpError::generic(
        "There is no console to take a screendump from",
    ))
}

pub fn query_spice(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(json!({"enabled": false, "migrated": false, "mouse-mode": "client"}))
}

pub fn set_password(_: &mut Ctx, a: SetPassword) -> QmpResult {
    Err(match a.protocol {
        DisplayProtocol::Spice => not_active(SPICE),
        DisplayProtocol::Vnc => QmpError::generic("Could not set password"),
    })
}

pub fn expire_password(_: &mut Ctx, a: ExpirePassword) -> QmpResult {
    Err(match a.protocol {
        DisplayProtocol::Spice => not_active(SPICE),
        DisplayProtocol::Vnc => QmpError::generic("Could not set password expire time"),
    })
}

pub fn client_migrate_info(_: &mut Ctx, _: ClientMigrateInfo) -> QmpResult {
    Err(not_active(SPICE))
}

pub fn empty_list(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(json!([]))
}

pub fn rocker<A: RockerSwitch>(_: &mut Ctx, a: A) -> QmpResult {
    Err(QmpError::generic(format!("rocker {} not found", a.name())))
}

/// No RTC, no Xen: QEMU's answer when there is nothing to act on.
pub fn nothing_to_do<A: Arguments>(_: &mut Ctx, _: A) -> QmpResult {
    Ok(json!({}))
}

/// query-sev-capabilities: the VM has no memory encryption; QEMU 7.2's answer where KVM
/// offers no SEV.
pub fn query_sev_capabilities(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Err(QmpError::generic("SEV is not enabled in KVM"))
}

/// query-sgx-capabilities: the VM has no SGX enclaves; QEMU 7.2's answer where KVM
/// offers no SGX.
pub fn query_sgx_capabilities(_: &mut Ctx, _: NoArgs) -> QmpResult {
    Err(QmpError::generic("SGX is not enabled in KVM"))
}
