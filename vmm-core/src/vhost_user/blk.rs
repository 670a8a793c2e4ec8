//! virtio-blk behind a vhost-user backend: the backend serves the configuration space
//! (capacity, block sizes, ... read with GET_CONFIG), and the queues are as many as the
//! backend serves, up to what the disk was given.

use virtio::blk::F_MQ;
use virtio::ids;

use super::model::{DeviceModel, MAX_QUEUES};

/// PCI class of QEMU's virtio-blk-pci: mass storage, SCSI.
const PCI_CLASS_STORAGE: u32 = 0x010000;
/// `struct virtio_blk_config` up to the fields a driver reads.
const CONFIG_LEN: u32 = 60;
/// Where `num_queues` sits in it.
const CONFIG_NUM_QUEUES: usize = 34;

pub struct Blk {
    /// Most queues the guest gets (the backend may serve fewer).
    max_queues: usize,
    /// The backend's configuration space as last read.
    config: Vec<u8>,
}

impl Blk {
    pub fn new(max_queues: usize) -> Blk {
        Blk {
            max_queues,
            config: vec![0; CONFIG_LEN as usize],
        }
    }
}

impl DeviceModel for Blk {
    fn device_type(&self) -> u16 {
        ids::BLOCK
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS_STORAGE
    }

    fn queue_count(&self, features: u64, backend_queues: Option<usize>) -> usize {
        let n = match backend_queues {
            Some(n) if features & F_MQ != 0 => n,
            _ => 1,
        };
        n.clamp(1, self.max_queues.clamp(1, MAX_QUEUES))
    }

    fn offered_features(&self, backend_features: u64, num_queues: usize) -> u64 {
        if num_queues == 1 {
            backend_features & !F_MQ
        } else {
            backend_features
        }
    }

    fn backend_config_len(&self) -> Option<u32> {
        Some(CONFIG_LEN)
    }

    fn config_space(&mut self, num_queues: usize, from_backend: Option<Vec<u8>>) -> &[u8] {
        if let Some(bytes) = from_backend {
            self.config = bytes;
            // The device reports the queue count the transport exposes.
            if let Some(field) = self
                .config
                .get_mut(CONFIG_NUM_QUEUES..CONFIG_NUM_QUEUES + 2)
            {
                field.copy_from_slice(&(num_queues as u16).to_le_bytes());
            }
        }
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_follow_the_backend_up_to_the_disk_limit() {
        let blk = Blk::new(4);
        assert_eq!(blk.queue_count(F_MQ, Some(8)), 4);
        assert_eq!(blk.queue_count(F_MQ, Some(2)), 2);
        assert_eq!(blk.queue_count(0, Some(8)), 1, "no VIRTIO_BLK_F_MQ");
        assert_eq!(blk.queue_count(F_MQ, None), 1, "no protocol MQ");
        assert_eq!(Blk::new(64).queue_count(F_MQ, Some(64)), MAX_QUEUES);
    }

    #[test]
    fn one_queue_hides_multiqueue() {
        let blk = Blk::new(4);
        assert_eq!(blk.offered_features(F_MQ | 1, 1), 1);
        assert_eq!(blk.offered_features(F_MQ | 1, 2), F_MQ | 1);
    }

    #[test]
    fn config_is_the_backends_with_the_transports_queue_count() {
        let mut blk = Blk::new(4);
        assert_eq!(blk.config_space(2, None), &[0; CONFIG_LEN as usize][..]);
        let mut from_backend = vec![0xaa; CONFIG_LEN as usize];
        from_backend[CONFIG_NUM_QUEUES] = 8;
        let config = blk.config_space(2, Some(from_backend)).to_vec();
        assert_eq!(config[0], 0xaa);
        assert_eq!(&config[CONFIG_NUM_QUEUES..CONFIG_NUM_QUEUES + 2], &[2, 0]);
        assert_eq!(
            blk.config_space(2, None),
            &config[..],
            "kept until it changes"
        );
    }
}
