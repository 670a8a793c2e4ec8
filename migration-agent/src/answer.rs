//! The destination's side of the return path (two-way channels): its verdicts are
//! written by the receiving thread, its outcome by the gateway's call, and postcopy's
//! page requests by the faults thread, one message at a time.

use std::fs::File;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::stream;

/// Where the destination's final answer goes (two-way channels).
#[derive(Clone, Default)]
pub struct Answer(pub(crate) Arc<Mutex<Option<File>>>);

impl Answer {
    pub fn set(&self, f: File) {
        *self.0.lock() = Some(f);
    }

    pub fn send(&self, outcome: Result<(), &str>) -> std::io::Result<()> {
        match self.0.lock().as_mut() {
            Some(f) => stream::write_outcome(f, outcome),
            None => Ok(()),
        }
    }

    /// Postcopy: pages the destination waits for.
    pub fn request(&self, first: u64, count: u32) -> std::io::Result<()> {
        match self.0.lock().as_mut() {
            Some(f) => stream::write_request(f, first, count),
            None => Err(std::io::Error::other("no return path")),
        }
    }

    /// Postcopy: every page is placed.
    pub fn complete(&self) -> std::io::Result<()> {
        match self.0.lock().as_mut() {
            Some(f) => stream::write_complete(f),
            None => Err(std::io::Error::other("no return path")),
        }
    }
}
