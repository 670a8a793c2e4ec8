//! The balloon as the gateway sees it: `--device virtio-balloon-pci[,id=ID]` on the command
//! line (`--device` takes the balloon, a DIMM, or a virtio-blk-pci or virtio-net-pci device:
//! `DeviceSpec`), and QMP balloon's value turned into the target vmm-core's device holds, by
//! QEMU 7.2's rules. vmm-core serves the device itself (vmm-core/src/devices/virtio_balloon/):
//! it gives the guest's pages back to the host and reports what the driver says it holds,
//! which the gateway answers query-balloon with and sends on as BALLOON_CHANGE (rate-limited
//! as QEMU's, events.rs).

use std::str::FromStr;

use serde_json::{Map, Value};

use crate::devices::spec::{self, Model};

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

impl BalloonSpec {
    /// From the option's map (QemuOpts: every value a string).
    fn from_options(opts: &Map<String, Value>) -> Result<BalloonSpec, String> {
        let mut id = None;
        for (k, v) in opts {
            match (k.as_str(), v.as_str()) {
                ("driver", _) => {}
                ("id", Some(v)) if crate::ids::well_formed(v) => id = Some(v.to_string()),
                ("id", _) => return Err("Parameter 'id' expects an identifier".into()),
                _ => return Err(format!("Property 'virtio-balloon-pci.{k}' not found")),
            }
        }
        Ok(BalloonSpec { id })
    }
}

fn is_balloon(model: &str) -> bool {
    matches!(model, "virtio-balloon-pci" | "virtio-balloon")
}

/// What `--device` adds (QEMU's -device: key=value with the driver first, or JSON): a
/// virtio-blk-pci or virtio-net-pci device (read as device_add reads its arguments, and
/// added the way device_add adds one), the balloon, or a DIMM (`pc-dimm,...`: its options as
/// device_add's arguments, read by devices/dimm.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Pci(PciDevice),
    Balloon(BalloonSpec),
    Dimm(Map<String, Value>),
}

/// A --device virtio-blk-pci or virtio-net-pci: as read, and as written (what errors
/// quote, as QEMU's quote its -device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    pub spec: spec::DeviceSpec,
    pub text: String,
}

impl DeviceSpec {
    /// Its qdev id, if it has one.
    fn id(&self) -> Option<&str> {
        match self {
            DeviceSpec::Pci(p) => p.spec.id.as_deref(),
            DeviceSpec::Balloon(b) => b.id.as_deref(),
            DeviceSpec::Dimm(args) => args.get("id").and_then(Value::as_str),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<DeviceSpec, String> {
        let opts = spec::cli_options(s)?;
        let driver = opts
            .get("driver")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if is_balloon(driver) {
            return BalloonSpec::from_options(&opts).map(DeviceSpec::Balloon);
        }
        let device = spec::DeviceSpec::from_cli(&opts).map_err(|e| e.to_string())?;
        match device.model {
            Model::Blk | Model::Net => Ok(DeviceSpec::Pci(PciDevice {
                spec: device,
                text: s.to_string(),
            })),
            Model::Dimm => Ok(DeviceSpec::Dimm(opts)),
            Model::Cpu(_) | Model::Balloon => Err(format!(
                "{driver}: not a --device here (the vCPUs are --cpus and --max-cpus)"
            )),
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

/// The command line's devices sorted: the PCI devices (disks and NICs) in order, and the
/// balloon (at most one, as QEMU: "Only one balloon device is supported"). Their ids are
/// one namespace, as QemuOpts checks them when it reads the command line.
pub fn split(devices: &[DeviceSpec]) -> Result<(Vec<PciDevice>, Option<BalloonSpec>), String> {
    let mut ids: Vec<&str> = Vec::new();
    for id in devices.iter().filter_map(DeviceSpec::id) {
        if ids.contains(&id) {
            return Err(format!("Duplicate ID '{id}' for device"));
        }
        ids.push(id);
    }
    let mut pci = Vec::new();
    let mut balloon: Option<BalloonSpec> = None;
    for d in devices {
        match d {
            DeviceSpec::Pci(p) => pci.push(p.clone()),
            DeviceSpec::Balloon(_) if balloon.is_some() => {
                return Err("Only one balloon device is supported".into())
            }
            DeviceSpec::Balloon(b) => balloon = Some(b.clone()),
            DeviceSpec::Dimm(_) => {}
        }
    }
    Ok((pci, balloon))
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
            Ok(DeviceSpec::Pci(_))
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
            Ok(DeviceSpec::Pci(_))
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
        let Ok(DeviceSpec::Pci(nic)) =
            "virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:ab:cd:ef,mq=on,addr=6,bus=pci.0"
                .parse::<DeviceSpec>()
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
                bad.parse::<DeviceSpec>().map(drop),
                Err(error.into()),
                "{bad}"
            );
        }
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
        assert_eq!(
            split(&specs(&[
                "virtio-blk-pci,drive=d,id=a",
                "pc-dimm,memdev=m,id=a"
            ])),
            Err("Duplicate ID 'a' for device".into())
        );
    }
}
