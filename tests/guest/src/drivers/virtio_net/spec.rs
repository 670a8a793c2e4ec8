//! The virtio-net numbers this driver uses (virtio 1.x, 5.1): PCI IDs, feature bits, the
//! device configuration layout, the `virtio_net_hdr` and the control queue's classes,
//! commands and acks. Written out here on purpose: the guest checks our devices against the
//! specification, so it shares none of their code or constants.

use crate::drivers::virtio::discovery::DeviceType;

/// virtio-net on PCI: device 0x1041, or the transitional 0x1000 with subsystem 1.
pub const NET: DeviceType = DeviceType {
    driver: "virtio-net",
    modern: 0x1041,
    transitional: 0x1000,
    subsystem: 1,
};

// Feature bits (virtio 1.x, 5.1.3).
pub const F_MAC: u64 = 1 << 5;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_CTRL_RX: u64 = 1 << 18;
pub const F_CTRL_VLAN: u64 = 1 << 19;
pub const F_CTRL_RX_EXTRA: u64 = 1 << 20;
pub const F_MQ: u64 = 1 << 22;
pub const F_CTRL_MAC_ADDR: u64 = 1 << 23;

// Device configuration (virtio 1.x, 5.1.4).
pub const CFG_MAC: u64 = 0;
pub const CFG_STATUS: u64 = 6;
pub const CFG_MAX_PAIRS: u64 = 8;
/// VIRTIO_NET_S_LINK_UP in the status field.
pub const STATUS_LINK_UP: u16 = 1;
/// max_virtqueue_pairs may be 1 to 0x8000.
pub const MAX_PAIRS_LIMIT: u16 = 0x8000;

/// `struct virtio_net_hdr` with VERSION_1 (num_buffers included).
pub const HEADER: usize = 12;
/// Offset of num_buffers in the header.
pub const HEADER_NUM_BUFFERS: u64 = 10;

// Control queue (virtio 1.x, 5.1.6.5).
pub const CTRL_CLASS_RX: u8 = 0;
pub const CTRL_RX_PROMISC: u8 = 0;
pub const CTRL_RX_ALLMULTI: u8 = 1;
/// The next four need VIRTIO_NET_F_CTRL_RX_EXTRA.
pub const CTRL_RX_ALLUNI: u8 = 2;
pub const CTRL_RX_NOMULTI: u8 = 3;
pub const CTRL_RX_NOUNI: u8 = 4;
pub const CTRL_RX_NOBCAST: u8 = 5;
pub const CTRL_CLASS_MAC: u8 = 1;
pub const CTRL_MAC_TABLE_SET: u8 = 0;
pub const CTRL_MAC_ADDR_SET: u8 = 1;
pub const CTRL_CLASS_VLAN: u8 = 2;
pub const CTRL_VLAN_ADD: u8 = 0;
pub const CTRL_CLASS_MQ: u8 = 4;
pub const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
/// VIRTIO_NET_OK; VIRTIO_NET_ERR is 1.
pub const CTRL_OK: u8 = 0;
