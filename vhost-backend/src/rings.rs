//! A connection's rings, as a device reaches them outside a kick (a host-side event, a
//! timer): each behind its own lock, and a live ring seen for the first time on this
//! connection recovered before the device touches it.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use vm_memory::GuestMemoryMmap;

use crate::dirty_log::DirtyLog;
use crate::vring::Vring;

pub struct Rings {
    rings: Box<[Mutex<Vring>]>,
}

impl Rings {
    /// `count` rings, all logging their writes in `log`.
    pub(crate) fn new(count: usize, max_size: u16, log: &Arc<DirtyLog>) -> Rings {
        Rings {
            rings: (0..count)
                .map(|_| Mutex::new(Vring::new(max_size, log.clone())))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.rings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    /// Ring `q`, locked, for the device (None if there is no such ring).
    pub fn lock(&self, q: usize, mem: &GuestMemoryMmap) -> Option<MutexGuard<'_, Vring>> {
        let mut ring = self.rings.get(q)?.lock();
        ring.recover_once(q, mem);
        Some(ring)
    }

    /// Ring `q`, locked, as the frontend's messages change it (no recovery: the ring may
    /// be half set up).
    pub(crate) fn lock_for_setup(&self, q: usize) -> Option<MutexGuard<'_, Vring>> {
        self.rings.get(q).map(|r| r.lock())
    }

    /// Live rings laid out at the given (descriptor table, available ring, used ring)
    /// addresses, each with a kick eventfd of its own, as a frontend would leave them: for
    /// exercising a device without a connection (its unit tests, fuzzing).
    #[cfg(any(test, feature = "testing"))]
    pub fn live_for_testing(
        layout: &[(u64, u64, u64)],
        size: u16,
        event_idx: bool,
    ) -> std::io::Result<Rings> {
        let rings = Rings::new(layout.len(), size, &Arc::default());
        for (q, &addresses) in layout.iter().enumerate() {
            if let Some(mut ring) = rings.lock_for_setup(q) {
                ring.set_up_for_testing(size, addresses, event_idx)?;
            }
        }
        Ok(rings)
    }
}
