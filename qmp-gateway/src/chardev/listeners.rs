//! The gateway's QMP listeners (--qmp, --qmp-tcp) as the chardevs QEMU makes of its
//! -qmp options: labelled compat_monitor0, compat_monitor1... in order, listed by
//! query-chardev with QEMU's filename (connected while a client is), always "in use" (a
//! monitor is their frontend), and a target of add_client. Unlike QEMU's, one listener
//! serves many clients at once, so add_client to one always makes another client.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::stream::Stream;

/// Who a monitor chardev's connections go to; the Presence (a QMP listener's) is held
/// for as long as the client stays.
pub type Handoff = Arc<dyn Fn(Stream, Option<Presence>) + Send + Sync>;

/// QEMU's label for the chardev of its `n`th -qmp (vl.c's monitor_parse).
pub fn compat_label(n: usize) -> String {
    format!("compat_monitor{n}")
}

pub struct QmpListener {
    pub label: String,
    /// Its filename with no client ("disconnected:unix:PATH,server=on").
    disconnected: String,
    /// The filename each connected client gives it, by arrival.
    clients: Mutex<BTreeMap<u64, String>>,
    next: AtomicU64,
    /// Where add_client's connections go (the QMP server).
    handoff: Handoff,
}

/// A client of a listener, counted while this is held.
pub struct Presence {
    listener: Arc<QmpListener>,
    id: u64,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.listener.clients.lock().remove(&self.id);
    }
}

impl QmpListener {
    pub(super) fn new(label: String, disconnected: String, handoff: Handoff) -> QmpListener {
        QmpListener {
            label,
            disconnected,
            clients: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            handoff,
        }
    }

    /// A client arrived on `stream`: counted until the Presence is dropped.
    pub fn arrive(self: &Arc<Self>, stream: &Stream) -> Presence {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        // A Unix listener's own path is in its disconnected filename.
        let bound = self
            .disconnected
            .strip_prefix("disconnected:unix:")
            .and_then(|rest| rest.strip_suffix(",server=on"))
            .map(Path::new);
        let filename = stream
            .filename(true, bound)
            .unwrap_or_else(|| self.disconnected.clone());
        self.clients.lock().insert(id, filename);
        Presence {
            listener: self.clone(),
            id,
        }
    }

    /// What query-chardev shows: the longest-connected client's, or disconnected.
    pub(super) fn filename(&self) -> String {
        let clients = self.clients.lock();
        match clients.values().next() {
            Some(f) => f.clone(),
            None => self.disconnected.clone(),
        }
    }

    /// add_client: `stream` becomes one more client.
    pub(super) fn add_client(self: &Arc<Self>, stream: Stream) {
        let presence = self.arrive(&stream);
        (self.handoff)(stream, Some(presence));
    }
}
