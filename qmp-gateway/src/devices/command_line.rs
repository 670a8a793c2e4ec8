//! The command line's `--device` (QEMU's -device: key=value with the driver first, or
//! JSON), read before anything starts: a virtio-blk-pci or virtio-net-pci device (read as
//! device_add reads its arguments, spec.rs), the balloon (its options are the balloon's,
//! crate::balloon), or a DIMM; and the list of them sorted for the launch, their ids
//! checked as one namespace. hotplug.rs adds them as device_add adds one.

use std::str::FromStr;

use serde_json::{Map, Value};

use super::spec::{self, Model};
use crate::balloon::{is_balloon, BalloonSpec};

/// What one `--device` adds: a virtio-blk-pci or virtio-net-pci device (added the way
/// device_add adds one), the balloon, or a DIMM (`pc-dimm,...`: its options as
/// device_add's arguments, read by dimm.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandLineDevice {
    Pci(CommandLinePci),
    Balloon(BalloonSpec),
    Dimm(Map<String, Value>),
}

/// A --device virtio-blk-pci or virtio-net-pci: as read, and as written (what errors
/// quote, as QEMU's quote its -device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLinePci {
    pub spec: spec::DeviceSpec,
    pub text: String,
}

impl CommandLineDevice {
    /// Its qdev id, if it has one.
    fn id(&self) -> Option<&str> {
        match self {
            CommandLineDevice::Pci(p) => p.spec.id.as_deref(),
            CommandLineDevice::Balloon(b) => b.id.as_deref(),
            CommandLineDevice::Dimm(args) => args.get("id").and_then(Value::as_str),
        }
    }
}

impl FromStr for CommandLineDevice {
    type Err = String;

    fn from_str(s: &str) -> Result<CommandLineDevice, String> {
        let opts = spec::cli_options(s)?;
        let driver = opts
            .get("driver")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if is_balloon(driver) {
            return BalloonSpec::from_options(&opts).map(CommandLineDevice::Balloon);
        }
        let device = spec::DeviceSpec::from_cli(&opts).map_err(|e| e.to_string())?;
        match device.model {
            Model::Blk | Model::Net => Ok(CommandLineDevice::Pci(CommandLinePci {
                spec: device,
                text: s.to_string(),
            })),
            Model::Dimm => Ok(CommandLineDevice::Dimm(opts)),
            Model::Cpu(_) | Model::Balloon => Err(format!(
                "{driver}: not a --device here (the vCPUs are --cpus and --max-cpus)"
            )),
        }
    }
}

/// The command line's DIMMs, in order.
pub fn dimms(devices: &[CommandLineDevice]) -> Vec<&Map<String, Value>> {
    devices
        .iter()
        .filter_map(|d| match d {
            CommandLineDevice::Dimm(args) => Some(args),
            _ => None,
        })
        .collect()
}

/// The command line's devices sorted: the PCI devices (disks and NICs) in order, and the
/// balloon (at most one, as QEMU: "Only one balloon device is supported"). Their ids are
/// one namespace, as QemuOpts checks them when it reads the command line.
pub fn split(
    devices: &[CommandLineDevice],
) -> Result<(Vec<CommandLinePci>, Option<BalloonSpec>), String> {
    let mut ids: Vec<&str> = Vec::new();
    for id in devices.iter().filter_map(CommandLineDevice::id) {
        if ids.contains(&id) {
            return Err(format!("Duplicate ID '{id}' for device"));
        }
        ids.push(id);
    }
    let mut pci = Vec::new();
    let mut balloon: Option<BalloonSpec> = None;
    for d in devices {
        match d {
            CommandLineDevice::Pci(p) => pci.push(p.clone()),
            CommandLineDevice::Balloon(_) if balloon.is_some() => {
                return Err("Only one balloon device is supported".into())
            }
            CommandLineDevice::Balloon(b) => balloon = Some(b.clone()),
            CommandLineDevice::Dimm(_) => {}
        }
    }
    Ok((pci, balloon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_takes_a_nic_or_the_balloon() {
        let parse = |s: &str| s.parse::<CommandLineDevice>();
        assert_eq!(
            parse("virtio-balloon-pci,id=balloon0"),
            Ok(CommandLineDevice::Balloon(BalloonSpec {
                id: Some("balloon0".into())
            }))
        );
        assert_eq!(
            parse("virtio-balloon"),
            Ok(CommandLineDevice::Balloon(BalloonSpec { id: None }))
        );
        assert!(matches!(
            parse("virtio-net-pci,netdev=n0"),
            Ok(CommandLineDevice::Pci(_))
        ));
        assert_eq!(
            parse("virtio-balloon-pci,foo=1"),
            Err("Property 'virtio-balloon-pci.foo' not found".into())
        );
        assert_eq!(
            parse("virtio-balloon-pci,id=1b"),
            Err("Parameter 'id' expects an identifier".into())
        );
        assert_eq!(
            parse("e1000"),
            Err("'e1000' is not a valid device model name".into())
        );
        assert!(matches!(
            parse(r#"{"driver": "virtio-blk-pci", "drive": "d", "addr": "0x4"}"#),
            Ok(CommandLineDevice::Pci(_))
        ));
        assert_eq!(
            parse("virtio-blk-pci,drive=d,addr=4.1").map(drop),
            Err(
                "PCI: slot 4 function 1: only function 0 of a slot can be hot-plugged here \
                 (no multifunction devices)"
                    .into()
            )
        );
        assert_eq!(
            parse("virtio-net-pci,netdev=n,bogus=1").map(drop),
            Err("Property 'virtio-net-pci.bogus' not found".into())
        );
    }

    #[test]
    fn pci_devices_read_as_device_add_reads_them() {
        let Ok(CommandLineDevice::Pci(nic)) =
            "virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:ab:cd:ef,mq=on,addr=6,bus=pci.0"
                .parse::<CommandLineDevice>()
        else {
            panic!("not a PCI device");
        };
        assert_eq!(nic.spec.id.as_deref(), Some("nic0"));
        assert_eq!(
            nic.spec.properties().unwrap(),
            spec::Props::Net(spec::NetProps {
                netdev: Some("n0".into()),
                mac: Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
                addr: Some(spec::Addr {
                    slot: 6,
                    function: 0
                }),
                bootindex: None,
            })
        );
        for (bad, error) in [
            (
                "virtio-net-pci,netdev=n0,mac=52:54:00",
                "Property 'virtio-net-device.mac' doesn't take value '52:54:00'",
            ),
            (
                "virtio-net-pci,netdev=n0,speed=10",
                "Property 'virtio-net-pci.speed' not found",
            ),
            (
                "virtio-blk-pci,drive=d,addr=0x20",
                "Property 'virtio-blk-pci.addr' doesn't take value '0x20'",
            ),
            ("virtio-blk-pci,drive=d,bus=pci.1", "Bus 'pci.1' not found"),
            (
                "virtio-blk-pci,drive=d,id=1x",
                "Parameter 'id' expects an identifier",
            ),
        ] {
            assert_eq!(
                bad.parse::<CommandLineDevice>().map(drop),
                Err(error.into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn one_balloon_whose_id_no_nic_has() {
        let specs = |list: &[&str]| -> Vec<CommandLineDevice> {
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
        assert_eq!(
            split(&specs(&[
                "virtio-blk-pci,drive=d,id=a",
                "pc-dimm,memdev=m,id=a"
            ])),
            Err("Duplicate ID 'a' for device".into())
        );
    }
}
