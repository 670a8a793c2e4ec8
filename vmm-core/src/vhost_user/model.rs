//! What one device type adds to the common vhost-user link: its ids, how its queues are
//! laid out, the features it serves itself, and where its configuration space comes from.
//! `blk` and `net` implement it; the link and the frontend call it and know no device type.

/// A device type behind a vhost-user frontend.
/// Most queues any device gets.
pub const MAX_QUEUES: usize = 16;

pub trait DeviceModel: Send + 'static {
    /// The virtio device id (`virtio::ids`).
    fn device_type(&self) -> u16;

    /// The PCI class code, as on QEMU's matching virtio-*-pci device.
    fn pci_class(&self) -> u32;

    /// Features vmm-core serves itself: always offered, and never lost with a backend.
    fn own_features(&self) -> u64 {
        0
    }

    /// How many queues the guest gets from a backend that offers `features` and, if it
    /// negotiated multiqueue, serves `backend_queues` (GET_QUEUE_NUM).
    fn queue_count(&self, features: u64, backend_queues: Option<usize>) -> usize;

    /// The backend's features (what the transport can carry) as offered to the driver of
    /// a device with `num_queues` queues; `own_features` are added to them.
    fn offered_features(&self, backend_features: u64, num_queues: usize) -> u64;

    /// How much of the backend's configuration space (GET_CONFIG) the device shows, for
    /// a device whose configuration is the backend's; None when vmm-core owns it.
    fn backend_config_len(&self) -> Option<u32> {
        None
    }

    /// The configuration space as the driver reads it now. `from_backend` holds the
    /// backend's, when it changed since the last read.
    fn config_space(&mut self, num_queues: usize, from_backend: Option<Vec<u8>>) -> &[u8];

    /// State of its own the guest can see (a NIC's link status), for a migration.
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        match state {
            [] => Ok(()),
            _ => Err("state for a device type that keeps none".into()),
        }
    }
}
