//! Device drivers: PCI (configuration space, enumeration, BARs, MSI-X), the virtio 1.x PCI
//! transport and split virtqueues, and the virtio-blk, virtio-net and virtio-balloon devices
//! on top of them.
//! Set-up runs in ring 0; the request and frame paths are made to run in ring 3.

pub mod pci;
pub mod virtio;
pub mod virtio_balloon;
pub mod virtio_blk;
pub mod virtio_net;
