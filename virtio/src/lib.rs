//! virtio: the vocabulary every Flotilla process that speaks virtio shares. Feature bits,
//! device ids and request codes come from `virtio-bindings` (as masks, so a feature set
//! is one `|` expression), and one descriptor-chain reader serves every device: the
//! chains a guest offers are read, and checked, in one place.

pub mod blk;
pub mod chain;
pub mod features;
pub mod net;

pub use chain::{pop_chain, read_chain, ChainError, Desc, MAX_CHAIN};

/// The feature mask of bit number `bit` (virtio-bindings gives bit numbers).
pub const fn mask(bit: u32) -> u64 {
    1 << bit
}

/// Device ids (virtio 1.2, 5).
pub mod ids {
    use virtio_bindings::virtio_ids as ids;

    pub const NET: u16 = ids::VIRTIO_ID_NET as u16;
    pub const BLOCK: u16 = ids::VIRTIO_ID_BLOCK as u16;
    pub const BALLOON: u16 = ids::VIRTIO_ID_BALLOON as u16;
}

/// The device status register's bits (virtio 1.2, 2.1).
pub mod status {
    use virtio_bindings::virtio_config as config;

    pub const ACKNOWLEDGE: u8 = config::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
    pub const DRIVER: u8 = config::VIRTIO_CONFIG_S_DRIVER as u8;
    pub const DRIVER_OK: u8 = config::VIRTIO_CONFIG_S_DRIVER_OK as u8;
    pub const FEATURES_OK: u8 = config::VIRTIO_CONFIG_S_FEATURES_OK as u8;
    pub const NEEDS_RESET: u8 = config::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
    pub const FAILED: u8 = config::VIRTIO_CONFIG_S_FAILED as u8;
}
