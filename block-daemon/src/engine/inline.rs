//! Requests neither engine puts in flight (GET_ID, DISCARD, WRITE_ZEROES, and FLUSH for
//! the sync engine): performed at once in the queue's thread.

use std::time::Instant;

use virtio::blk::{ID_BYTES, S_IOERR, S_OK};

use super::buffers::copy_to_guest;
use super::interface::{Done, Op};
use crate::disk::Disk;
use crate::formats::FormatError;
use crate::log_limit::LogLimit;
use crate::request::{Kind, Request};
use crate::warn_limited;

/// The outcome of a request performed at once: its status code, the bytes written into
/// the chain, and the errno if the image failed it.
pub struct Outcome {
    pub code: u8,
    pub used_len: u32,
    pub error: Option<i32>,
}

impl Outcome {
    pub fn ok(used_len: u32) -> Outcome {
        Outcome {
            code: S_OK,
            used_len,
            error: None,
        }
    }

    /// `req` (the guest's `head`, started at `started`) finished with this outcome.
    pub fn done(self, head: u16, req: &Request, started: Instant) -> Done {
        Done {
            head,
            status: req.status,
            code: self.code,
            used_len: self.used_len,
            op: Op::of(&req.kind),
            bytes: req.image_bytes(),
            started,
            error: self.error,
        }
    }

    /// The image failed the request with `errno`.
    pub fn failed(errno: i32) -> Outcome {
        Outcome {
            code: S_IOERR,
            used_len: 1,
            error: Some(errno),
        }
    }
}

static FAILED: LogLimit = LogLimit::new();

/// Performs `req`.
pub fn execute_inline(disk: &Disk, req: &Request) -> Outcome {
    let result = match &req.kind {
        Kind::GetId => {
            let n = req.data_len.min(ID_BYTES);
            copy_to_guest(&req.data, &disk.id()[..n]);
            return Outcome::ok(n as u32 + 1);
        }
        Kind::Flush => disk.flush(),
        Kind::Discard(ranges) => ranges.iter().try_for_each(|r| disk.discard(r)),
        Kind::WriteZeroes(ranges) => ranges.iter().try_for_each(|r| disk.write_zeroes(r)),
        Kind::Read | Kind::Write => Err(FormatError::Invalid("not an inline request".into())),
    };
    match result {
        Ok(()) => Outcome::ok(1),
        Err(e) => {
            warn_limited!(FAILED, "{:?} failed: {e}", req.kind);
            Outcome::failed(e.errno())
        }
    }
}
