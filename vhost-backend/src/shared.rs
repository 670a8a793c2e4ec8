//! What one connection's request handler and its worker share: the rings, the guest
//! memory the frontend mapped (replaced whole by SET_MEM_TABLE, held back during part of
//! a postcopy migration; a worker holds the map it works on until it is done with it)
//! and the dirty log the rings mark.

use std::sync::Arc;

use parking_lot::RwLock;
use vm_memory::GuestMemoryMmap;

use crate::dirty_log::DirtyLog;
use crate::rings::Rings;

pub(crate) struct Shared {
    pub rings: Rings,
    pub log: Arc<DirtyLog>,
    memory: RwLock<Option<Arc<GuestMemoryMmap>>>,
}

impl Shared {
    pub fn new(queues: usize, max_queue_size: u16) -> Shared {
        let log = Arc::new(DirtyLog::default());
        Shared {
            rings: Rings::new(queues, max_queue_size, &log),
            log,
            memory: RwLock::new(None),
        }
    }

    pub fn memory(&self) -> Option<Arc<GuestMemoryMmap>> {
        self.memory.read().clone()
    }

    pub fn set_memory(&self, mem: Arc<GuestMemoryMmap>) {
        *self.memory.write() = Some(mem);
    }

    /// Nothing reaches guest memory through here until `set_memory` (postcopy holds it
    /// back until its pages can be waited for).
    pub fn take_memory(&self) -> Option<Arc<GuestMemoryMmap>> {
        self.memory.write().take()
    }
}
