//! The device state a migration carries, taken from the stopped VM: vmm-core's state
//! and the NICs' host sides (filters, links). A migration's STATE record and
//! xen-save-devices-state's file (`device_file`) are made of it.

use ipc::{MigratedNic, MigratedState, RemoteError, VmmReply, VmmRequest};

use crate::children::link::{LinkError, VmmLink};

/// vmm-core's state with `nics`, the NICs' host sides; the VM must be stopped.
pub fn take(vmm: &VmmLink, nics: Vec<MigratedNic>) -> Result<MigratedState, LinkError> {
    match vmm.request(VmmRequest::SaveState, &[])? {
        VmmReply::State(vmm) => Ok(MigratedState { vmm, nics }),
        other => Err(LinkError::Remote(RemoteError::generic(format!(
            "vmm-core answered the state's request with {other:?}"
        )))),
    }
}
