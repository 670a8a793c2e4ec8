//! The one place where the gateway's typed errors become QMP errors: each gets its QMP
//! class here, and its text (QEMU's, where QEMU has one) from its own Display.

use super::protocol::QmpError;
use crate::children::link::LinkError;
use crate::fdstore::FdError;

impl From<LinkError> for QmpError {
    fn from(e: LinkError) -> Self {
        match e {
            // The child's own answer keeps the class it chose.
            LinkError::Remote(remote) => remote.into(),
            other => QmpError::generic(other.to_string()),
        }
    }
}

impl From<FdError> for QmpError {
    fn from(e: FdError) -> Self {
        QmpError::generic(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc::ErrorClass;

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
}
