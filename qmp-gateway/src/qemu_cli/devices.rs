//! -device, -object and -netdev: which go to the gateway as they are (it reads QEMU's
//! syntax: --device and --blockdev take JSON too), which become other options (the
//! isa-serial is the UART on a chardev, the RAM's backend object is folded into
//! --memory), and JSON turned into the key=value form the gateway's --object and
//! --netdev read.

use serde_json::{Map, Value};

use super::error::CliError;
use crate::keyval;

/// The devices Flotilla makes from -device (the gateway's --device), and the UART.
const GATEWAY_DEVICES: &[&str] = &[
    "virtio-blk-pci",
    "virtio-net-pci",
    "virtio-balloon-pci",
    "pc-dimm",
];

/// An option's properties: JSON (libvirt's form) or QemuOpts key=value with `implied`
/// as the first word's key.
pub fn properties(arg: &str, implied: &str) -> Result<Map<String, Value>, String> {
    keyval::json_or_qemu_opts(arg, implied).map_err(|e| e.to_string())
}

/// A flat JSON object as QemuOpts text (`,` doubled inside values), `first` first and
/// without its key.
pub fn to_keyval(props: &Map<String, Value>, first: &str) -> Result<String, String> {
    let text = |v: &Value| -> Result<String, String> {
        Ok(match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
            Value::Number(n) => n.to_string(),
            other => return Err(format!("a value the key=value form cannot carry: {other}")),
        }
        .replace(',', ",,"))
    };
    let mut out = vec![text(props.get(first).unwrap_or(&Value::Null))?];
    for (k, v) in props.iter().filter(|(k, _)| *k != first) {
        out.push(format!("{k}={}", text(v)?));
    }
    Ok(out.join(","))
}

/// What a -device becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum DeviceUse {
    /// The gateway's --device, the text as it was.
    Gateway(String),
    /// The UART (COM1) on this chardev.
    Uart(String),
}

pub fn device(arg: &str) -> Result<DeviceUse, CliError> {
    let at = |m: String| CliError::at("device", Some(arg), m);
    let props = properties(arg, "driver").map_err(at)?;
    let driver = props
        .get("driver")
        .and_then(Value::as_str)
        .ok_or_else(|| at("Parameter 'driver' is missing".into()))?;
    if GATEWAY_DEVICES.contains(&driver) {
        return Ok(DeviceUse::Gateway(arg.to_string()));
    }
    if driver != "isa-serial" {
        return Err(at(format!("'{driver}' is not a valid device model name")));
    }
    // Flotilla's PC has one UART, COM1 (index 0, its I/O port and IRQ).
    let mut chardev = None;
    for (key, value) in &props {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match key.as_str() {
            "driver" | "id" => {}
            "chardev" => chardev = Some(value),
            "index" if value == "0" => {}
            "index" => {
                return Err(at(
                    "Flotilla's PC has one UART, COM1: isa-serial index=0 only".into(),
                ))
            }
            _ => {
                return Err(at(format!(
                    "Flotilla's isa-serial takes chardev=, id= and index=0 only, not '{key}'"
                )))
            }
        }
    }
    let chardev = chardev.ok_or_else(|| {
        at("Flotilla's isa-serial needs chardev= (a UART without a backend)".into())
    })?;
    Ok(DeviceUse::Uart(chardev))
}

/// -object: its properties (qom-type and id among them), for the RAM's backend check.
pub fn object(arg: &str) -> Result<Map<String, Value>, CliError> {
    let props = properties(arg, "qom-type").map_err(|m| CliError::at("object", Some(arg), m))?;
    if !props.get("id").is_some_and(Value::is_string) {
        return Err(CliError::at(
            "object",
            Some(arg),
            "Parameter 'id' is missing",
        ));
    }
    Ok(props)
}

/// The gateway's --object text for an object.
pub fn object_text(arg: &str, props: &Map<String, Value>) -> Result<String, CliError> {
    if !arg.trim_start().starts_with('{') {
        return Ok(arg.to_string());
    }
    to_keyval(props, "qom-type").map_err(|m| CliError::at("object", Some(arg), m))
}

/// -netdev: the gateway's --netdev text (libvirt writes tap with fd= as JSON).
pub fn netdev(arg: &str) -> Result<String, CliError> {
    if !arg.trim_start().starts_with('{') {
        return Ok(arg.to_string());
    }
    let props = properties(arg, "type").map_err(|m| CliError::at("netdev", Some(arg), m))?;
    let text = to_keyval(&props, "type").map_err(|m| CliError::at("netdev", Some(arg), m))?;
    // The gateway's --netdev splits at every comma.
    if text.contains(",,") {
        return Err(CliError::at(
            "netdev",
            Some(arg),
            "Flotilla's -netdev values cannot hold a comma",
        ));
    }
    Ok(text)
}
