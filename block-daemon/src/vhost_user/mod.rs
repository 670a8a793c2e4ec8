//! The daemon's side of vhost-user: its own request handler (the vhost crate's
//! VhostUserBackendReqHandlerMut), because the block daemon needs what
//! vhost-user-backend 0.24 does not have: inflight tracking (INFLIGHT_SHMFD) and a
//! clean start for every new connection. `connection` answers the frontend's messages,
//! `worker` serves the rings, `vring` and `inflight` hold their state.

pub mod connection;
pub mod inflight;
pub mod vring;
pub mod worker;

use std::sync::{Arc, Mutex, RwLock};

use vm_memory::GuestMemoryMmap;

use vring::Vring;

/// What the connection's request handler and its worker share.
pub struct Shared {
    pub vrings: Vec<Mutex<Vring>>,
    pub mem: RwLock<Option<Arc<GuestMemoryMmap>>>,
}

impl Shared {
    pub fn new(num_queues: usize, max_size: u16) -> Shared {
        Shared {
            vrings: (0..num_queues)
                .map(|_| Mutex::new(Vring::new(max_size)))
                .collect(),
            mem: RwLock::new(None),
        }
    }

    pub fn memory(&self) -> Option<Arc<GuestMemoryMmap>> {
        self.mem
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .cloned()
    }
}

pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
