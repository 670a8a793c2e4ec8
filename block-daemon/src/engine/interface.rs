//! What the device and every engine agree on: the Engine trait, a finished request
//! (Done) and what kind of operation it was (Op, for statistics).

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use crate::request::{Kind, Request};

/// What kind of operation a completion was (for statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    Other,
}

impl Op {
    pub fn of(kind: &Kind) -> Op {
        match kind {
            Kind::Read => Op::Read,
            Kind::Write => Op::Write,
            Kind::Flush => Op::Flush,
            Kind::Discard(_) => Op::Discard,
            Kind::WriteZeroes(_) => Op::WriteZeroes,
            Kind::GetId => Op::Other,
        }
    }
}

/// A finished request, ready for the used ring.
#[derive(Debug)]
pub struct Done {
    pub head: u16,
    pub status: *mut u8,
    pub code: u8,
    /// Bytes the device wrote into the chain (data for reads, plus the status byte).
    pub used_len: u32,
    pub op: Op,
    pub bytes: u64,
    pub started: Instant,
    /// The errno of the image's failure, if it failed the request (the node's error
    /// policy decides what the guest gets).
    pub error: Option<i32>,
}

/// The errno an I/O error carries (EIO when it has none: a short transfer, say).
pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

// SAFETY: `status` points into the shared guest RAM mapping (see request::Request).
unsafe impl Send for Done {}

pub trait Engine: Send {
    /// Starts the request (it may also finish at once); the memory map it points into is
    /// kept alive until it completes.
    fn submit(&mut self, head: u16, req: Request, mem: Arc<GuestMemoryMmap>);
    /// Hands what was submitted to the kernel (at the end of each batch of kicks; an
    /// engine may hand some over earlier, as io_uring does in groups).
    fn flush(&mut self) {}
    /// Moves finished requests into `done`.
    fn reap(&mut self, done: &mut Vec<Done>);
    /// Waits for everything in flight and moves it into `done`.
    fn drain(&mut self, done: &mut Vec<Done>) {
        self.reap(done);
    }
    /// Whether `reap` would find finished requests now (cheap: a poll loop calls it).
    fn has_completions(&mut self) -> bool {
        false
    }
    /// Becomes readable when `reap` has work; None if everything completes in `submit`.
    fn notifier(&self) -> Option<RawFd>;
    fn in_flight(&self) -> usize;
}
