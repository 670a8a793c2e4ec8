//! Requests neither engine puts in flight (GET_ID, DISCARD, WRITE_ZEROES, and FLUSH for
//! the sync engine): performed at once in the queue's thread.

use virtio::blk::{ID_BYTES, S_IOERR, S_OK};

use super::buffers::copy_to_guest;
use crate::disk::Disk;
use crate::request::{Kind, Request};

/// Performs `req`; returns the status code and the bytes written into the chain.
pub fn execute_inline(disk: &Disk, req: &Request) -> (u8, u32) {
    let result = match &req.kind {
        Kind::GetId => {
            let n = req.data_len.min(ID_BYTES);
            copy_to_guest(&req.data, &disk.id()[..n]);
            return (S_OK, n as u32 + 1);
        }
        Kind::Flush => disk.flush(),
        Kind::Discard(ranges) => ranges.iter().try_for_each(|r| disk.discard(r)),
        Kind::WriteZeroes(ranges) => ranges.iter().try_for_each(|r| disk.write_zeroes(r)),
        Kind::Read | Kind::Write => Err(std::io::Error::other("not an inline request")),
    };
    match result {
        Ok(()) => (S_OK, 1),
        Err(e) => {
            log::warn!("{:?} failed: {e}", req.kind);
            (S_IOERR, 1)
        }
    }
}
