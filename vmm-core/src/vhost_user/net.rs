//! virtio-net behind a vhost-user backend: vmm-core owns the configuration space (the MAC
//! from the command line, the link status QMP set_link changes, the queue pairs), and the
//! queues are rx/tx pairs and, if the backend offers it, the control queue last, all
//! served by the backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio::ids;
use virtio::net::{F_CTRL_VQ, F_MAC, F_MQ, F_STATUS, S_LINK_UP};

use super::backend_requests::ConfigChangeHandle;
use super::model::{DeviceModel, MAX_QUEUES};

/// PCI class of QEMU's virtio-net-pci: network, Ethernet.
const PCI_CLASS_NETWORK: u32 = 0x020000;
/// `struct virtio_net_config`: mac, status, max_virtqueue_pairs.
const CONFIG_LEN: usize = 10;

pub struct Net {
    mac: [u8; 6],
    /// Queue pairs asked for (the backend may serve fewer).
    max_pairs: u16,
    link_up: Arc<AtomicBool>,
    config: [u8; CONFIG_LEN],
}

impl Net {
    /// A NIC with this MAC, its link up.
    pub fn new(mac: [u8; 6], max_pairs: u16) -> Net {
        Net {
            mac,
            max_pairs,
            link_up: Arc::new(AtomicBool::new(true)),
            config: [0; CONFIG_LEN],
        }
    }

    /// The link status, for a `LinkHandle`.
    pub fn link_up(&self) -> Arc<AtomicBool> {
        self.link_up.clone()
    }
}

impl DeviceModel for Net {
    fn device_type(&self) -> u16 {
        ids::NET
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS_NETWORK
    }

    fn own_features(&self) -> u64 {
        F_MAC | F_STATUS
    }

    fn queue_count(&self, features: u64, backend_queues: Option<usize>) -> usize {
        let ctrl = usize::from(features & F_CTRL_VQ != 0);
        let offered = match backend_queues {
            Some(n) if features & F_MQ != 0 => n.saturating_sub(ctrl) / 2,
            _ => 1,
        };
        let pairs = offered.clamp(
            1,
            usize::from(self.max_pairs).clamp(1, (MAX_QUEUES - 1) / 2),
        );
        2 * pairs + ctrl
    }

    fn offered_features(&self, backend_features: u64, num_queues: usize) -> u64 {
        if pairs(num_queues) <= 1 {
            backend_features & !F_MQ
        } else {
            backend_features
        }
    }

    fn config_space(&mut self, num_queues: usize, _from_backend: Option<Vec<u8>>) -> &[u8] {
        let status = if self.link_up.load(Ordering::Acquire) {
            S_LINK_UP
        } else {
            0
        };
        self.config[0..6].copy_from_slice(&self.mac);
        self.config[6..8].copy_from_slice(&status.to_le_bytes());
        self.config[8..10].copy_from_slice(&pairs(num_queues).max(1).to_le_bytes());
        &self.config
    }

    fn save_state(&self) -> Vec<u8> {
        vec![u8::from(self.link_up.load(Ordering::Acquire))]
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        match state {
            [up @ (0 | 1)] => {
                self.link_up.store(*up == 1, Ordering::Release);
                Ok(())
            }
            _ => Err("virtio-net: malformed state".into()),
        }
    }
}

/// Queue pairs in `num_queues` (a control queue, if any, is the odd one out).
fn pairs(num_queues: usize) -> u16 {
    (num_queues / 2) as u16
}

/// Sets a NIC's link status (QMP set_link): the guest sees a configuration change.
#[derive(Clone)]
pub struct LinkHandle {
    up: Arc<AtomicBool>,
    config: ConfigChangeHandle,
}

impl LinkHandle {
    pub fn new(up: Arc<AtomicBool>, config: ConfigChangeHandle) -> LinkHandle {
        LinkHandle { up, config }
    }

    pub fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.config.raise();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_pairs_then_the_control_queue() {
        let net = Net::new([0; 6], 4);
        assert_eq!(net.queue_count(F_MQ | F_CTRL_VQ, Some(17)), 9);
        assert_eq!(net.queue_count(F_MQ, Some(4)), 4);
        assert_eq!(
            net.queue_count(F_CTRL_VQ, Some(17)),
            3,
            "no VIRTIO_NET_F_MQ"
        );
        assert_eq!(net.queue_count(0, None), 2);
        let many = Net::new([0; 6], 100);
        assert_eq!(many.queue_count(F_MQ, Some(64)), 2 * ((MAX_QUEUES - 1) / 2));
    }

    #[test]
    fn mac_and_status_are_always_offered() {
        let net = Net::new([0; 6], 4);
        assert_eq!(net.own_features(), F_MAC | F_STATUS);
        assert_eq!(net.offered_features(F_MQ, 2), 0, "one pair hides MQ");
        assert_eq!(net.offered_features(F_MQ, 5), F_MQ);
    }

    #[test]
    fn config_carries_mac_link_and_pairs() {
        let mut net = Net::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], 4);
        let up = net.link_up();
        let config = net.config_space(5, None).to_vec();
        assert_eq!(&config[0..6], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(u16::from_le_bytes([config[6], config[7]]), S_LINK_UP);
        assert_eq!(u16::from_le_bytes([config[8], config[9]]), 2);
        up.store(false, Ordering::Release);
        assert_eq!(&net.config_space(5, None)[6..8], &[0, 0]);
    }
}
