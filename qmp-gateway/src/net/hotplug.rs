//! The NICs device_add and device_del make and remove: a virtio-net-pci over a spare
//! netdev, its net daemon started and supervised as a launch NIC's; and any NIC
//! leaving once the guest let its device go, its netdev spare again (as in QEMU, where
//! the netdev stays and another device may take it).

use std::os::fd::OwnedFd;

use ipc::NicLaunch;

use super::error::NetError;
use super::{NetLayer, NewNic, State};

/// A NIC device_add asks for.
pub struct DeviceNic {
    pub netdev: String,
    pub qdev_id: Option<String>,
    pub qom_path: String,
    pub mac: Option<[u8; 6]>,
}

impl State {
    /// QEMU's refusals of netdev=: none by that name, or one a NIC has.
    fn check_netdev(&self, netdev: &str) -> Result<(), NetError> {
        if self
            .nics
            .iter()
            .any(|n| n.netdev.as_deref() == Some(netdev))
        {
            return Err(NetError::NetdevInUse(netdev.to_string()));
        }
        if !self.spare.iter().any(|n| n.id == netdev) {
            return Err(NetError::NetdevNotFound(netdev.to_string()));
        }
        Ok(())
    }

    /// QEMU's name for an anonymous NIC's net client: its model and how many there are.
    fn client_name(&self, id: Option<&str>) -> String {
        if let Some(id) = id {
            return id.to_string();
        }
        (self.nics.len()..)
            .map(|n| format!("virtio-net-pci.{n}"))
            .find(|name| !self.nics.iter().any(|nic| nic.id == *name))
            .unwrap_or_default()
    }
}

impl NetLayer {
    /// device_add's netdev= checked as QEMU checks it, before the device takes a slot.
    pub fn check_netdev(&self, netdev: &str) -> Result<(), NetError> {
        self.state.lock().check_netdev(netdev)
    }

    /// A NIC over netdev `d.netdev`, its daemon started; returns what vmm-core is told
    /// (the device in `slot`) and its end of the daemon's socket. On failure the netdev
    /// is spare again.
    pub fn add_device_nic(&self, d: DeviceNic, slot: u8) -> Result<(NicLaunch, OwnedFd), NetError> {
        let mut state = self.state.lock();
        state.check_netdev(&d.netdev)?;
        let id = state.client_name(d.qdev_id.as_deref());
        if state.nics.iter().any(|n| n.id == id) {
            // A net client by that name (a launch NIC's default one).
            return Err(NetError::DuplicateId(id));
        }
        let pos = state
            .spare
            .iter()
            .position(|n| n.id == d.netdev)
            .ok_or_else(|| NetError::NetdevNotFound(d.netdev.clone()))?;
        let netdev = state.spare.remove(pos);
        let new = NewNic {
            id,
            qdev_id: d.qdev_id.unwrap_or_default(),
            qom_path: d.qom_path,
            mac: d.mac,
            slot,
        };
        self.attach(&mut state, netdev, new)
    }

    /// NIC `id` is gone from the guest (vmm-core let go of it): its daemon stops and its
    /// netdev is spare again. Returns whether there was such a NIC.
    pub fn remove_nic(&self, id: &str) -> bool {
        let Some(mut nic) = ({
            let mut state = self.state.lock();
            let at = state.nics.iter().position(|n| n.id == id);
            at.map(|at| state.nics.remove(at))
        }) else {
            return false;
        };
        if let Some(how) = nic.stop() {
            log::info!("NIC {id}: net daemon stopped ({how})");
        }
        let _ = std::fs::remove_file(&nic.socket);
        if nic.netdev.is_some() {
            let netdev = nic.into_netdev();
            log::info!("NIC {id}: removed; netdev {} is free", netdev.id);
            self.state.lock().spare.push(netdev);
        } else {
            log::info!("NIC {id}: removed");
        }
        true
    }
}
