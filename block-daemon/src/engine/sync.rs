//! The synchronous engine: each request is performed in the queue's thread before the
//! next is taken.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use super::inline::execute_inline;
use super::interface::{Done, Engine};
use super::mapped::{outcome, perform};
use crate::disk::Disk;
use crate::request::{Kind, Request};

pub struct SyncEngine {
    disk: Arc<Disk>,
    done: Vec<Done>,
}

impl SyncEngine {
    pub fn new(disk: Arc<Disk>) -> SyncEngine {
        SyncEngine {
            disk,
            done: Vec::new(),
        }
    }
}

impl Engine for SyncEngine {
    fn submit(&mut self, head: u16, req: Request, _mem: Arc<GuestMemoryMmap>) {
        let started = Instant::now();
        let outcome = match req.kind {
            Kind::Read | Kind::Write => outcome(&req, perform(&self.disk, &req)),
            _ => execute_inline(&self.disk, &req),
        };
        self.done.push(outcome.done(head, &req, started));
    }

    fn reap(&mut self, done: &mut Vec<Done>) {
        done.append(&mut self.done);
    }

    fn notifier(&self) -> Option<RawFd> {
        None
    }

    fn in_flight(&self) -> usize {
        0
    }
}
