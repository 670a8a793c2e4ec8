//! I/O engines: how parsed requests reach the image. `uring` keeps many requests in flight
//! per queue through io_uring; `sync` performs each request in the queue's thread (one at
//! a time), for kernels or sandboxes without io_uring. Both complete requests in the
//! queue's own thread, which owns that queue's used ring.

pub mod buffers;
#[cfg(test)]
mod four_k_tests;
pub mod inline;
pub mod interface;
pub mod mapped;
#[cfg(test)]
mod routing_tests;
pub mod sync;
pub mod transfer;
pub mod uring;

pub use interface::{Done, Engine, Op};

use std::sync::Arc;

use crate::disk::Disk;

/// Which engine serves a node's queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Uring,
    Sync,
}

/// One engine per queue. io_uring may be missing (old kernel, seccomp): the caller
/// decides whether to fall back to `Sync`.
pub fn per_queue(
    kind: EngineKind,
    disk: &Arc<Disk>,
    queues: usize,
    depth: u32,
) -> std::io::Result<Vec<Box<dyn Engine>>> {
    (0..queues)
        .map(|_| -> std::io::Result<Box<dyn Engine>> {
            Ok(match kind {
                EngineKind::Uring => Box::new(uring::UringEngine::new(disk.clone(), depth)?),
                EngineKind::Sync => Box::new(sync::SyncEngine::new(disk.clone())),
            })
        })
        .collect()
}
