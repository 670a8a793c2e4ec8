//! Feature bits every device type shares (virtio 1.2, 6), as masks.

use virtio_bindings::{virtio_config as config, virtio_ring as ring};

use crate::mask;

pub const VERSION_1: u64 = mask(config::VIRTIO_F_VERSION_1);
pub const ACCESS_PLATFORM: u64 = mask(config::VIRTIO_F_ACCESS_PLATFORM);
pub const RING_PACKED: u64 = mask(config::VIRTIO_F_RING_PACKED);
pub const NOTIFICATION_DATA: u64 = mask(config::VIRTIO_F_NOTIFICATION_DATA);
pub const INDIRECT_DESC: u64 = mask(ring::VIRTIO_RING_F_INDIRECT_DESC);
pub const EVENT_IDX: u64 = mask(ring::VIRTIO_RING_F_EVENT_IDX);
