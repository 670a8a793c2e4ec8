//! The synchronous engine: each request is performed in the queue's thread before the
//! next is taken. A write whose mapping allocated (qcow2) has its data in the file when
//! `submit` returns; what links it (the format's commit) runs in `reap`, for every such
//! write of the batch at once (one metadata write for many), before the guest hears.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use super::inline::execute_inline;
use super::interface::{Done, Engine};
use super::mapped::{outcome, perform, perform_uncommitted};
use crate::disk::Disk;
use crate::formats::MapGuard;
use crate::request::{Kind, Request};

/// A write whose data is in the file and whose commit waits for `reap`.
struct Committing {
    head: u16,
    req: Request,
    started: Instant,
    guard: MapGuard,
    /// The guest memory stays mapped until the request is completed.
    _mem: Arc<GuestMemoryMmap>,
}

pub struct SyncEngine {
    disk: Arc<Disk>,
    done: Vec<Done>,
    committing: Vec<Committing>,
}

impl SyncEngine {
    pub fn new(disk: Arc<Disk>) -> SyncEngine {
        SyncEngine {
            disk,
            done: Vec::new(),
            committing: Vec::new(),
        }
    }
}

impl Engine for SyncEngine {
    fn submit(&mut self, head: u16, req: Request, mem: Arc<GuestMemoryMmap>) {
        let started = req.arrived;
        let outcome = match req.kind {
            Kind::Write => match perform_uncommitted(&self.disk, &req) {
                Ok(Some(guard)) => {
                    return self.committing.push(Committing {
                        head,
                        req,
                        started,
                        guard,
                        _mem: mem,
                    })
                }
                Ok(None) => outcome(&req, Ok(())),
                Err(e) => outcome(&req, Err(e)),
            },
            Kind::Read => outcome(&req, perform(&self.disk, &req)),
            _ => execute_inline(&self.disk, &req),
        };
        self.done.push(outcome.done(head, &req, started));
    }

    fn reap(&mut self, done: &mut Vec<Done>) {
        if !self.committing.is_empty() {
            let (waiting, ends): (Vec<_>, Vec<_>) = std::mem::take(&mut self.committing)
                .into_iter()
                .map(|c| ((c.head, c.req, c.started, c._mem), (c.guard, true)))
                .unzip();
            let results = self.disk.format().finish_writes(ends);
            for ((head, req, started, _mem), r) in waiting.into_iter().zip(results) {
                self.done.push(outcome(&req, r).done(head, &req, started));
            }
        }
        done.append(&mut self.done);
    }

    fn notifier(&self) -> Option<RawFd> {
        None
    }

    fn in_flight(&self) -> usize {
        0
    }
}
