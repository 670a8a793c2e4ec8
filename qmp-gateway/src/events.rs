//! Event fan-out: every client that completed capabilities negotiation gets every event,
//! through its own bounded outbox, so a stuck client only loses itself.

use std::sync::{Arc, Mutex, Weak};

use serde_json::Value;

use crate::outbox::Outbox;
use crate::qmp::protocol;

/// The events this gateway emits (query-events lists them).
pub const EVENTS: &[&str] = &[
    "STOP",
    "RESUME",
    "RESET",
    "SHUTDOWN",
    "POWERDOWN",
    "BLOCK_WRITE_THRESHOLD",
    crate::block::EXITED,
    crate::block::RESTARTED,
    "NIC_RX_FILTER_CHANGED",
    crate::net::EXITED,
    crate::net::RESTARTED,
    crate::sandbox::VIOLATION,
];

#[derive(Default)]
pub struct EventBus {
    clients: Mutex<Vec<Weak<Outbox>>>,
}

impl EventBus {
    /// Queues `first` (the capabilities reply) for `outbox`, then every event from now
    /// on: both under the bus's lock, so no event is lost between the two, and none goes
    /// before the reply.
    pub fn subscribe(&self, outbox: &Arc<Outbox>, first: Vec<u8>) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        outbox.push(first);
        clients.retain(|c| c.strong_count() > 0);
        clients.push(Arc::downgrade(outbox));
    }

    pub fn emit(&self, name: &str, data: Option<Value>) {
        debug_assert!(EVENTS.contains(&name), "unlisted event {name}");
        let line = protocol::event(name, data);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|c| match c.upgrade() {
            Some(outbox) => outbox.push(line.clone()),
            None => false,
        });
    }

    /// Lets every subscriber's writer flush what it has, then close.
    pub fn close_all(&self) -> Vec<Arc<Outbox>> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .iter()
            .filter_map(Weak::upgrade)
            .inspect(|o| o.close())
            .collect()
    }
}
