//! The command line's devices, checked together before the gateway starts any process:
//! each drive's id and node name against the others' (QEMU's naming rules), each drive's
//! image opened with the access it asks for (and closed again: the block layer opens it
//! for good), each netdev's id, each --device NIC's netdev (one NIC per netdev), and each
//! netdev opened (kept, for the network layer), and the devices' places on PCI bus 0
//! (addr=, as the launch will place them). A --device disk's drive= is a node the block
//! layer makes from --blockdev at the launch, which checks it there, as device_add does. An error here is the one line the gateway
//! prints, and nothing was started, so nothing needs stopping. The texts are the ones the
//! block and network layers give for the same mistakes, which they still check when the
//! devices are added.

use crate::block::drive::DriveSpec;
use crate::block::graph::open_path;
use crate::block::options::{check_node_name, Driver};
use crate::block::BlockError;
use crate::devices::spec::{DeviceSpec, Model, Props};
use crate::devices::{DeviceError, Devices};
use crate::net::netdev::{Netdev, NetdevSpec};
use crate::net::NetError;

/// What stops the start: the first mistake, in the order the devices are added.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Checks the drives, opens the netdevs, checks the --device disks' and NICs' NICs (their
/// ids were checked as the command line was read: devices::command_line::split); returns
/// the netdevs, opened.
pub fn check(
    drives: &[DriveSpec],
    netdevs: &[NetdevSpec],
    devices: &[DeviceSpec],
) -> Result<Vec<Netdev>, StartupError> {
    check_drives(drives)?;
    let opened = open_netdevs(netdevs)?;
    check_nics(devices, netdevs)?;
    check_slots(drives, devices)?;
    Ok(opened)
}

/// The drives' and devices' slots as the launch places them (the --drive disks, then the
/// --device ones in their order; addr= kept, the others the lowest free), in a registry
/// of their own: a slot asked for twice, or taken by a device placed before, is refused
/// as device_add refuses it.
fn check_slots(drives: &[DriveSpec], devices: &[DeviceSpec]) -> Result<(), DeviceError> {
    let mut registry = Devices::default();
    for d in drives {
        registry.launch(Model::Blk, None, d.slot)?;
    }
    for d in devices {
        let ticket = registry.reserve(d.model, d.id.as_deref())?;
        registry.place(&ticket, d.properties()?.addr())?;
    }
    Ok(())
}

/// A drive's id (QMP's "device"): its own, or virtioN after its place on the command line
/// (as the block layer names it when it adds the drive).
pub fn drive_id(index: usize, spec: &DriveSpec) -> String {
    spec.id.clone().unwrap_or_else(|| format!("virtio{index}"))
}

fn check_drives(drives: &[DriveSpec]) -> Result<(), BlockError> {
    let mut ids: Vec<String> = Vec::new();
    let mut nodes: Vec<&str> = Vec::new();
    // Held until every drive is checked: two drives on one image meet as they would
    // when both are open.
    let mut images = Vec::new();
    for (index, spec) in drives.iter().enumerate() {
        let id = drive_id(index, spec);
        if ids.contains(&id) || nodes.contains(&id.as_str()) {
            return Err(BlockError::DriveIdTaken(id));
        }
        let in_drive = |error| BlockError::Drive {
            id: id.clone(),
            error: Box::new(error),
        };
        if let Some(name) = spec.node_name.as_deref() {
            check_node_name(name).map_err(in_drive)?;
            if nodes.contains(&name) {
                return Err(in_drive(BlockError::DuplicateNode(name.to_string())));
            }
            if name == id {
                return Err(in_drive(BlockError::NameIsDeviceId(name.to_string())));
            }
            nodes.push(name);
        }
        // An fd set cannot exist yet: the block layer says so when it adds the drive.
        if !spec.file.starts_with("/dev/fdset/") {
            images.push(open_path(&spec.file, Driver::File, !spec.read_only).map_err(in_drive)?);
        }
        ids.push(id);
    }
    Ok(())
}

fn open_netdevs(netdevs: &[NetdevSpec]) -> Result<Vec<Netdev>, NetError> {
    let mut opened: Vec<Netdev> = Vec::new();
    for spec in netdevs {
        if opened.iter().any(|n| n.id == spec.id) {
            return Err(NetError::NetdevIdTaken(spec.id.clone()));
        }
        opened.push(spec.open(None).map_err(|error| NetError::Netdev {
            id: spec.id.clone(),
            error: Box::new(error),
        })?);
    }
    Ok(opened)
}

/// Each NIC's netdev= names a --netdev no NIC before it took, as QEMU's netdev property
/// takes it.
fn check_nics(devices: &[DeviceSpec], netdevs: &[NetdevSpec]) -> Result<(), StartupError> {
    let mut taken: Vec<String> = Vec::new();
    for d in devices {
        let Props::Net(nic) = d.properties()? else {
            continue;
        };
        let netdev = nic.netdev.ok_or(DeviceError::NoNetdev)?;
        if !netdevs.iter().any(|n| n.id == netdev) {
            return Err(NetError::NetdevNotFound(netdev).into());
        }
        if taken.contains(&netdev) {
            return Err(NetError::NetdevInUse(netdev).into());
        }
        taken.push(netdev);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drives(specs: &[&str]) -> Vec<DriveSpec> {
        specs.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn error(drives: &[DriveSpec], netdevs: &[&str], nics: &[&str]) -> String {
        let netdevs: Vec<NetdevSpec> = netdevs
            .iter()
            .map(|s| NetdevSpec::parse_cli(s).unwrap())
            .collect();
        let nics: Vec<DeviceSpec> = nics
            .iter()
            .map(|s| DeviceSpec::from_cli(&crate::devices::spec::cli_options(s).unwrap()).unwrap())
            .collect();
        match check(drives, &netdevs, &nics) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn ids_and_names_meet_each_other_before_anything_starts() {
        let image =
            std::env::temp_dir().join(format!("flotilla-startup-{}.img", std::process::id()));
        std::fs::write(&image, [0u8; 512]).unwrap();
        let file = format!("file={},format=raw", image.display());
        let cases = [
            (
                vec![format!("{file},id=a"), format!("{file},id=b")],
                "accepted",
            ),
            (
                vec![format!("{file},id=a"), format!("{file},id=a")],
                "drive id a is used twice",
            ),
            // A default id meets an explicit one.
            (
                vec![file.clone(), format!("{file},id=virtio0")],
                "drive id virtio0 is used twice",
            ),
            (
                vec![format!("{file},id=a,node-name=n"), format!("{file},id=n")],
                "drive id n is used twice",
            ),
            (
                vec![
                    format!("{file},id=a,node-name=n"),
                    format!("{file},id=b,node-name=n"),
                ],
                "drive b: Duplicate nodes with node-name='n'",
            ),
            (
                vec![format!("{file},id=a,node-name=a")],
                "drive a: node-name=a is conflicting with a device id",
            ),
            (
                vec![format!("{file},id=a,node-name=-a")],
                "drive a: Invalid node-name: '-a'",
            ),
            (
                vec!["file=/nonexistent/x.img,format=raw,id=a".to_string()],
                "drive a: Could not open '/nonexistent/x.img': No such file or directory",
            ),
            (
                vec!["file=/dev/null,format=raw,id=a".to_string()],
                "drive a: 'file' driver requires '/dev/null' to be a regular file",
            ),
            // No fd set exists yet: the block layer says so itself.
            (vec!["file=/dev/fdset/3,format=raw".to_string()], "accepted"),
            // addr=: kept; the others take the lowest free slot, in order.
            (
                vec![format!("{file},id=a,addr=2"), format!("{file},id=b")],
                "accepted",
            ),
            (
                vec![format!("{file},id=a,addr=5"), format!("{file},id=b,addr=5")],
                "PCI: slot 5 function 0 not available for virtio-blk-pci, in use by \
                 virtio-blk-pci,id=(null)",
            ),
            (
                vec![format!("{file},id=a"), format!("{file},id=b,addr=1")],
                "PCI: slot 1 function 0 not available for virtio-blk-pci, in use by \
                 virtio-blk-pci,id=(null)",
            ),
        ];
        for (specs, want) in cases {
            let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
            assert_eq!(error(&drives(&specs), &[], &[]), want, "{specs:?}");
        }
        std::fs::remove_file(&image).unwrap();
    }

    #[test]
    fn nics_need_a_netdev_of_their_own() {
        let udp = |id: &str, port: u16| {
            format!(
                "socket,id={id},udp=127.0.0.1:{},localaddr=127.0.0.1:{port}",
                port + 1
            )
        };
        let (n0, n1) = (udp("n0", 47440), udp("n1", 47442));
        assert_eq!(
            error(&[], &[&n0, &udp("n0", 47444)], &[]),
            "netdev id n0 is used twice"
        );
        assert_eq!(
            error(&[], &[&n0], &["virtio-net-pci,netdev=zz"]),
            "Property 'virtio-net-device.netdev' can't find value 'zz'"
        );
        assert_eq!(
            error(
                &[],
                &[&n0],
                &["virtio-net-pci,netdev=n0", "virtio-net-pci,netdev=n0"]
            ),
            "Property 'virtio-net-device.netdev' can't take value 'n0', it's in use"
        );
        assert_eq!(
            error(&[], &[&n0], &["virtio-net-pci,id=x"]),
            "virtio-net-pci needs netdev=: a NIC without a host backend is not supported here"
        );
        // The --device disks and NICs take their slots after the --drive disks.
        assert_eq!(
            error(
                &[],
                &[&n0],
                &[
                    "virtio-blk-pci,drive=a,addr=2",
                    "virtio-net-pci,netdev=n0,addr=2"
                ]
            ),
            "PCI: slot 2 function 0 not available for virtio-net-pci, in use by \
             virtio-blk-pci,id=(null)"
        );
        assert_eq!(
            error(
                &[],
                &[&n0, &n1],
                &["virtio-net-pci,netdev=n0", "virtio-net-pci,netdev=n1"]
            ),
            "accepted"
        );
    }
}
