//! The QMP client slots: at most `max` clients at once, over all listeners. When every
//! slot is taken, the client that has waited longest without negotiating capabilities
//! gives its slot to the newcomer, so connections that idle or stop half-way through an
//! object never lock everyone out (those are also let go when their handshake time is up:
//! server.rs). Clients that negotiated keep their slots for as long as they stay; when
//! all of them do, a newcomer is turned away with the reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::outbox::Outbox;
use super::protocol::{self, QmpError};

struct Slot {
    id: u64,
    since: Instant,
    /// Set by the client's session before its negotiation is answered.
    negotiated: Arc<AtomicBool>,
    /// Let go to make room: no longer counted, on its way out.
    leaving: bool,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    next_id: u64,
}

pub struct Slots {
    max: usize,
    state: Mutex<State>,
}

/// What a newcomer gets.
pub enum Admission {
    /// A slot, held until the ticket is dropped.
    Admitted(Ticket),
    /// Every slot holds a client that negotiated: the line to tell the newcomer.
    Full(Vec<u8>),
}

/// A client's slot; dropping it frees the slot.
pub struct Ticket {
    slots: Arc<Slots>,
    id: u64,
    negotiated: Arc<AtomicBool>,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            state: Mutex::new(State::default()),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Clients connected now (those on their way out included).
    pub fn connected(&self) -> usize {
        self.state.lock().slots.len()
    }

    /// A slot for the client behind `outbox`, making room if need be.
    pub fn admit(self: &Arc<Self>, outbox: &Arc<Outbox>) -> Admission {
        let mut st = self.state.lock();
        let taken = st.slots.iter().filter(|s| !s.leaving).count();
        if taken >= self.max {
            let waiting = st
                .slots
                .iter_mut()
                .filter(|s| !s.leaving && !s.negotiated.load(Ordering::SeqCst))
                .min_by_key(|s| s.since);
            let Some(oldest) = waiting else {
                let e = QmpError::generic(format!(
                    "Too many QMP clients: at most {} at once",
                    self.max
                ));
                return Admission::Full(protocol::response(Err(e), None));
            };
            log::warn!("QMP: every client slot is taken; letting go one that never negotiated");
            oldest.leaving = true;
            let e = QmpError::generic(
                "No capabilities negotiation yet, and a new client needs the slot: closing \
                 the connection",
            );
            oldest.outbox.push(protocol::response(Err(e), None));
            // Its writer sends that, then hangs up, which ends its reader.
            oldest.outbox.close();
        }
        let id = st.next_id;
        st.next_id += 1;
        let negotiated = Arc::new(AtomicBool::new(false));
        st.slots.push(Slot {
            id,
            since: Instant::now(),
            negotiated: negotiated.clone(),
            leaving: false,
            outbox: outbox.clone(),
        });
        Admission::Admitted(Ticket {
            slots: self.clone(),
            id,
            negotiated,
        })
    }
}

impl Ticket {
    /// Set once the client negotiated (by its session, before it answers): from then on
    /// it keeps its slot.
    pub fn negotiated(&self) -> Arc<AtomicBool> {
        self.negotiated.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.slots.state.lock().slots.retain(|s| s.id != self.id);
    }
}
