//! virtio-blk (virtio 1.2, 5.2): feature bits, request types and statuses.

use virtio_bindings::virtio_blk as blk;

use crate::mask;

pub const F_SEG_MAX: u64 = mask(blk::VIRTIO_BLK_F_SEG_MAX);
pub const F_RO: u64 = mask(blk::VIRTIO_BLK_F_RO);
pub const F_BLK_SIZE: u64 = mask(blk::VIRTIO_BLK_F_BLK_SIZE);
pub const F_FLUSH: u64 = mask(blk::VIRTIO_BLK_F_FLUSH);
pub const F_TOPOLOGY: u64 = mask(blk::VIRTIO_BLK_F_TOPOLOGY);
pub const F_MQ: u64 = mask(blk::VIRTIO_BLK_F_MQ);
pub const F_DISCARD: u64 = mask(blk::VIRTIO_BLK_F_DISCARD);
pub const F_WRITE_ZEROES: u64 = mask(blk::VIRTIO_BLK_F_WRITE_ZEROES);

pub const T_IN: u32 = blk::VIRTIO_BLK_T_IN;
pub const T_OUT: u32 = blk::VIRTIO_BLK_T_OUT;
pub const T_FLUSH: u32 = blk::VIRTIO_BLK_T_FLUSH;
pub const T_GET_ID: u32 = blk::VIRTIO_BLK_T_GET_ID;
pub const T_DISCARD: u32 = blk::VIRTIO_BLK_T_DISCARD;
pub const T_WRITE_ZEROES: u32 = blk::VIRTIO_BLK_T_WRITE_ZEROES;

pub const S_OK: u8 = blk::VIRTIO_BLK_S_OK as u8;
pub const S_IOERR: u8 = blk::VIRTIO_BLK_S_IOERR as u8;
pub const S_UNSUPP: u8 = blk::VIRTIO_BLK_S_UNSUPP as u8;

/// WRITE_ZEROES segment flag: the device may deallocate instead of writing zeroes.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
/// GET_ID answers with up to this many bytes, not necessarily NUL-terminated.
pub const ID_BYTES: usize = blk::VIRTIO_BLK_ID_BYTES as usize;
