//! virtio-net (virtio 1.2, 5.1): feature bits and the link status bit.

use virtio_bindings::virtio_net as net;

use crate::mask;

pub const F_CSUM: u64 = mask(net::VIRTIO_NET_F_CSUM);
pub const F_GUEST_CSUM: u64 = mask(net::VIRTIO_NET_F_GUEST_CSUM);
pub const F_MAC: u64 = mask(net::VIRTIO_NET_F_MAC);
pub const F_GUEST_TSO4: u64 = mask(net::VIRTIO_NET_F_GUEST_TSO4);
pub const F_GUEST_TSO6: u64 = mask(net::VIRTIO_NET_F_GUEST_TSO6);
pub const F_GUEST_ECN: u64 = mask(net::VIRTIO_NET_F_GUEST_ECN);
pub const F_GUEST_UFO: u64 = mask(net::VIRTIO_NET_F_GUEST_UFO);
pub const F_HOST_TSO4: u64 = mask(net::VIRTIO_NET_F_HOST_TSO4);
pub const F_HOST_TSO6: u64 = mask(net::VIRTIO_NET_F_HOST_TSO6);
pub const F_HOST_ECN: u64 = mask(net::VIRTIO_NET_F_HOST_ECN);
pub const F_HOST_UFO: u64 = mask(net::VIRTIO_NET_F_HOST_UFO);
pub const F_MRG_RXBUF: u64 = mask(net::VIRTIO_NET_F_MRG_RXBUF);
pub const F_STATUS: u64 = mask(net::VIRTIO_NET_F_STATUS);
pub const F_CTRL_VQ: u64 = mask(net::VIRTIO_NET_F_CTRL_VQ);
pub const F_CTRL_RX: u64 = mask(net::VIRTIO_NET_F_CTRL_RX);
pub const F_CTRL_VLAN: u64 = mask(net::VIRTIO_NET_F_CTRL_VLAN);
pub const F_CTRL_RX_EXTRA: u64 = mask(net::VIRTIO_NET_F_CTRL_RX_EXTRA);
pub const F_MQ: u64 = mask(net::VIRTIO_NET_F_MQ);
pub const F_CTRL_MAC_ADDR: u64 = mask(net::VIRTIO_NET_F_CTRL_MAC_ADDR);

/// The status field's link-up bit.
pub const S_LINK_UP: u16 = net::VIRTIO_NET_S_LINK_UP as u16;
