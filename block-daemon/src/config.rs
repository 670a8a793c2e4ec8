//! The virtio-blk configuration space the device presents (struct virtio_blk_config).

use crate::request::{SECTOR_SHIFT, SECTOR_SIZE};

/// Limits the device advertises (and the parser enforces).
pub const SEG_MAX: u32 = 126;
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
pub const MAX_DISCARD_SEG: u32 = 32;
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
pub const MAX_WRITE_ZEROES_SEG: u32 = 32;
pub const CONFIG_LEN: usize = 60;

pub struct BlkConfig {
    pub capacity_sectors: u64,
    pub num_queues: u16,
    pub logical_block_size: u32,
}

impl BlkConfig {
    pub fn bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &self.capacity_sectors.to_le_bytes());
        // size_max (8) is not offered; seg_max (12).
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &self.logical_block_size.to_le_bytes());
        // Topology (24..32): physical block exponent 0, alignment 0, min/opt I/O = 1 block.
        put(
            26,
            &((self.logical_block_size as u64 / SECTOR_SIZE) as u16).to_le_bytes(),
        );
        // writeback (32): the cache is write-back, FLUSH is honoured.
        put(32, &[1]);
        put(34, &self.num_queues.to_le_bytes());
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        // discard_sector_alignment (44): one logical block.
        put(44, &(self.logical_block_size >> SECTOR_SHIFT).to_le_bytes());
        put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
        put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
        // write_zeroes_may_unmap (56).
        put(56, &[1]);
        c
    }

    /// The slice of the config a GET_CONFIG asks for (zero beyond what exists).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let all = self.bytes();
        (offset as usize..offset as usize + size as usize)
            .map(|i| all.get(i).copied().unwrap_or(0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let c = BlkConfig {
            capacity_sectors: 0x1122,
            num_queues: 4,
            logical_block_size: 512,
        };
        let b = c.bytes();
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 0x1122);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 4);
        assert_eq!(c.read(34, 2), vec![4, 0]);
        assert_eq!(c.read(58, 4), vec![0; 4]);
        assert_eq!(c.read(u32::MAX, 2), vec![0, 0]);
    }
}
