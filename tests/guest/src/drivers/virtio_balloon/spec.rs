//! The virtio-balloon numbers this driver uses (virtio 1.2, 5.5): PCI IDs, the queues, the
//! device configuration layout and the page size PFNs count in. Written out here on purpose:
//! the guest checks our device against the specification, so it shares none of its code.

use crate::drivers::virtio::discovery::DeviceType;

/// virtio-balloon on PCI: device 0x1045, or the transitional 0x1002 with subsystem 5.
pub const BALLOON: DeviceType = DeviceType {
    driver: "virtio-balloon",
    modern: 0x1045,
    transitional: 0x1002,
    subsystem: 5,
};

// Virtqueues (5.5.2): without VIRTIO_BALLOON_F_STATS_VQ and the free-page features only
// these two exist.
pub const INFLATEQ: u16 = 0;
pub const DEFLATEQ: u16 = 1;

// Device configuration (5.5.4): both little-endian u32, whatever the feature bits.
pub const CFG_NUM_PAGES: u64 = 0x00;
pub const CFG_ACTUAL: u64 = 0x04;

/// PFNs count 4 KiB pages (VIRTIO_BALLOON_PFN_SHIFT = 12), whatever the guest's page size.
pub const PAGE: u64 = 4096;
