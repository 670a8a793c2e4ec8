//! The one place where the gateway's typed errors become QMP errors: each gets its QMP
//! class here, and its text (QEMU's, where QEMU has one) from its own Display.

use ipc::ErrorClass;

use super::protocol::QmpError;
use crate::block::jobs::JobError;
use crate::block::BlockError;
use crate::chardev::ChardevError;
use crate::children::daemon::DaemonError;
use crate::children::link::LinkError;
use crate::devices::DeviceError;
use crate::fdstore::FdError;
use crate::migration::SettingsError;
use crate::net::NetError;

/// QEMU's answer for a device name it does not know.
fn device_not_found(e: impl std::fmt::Display) -> QmpError {
    QmpError {
        class: ErrorClass::DeviceNotFound,
        desc: e.to_string(),
    }
}

/// Every chardev error is QEMU's GenericError.
impl From<ChardevError> for QmpError {
    fn from(e: ChardevError) -> Self {
        QmpError::generic(e.to_string())
    }
}

impl From<LinkError> for QmpError {
    fn from(e: LinkError) -> Self {
        match e {
            // The child's own answer keeps the class it chose.
            LinkError::Remote(remote) => remote.into(),
            other => QmpError::generic(other.to_string()),
        }
    }
}

impl From<DaemonError> for QmpError {
    fn from(e: DaemonError) -> Self {
        match e {
            DaemonError::Link(link) => link.into(),
            e => QmpError::generic(e.to_string()),
        }
    }
}

impl From<BlockError> for QmpError {
    fn from(e: BlockError) -> Self {
        match e {
            BlockError::Link(link) => link.into(),
            BlockError::Daemon(daemon) => daemon.into(),
            e @ BlockError::DeviceNotFound(_) => device_not_found(e),
            e @ BlockError::Job(JobError::NotFound(_)) => QmpError {
                class: ErrorClass::DeviceNotActive,
                desc: e.to_string(),
            },
            e => QmpError::generic(e.to_string()),
        }
    }
}

impl From<NetError> for QmpError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Link(link) => link.into(),
            NetError::Daemon(daemon) => daemon.into(),
            e @ NetError::DeviceNotFound(_) => device_not_found(e),
            e => QmpError::generic(e.to_string()),
        }
    }
}

impl From<DeviceError> for QmpError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::Block(block) => block.into(),
            DeviceError::Net(net) => net.into(),
            DeviceError::Link(link) => link.into(),
            // QEMU's DeviceNotFound: an id or bus path naming nothing.
            e @ (DeviceError::NotFound(_)
            | DeviceError::NoBusDevice(_)
            | DeviceError::NoIothread(_)
            | DeviceError::NoMemdev(_)) => device_not_found(e),
            e => QmpError::generic(e.to_string()),
        }
    }
}

impl From<FdError> for QmpError {
    fn from(e: FdError) -> Self {
        QmpError::generic(e.to_string())
    }
}

/// Every refusal of the migration settings is a GenericError, as in QEMU.
impl From<SettingsError> for QmpError {
    fn from(e: SettingsError) -> Self {
        QmpError::generic(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_error_keeps_its_class() {
        let e = QmpError::from(LinkError::Remote(ipc::RemoteError {
            class: ErrorClass::DeviceNotActive,
            desc: "no".into(),
        }));
        assert_eq!(
            (e.class, e.desc.as_str()),
            (ErrorClass::DeviceNotActive, "no")
        );
        let e = QmpError::from(LinkError::NotRunning("vmm-core".into()));
        assert_eq!(e.class, ErrorClass::GenericError);
        assert_eq!(e.desc, "vmm-core is not running");
    }

    #[test]
    fn unknown_devices_are_device_not_found_the_rest_generic() {
        let e = QmpError::from(BlockError::DeviceNotFound("d9".into()));
        assert_eq!(
            (e.class, e.desc.as_str()),
            (ErrorClass::DeviceNotFound, "Device 'd9' not found")
        );
        let e = QmpError::from(NetError::DeviceNotFound("n9".into()));
        assert_eq!(
            (e.class, e.desc.as_str()),
            (ErrorClass::DeviceNotFound, "Device 'n9' not found")
        );
        // block-set-write-threshold's unknown node reads the same but is a GenericError.
        let e = QmpError::from(BlockError::NoThresholdNode("n".into()));
        assert_eq!(
            (e.class, e.desc.as_str()),
            (ErrorClass::GenericError, "Device 'n' not found")
        );
        let e = QmpError::from(DeviceError::NotFound("vb".into()));
        assert_eq!(
            (e.class, e.desc.as_str()),
            (ErrorClass::DeviceNotFound, "Device 'vb' not found")
        );
        let e = QmpError::from(DeviceError::NoBusDevice("x".into()));
        assert_eq!(e.class, ErrorClass::DeviceNotFound);
        let e = QmpError::from(DeviceError::UnplugPending("vb".into()));
        assert_eq!(
            (e.class, e.desc.as_str()),
            (
                ErrorClass::GenericError,
                "Device vb is already in the process of unplug"
            )
        );
        let e = QmpError::from(DeviceError::Block(BlockError::DeviceNotFound("d".into())));
        assert_eq!(e.class, ErrorClass::DeviceNotFound);
        let e = QmpError::from(BlockError::Link(LinkError::Remote(ipc::RemoteError {
            class: ErrorClass::DeviceNotActive,
            desc: "x".into(),
        })));
        assert_eq!(e.class, ErrorClass::DeviceNotActive);
    }
}
