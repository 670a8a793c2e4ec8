//! The balloon as the gateway sees it: `--device virtio-balloon-pci[,id=ID]` on the command
//! line (`--device` takes a NIC, the balloon or a DIMM: `DeviceSpec`), and QMP balloon's value
//! turned into the target vmm-core's device holds, by QEMU 7.2's rules. vmm-core serves
//! the device itself (vmm-core/src/devices/virtio_balloon/): it gives the guest's pages
//! back to the host and reports what the driver says it holds, which the gateway answers
//! query-balloon with and sends on as BALLOON_CHANGE (rate-limited as QEMU's, events.rs).

use std::str::FromStr;

use serde_json::{Map, Value};

use crate::keyval::split_options;
use crate::net::nic::NicSpec;

/// QEMU's words when there is no balloon (QERR_DEVICE_NOT_ACTIVE, class DeviceNotActive).
pub const NOT_ACTIVE: &str = "No balloon device has been activated";
/// QEMU's words for a value of 0 or less (QERR_INVALID_PARAMETER_VALUE).
pub const NOT_A_SIZE: &str = "Parameter 'target' expects a size";
const PAGE: u64 = 4096;

/// `--device virtio-balloon-pci[,id=ID]` (or `virtio-balloon`, QEMU's alias).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonSpec {
    pub id: Option<String>,
}

impl FromStr for BalloonSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<BalloonSpec, String> {
        let mut parts = s.split(',');
        let model = parts.next().unwrap_or_default();
        if !is_balloon(model) {
            return Err(format!("'{model}' is not virtio-balloon-pci"));
        }
        let mut id = None;
        for part in parts {
            match part.split_once('=') {
                Some(("id", v)) if crate::ids::well_formed(v) => id = Some(v.to_string()),
                Some(("id", _)) => {
                    return Err("Parameter 'id' expects an identifier".into());
                }
                Some((k, _)) => return Err(format!("Property 'virtio-balloon-pci.{k}' not found")),
                None => return Err(format!("'{part}': expected key=value")),
            }
        }
        Ok(BalloonSpec { id })
    }
}

fn is_balloon(model: &str) -> bool {
    matches!(model, "virtio-balloon-pci" | "virtio-balloon")
}

/// What `--device` adds: a NIC, the balloon, or a DIMM (`pc-dimm,...`: its options as
/// device_add's arguments, strings as QemuOpts keeps them, read by devices/dimm.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Nic(NicSpec),
    Balloon(BalloonSpec),
    Dimm(Map<String, Value>),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<DeviceSpec, String> {
        let model = s.split(',').next().unwrap_or_default();
        if model == "pc-dimm" {
            let mut args = Map::new();
            for part in split_options(s) {
                match part.split_once('=') {
                    Some((k, v)) => args.insert(k.to_string(), Value::String(v.to_string())),
                    None => args.insert("driver".to_string(), Value::String(part)),
                };
            }
            return Ok(DeviceSpec::Dimm(args));
        }
        match is_balloon(model) {
            true => s.parse().map(DeviceSpec::Balloon),
            false => s.parse().map(DeviceSpec::Nic),
        }
    }
}

/// The command line's DIMMs, in order.
pub fn dimms(devices: &[DeviceSpec]) -> Vec<&Map<String, Value>> {
    devices
        .iter()
        .filter_map(|d| match d {
            DeviceSpec::Dimm(args) => Some(args),
            _ => None,
        })
        .collect()
}

/// The command line's devices sorted: the NICs in order, and the balloon (at most one,
/// as QEMU: "Only one balloon device is supported"; its id not a NIC's, as QEMU's ids
/// are one namespace).
pub fn split(devices: &[DeviceSpec]) -> Result<(Vec<NicSpec>, Option<BalloonSpec>), String> {
    let mut nics = Vec::new();
    let mut balloon: Option<BalloonSpec> = None;
    for d in devices {
        match d {
            DeviceSpec::Nic(n) => nics.push(n.clone()),
            DeviceSpec::Balloon(_) if balloon.is_some() => {
                return Err("Only one balloon device is supported".into())
            }
            DeviceSpec::Balloon(b) => balloon = Some(b.clone()),
            DeviceSpec::Dimm(_) => {}
        }
    }
    if let Some(id) = balloon.as_ref().and_then(|b| b.id.as_deref()) {
        if nics.iter().any(|n| n.id.as_deref() == Some(id)) {
            return Err(format!("Duplicate ID '{id}' for device"));
        }
    }
    Ok((nics, balloon))
}

/// QMP balloon's `value` (bytes the guest should keep) as the pages the balloon must hold,
/// as QEMU 7.2's qmp_balloon and virtio_balloon_to_target have it: 0 or less is refused;
/// more than RAM counts as RAM; (RAM - value) / 4096, rounded down.
pub fn target_pages(ram: u64, value: i64) -> Result<u32, &'static str> {
    if value <= 0 {
        return Err(NOT_A_SIZE);
    }
    let value = (value as u64).min(ram);
    // RAM is at most 1 TiB (vmm-core's limit): 2^28 pages.
    Ok(u32::try_from((ram - value) / PAGE).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 128 << 20;

    #[test]
    fn targets_as_qemu_computes_them() {
        assert_eq!(target_pages(RAM, (RAM - (32 << 20)) as i64), Ok(8192));
        assert_eq!(target_pages(RAM, RAM as i64), Ok(0));
        assert_eq!(target_pages(RAM, i64::MAX), Ok(0));
        // Rounded down: 100 bytes short of 16 MiB is 4095 pages.
        assert_eq!(target_pages(RAM, (RAM - (16 << 20) + 100) as i64), Ok(4095));
        assert_eq!(target_pages(RAM, 1), Ok(32767));
        for bad in [0, -1, i64::MIN] {
            assert_eq!(target_pages(RAM, bad), Err(NOT_A_SIZE));
        }
    }

    #[test]
    fn device_takes_a_nic_or_the_balloon() {
        let parse = |s: &str| s.parse::<DeviceSpec>();
        assert_eq!(
            parse("virtio-balloon-pci,id=balloon0"),
            Ok(DeviceSpec::Balloon(BalloonSpec {
                id: Some("balloon0".into())
            }))
        );
        assert_eq!(
            parse("virtio-balloon"),
            Ok(DeviceSpec::Balloon(BalloonSpec { id: None }))
        );
        assert!(matches!(
            parse("virtio-net-pci,netdev=n0"),
            Ok(DeviceSpec::Nic(_))
        ));
        assert_eq!(
            parse("virtio-balloon-pci,foo=1"),
            Err("Property 'virtio-balloon-pci.foo' not found".into())
        );
        assert_eq!(
            parse("virtio-balloon-pci,id=1b"),
            Err("Parameter 'id' expects an identifier".into())
        );
        assert!(parse("e1000").is_err());
    }

    #[test]
    fn one_balloon_whose_id_no_nic_has() {
        let specs = |list: &[&str]| -> Vec<DeviceSpec> {
            list.iter().map(|s| s.parse().unwrap()).collect()
        };
        let (nics, balloon) = split(&specs(&[
            "virtio-net-pci,netdev=n0,id=a",
            "virtio-balloon-pci,id=b",
        ]))
        .unwrap();
        assert_eq!((nics.len(), balloon.unwrap().id.as_deref()), (1, Some("b")));
        assert_eq!(
            split(&specs(&["virtio-balloon-pci", "virtio-balloon-pci"])),
            Err("Only one balloon device is supported".into())
        );
        assert_eq!(
            split(&specs(&[
                "virtio-net-pci,netdev=n0,id=a",
                "virtio-balloon-pci,id=a"
            ])),
            Err("Duplicate ID 'a' for device".into())
        );
    }
}
