//! The virtio-blk numbers this driver uses (virtio 1.x, 5.2): PCI IDs, feature bits, the
//! device configuration layout, request types and status values. Written out here on purpose:
//! the guest checks our devices against the specification, so it shares none of their code
//! or constants.

use crate::drivers::virtio::discovery::DeviceType;

/// virtio-blk on PCI: device 0x1042, or the transitional 0x1001 with subsystem 2.
pub const BLK: DeviceType = DeviceType {
    driver: "virtio-blk",
    modern: 0x1042,
    transitional: 0x1001,
    subsystem: 2,
};

/// The unit of capacity and request sectors.
pub const SECTOR: u64 = 512;

// Feature bits (virtio 1.x, 5.2.3).
pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;

// Device configuration (virtio 1.x, 5.2.4).
pub const CFG_CAPACITY: u64 = 0x00;
pub const CFG_SIZE_MAX: u64 = 0x08;
pub const CFG_SEG_MAX: u64 = 0x0c;
pub const CFG_BLK_SIZE: u64 = 0x14;
pub const CFG_NUM_QUEUES: u64 = 0x22;

// Request types and status values (virtio 1.x, 5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
/// Bytes of the serial GET_ID returns.
pub const ID_BYTES: u32 = 20;
