//! Commands for devices this VM does not have (no display, VNC, SPICE, balloon, TPM,
//! rocker switch, input devices, CPU hotplug...), answered exactly as QEMU 7.2 answers
//! them when the device is absent, so management tools see a coherent machine.

use ipc::ErrorClass;
use serde_json::{json, Map, Value};

use super::commands::Ctx;
use super::protocol::{QmpError, QmpResult};

fn not_active(desc: &str) -> QmpError {
    QmpError {
        class: ErrorClass::DeviceNotActive,
        desc: desc.into(),
    }
}

const SPICE: &str = "SPICE is not in use";
const NO_BALLOON: &str = "No balloon device has been activated";

fn protocol(args: &Map<String, Value>) -> &str {
    args.get("protocol")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn screendump(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Err(QmpError::generic(
        "There is no console to take a screendump from",
    ))
}

pub fn query_vnc(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Ok(json!({"enabled": false}))
}

pub fn query_spice(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Ok(json!({"enabled": false, "migrated": false, "mouse-mode": "client"}))
}

pub fn set_password(_: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    Err(match protocol(args) {
        "spice" => not_active(SPICE),
        _ => QmpError::generic("Could not set password"),
    })
}

pub fn expire_password(_: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    Err(match protocol(args) {
        "spice" => not_active(SPICE),
        _ => QmpError::generic("Could not set password expire time"),
    })
}

pub fn client_migrate_info(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Err(not_active(SPICE))
}

pub fn balloon(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Err(not_active(NO_BALLOON))
}

pub fn empty_list(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Ok(json!([]))
}

pub fn rocker(_: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    let name = args.get("name").and_then(Value::as_str).unwrap_or_default();
    Err(QmpError::generic(format!("rocker {name} not found")))
}

pub fn input_send_event(_: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    let kind = args
        .get("events")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str);
    match kind {
        Some(kind) => Err(QmpError::generic(format!(
            "Input handler not found for event type {kind}"
        ))),
        None => Ok(json!({})),
    }
}

/// No RTC, no Xen: QEMU's answer when there is nothing to act on.
pub fn nothing_to_do(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Ok(json!({}))
}

pub fn acpi_ospm_status(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Err(QmpError::generic(
        "command is not supported, missing ACPI device",
    ))
}

pub fn hotpluggable_cpus(_: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    Err(QmpError::generic(
        "The feature 'query-hotpluggable-cpus' is not enabled",
    ))
}
