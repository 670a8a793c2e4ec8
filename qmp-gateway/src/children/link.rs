//! The gateway's end of a child's control channel (vmm-core, a block or net daemon):
//! calls matched to their answers by id, with a timeout, and the child's events handed
//! on by a reader thread until the child hangs up.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use ipc::{
    Call, Connection, IpcError, Message, RemoteError, Upcall, VmmEvent, VmmReply, VmmRequest,
};
use parking_lot::{Mutex, RwLock};
use serde::{de::DeserializeOwned, Serialize};

/// How long a request may wait for a child before the client gets an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to a child got no answer, or the child's own error answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("sending to {child}: {error}")]
    Send { child: String, error: IpcError },
    #[error("{child} did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { child: String },
    #[error("{0} exited before answering")]
    Exited(String),
    /// The child answered with an error (its QMP class and text).
    #[error("{}", .0.desc)]
    Remote(RemoteError),
}

/// What a child speaks on its control channel: the calls it takes, its answers, and the
/// events it reports.
pub trait Protocol: 'static {
    type Call: Message;
    type Answer: Message + std::fmt::Debug + Send + 'static;
    type Event: Serialize + DeserializeOwned + 'static;
}

/// vmm-core's control channel.
pub struct VmmProtocol;

impl Protocol for VmmProtocol {
    type Call = VmmRequest;
    type Answer = VmmReply;
    type Event = VmmEvent;
}

pub type VmmLink = Link<VmmProtocol>;

/// An answer and the fds it came with (memory a daemon hands over).
type Waiter<T> = SyncSender<Result<(T, Vec<OwnedFd>), RemoteError>>;

/// The gateway's end of a child's control channel. Its connection may be replaced by
/// another child's of the same kind (vmm-core's live upgrade): calls go to the current
/// one, answers from either find their callers by id, and only the current one's end
/// closes the link.
pub struct Link<P: Protocol> {
    /// The child's name in errors ("vmm-core", "block-daemon of d0").
    name: String,
    conn: RwLock<Arc<Connection>>,
    /// Bumped by each `replace`; a reader of an older connection ends quietly.
    generation: AtomicU64,
    pending: Mutex<HashMap<u64, Waiter<P::Answer>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl<P: Protocol> Link<P> {
    pub fn new(name: impl Into<String>, conn: Connection) -> Arc<Self> {
        Arc::new(Link {
            name: name.into(),
            conn: RwLock::new(Arc::new(conn)),
            generation: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        })
    }

    /// The connection calls go to now, and its generation.
    pub fn current(&self) -> (Arc<Connection>, u64) {
        let conn = self.conn.read().clone();
        (conn, self.generation.load(Ordering::SeqCst))
    }

    /// Calls go to `conn` from now on, read by a reader of its own (the previous
    /// connection's reader goes on answering its callers, and ends quietly). Returns the
    /// previous connection and generation, to go back to with `restore`.
    pub fn replace(
        self: &Arc<Self>,
        conn: Connection,
        on_event: impl Fn(P::Event) + Send + 'static,
        on_closed: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<(Arc<Connection>, u64)> {
        let previous = {
            let mut current = self.conn.write();
            let previous = std::mem::replace(&mut *current, Arc::new(conn));
            (previous, self.generation.fetch_add(1, Ordering::SeqCst))
        };
        self.start_reader(on_event, on_closed)?;
        Ok(previous)
    }

    /// Back to a connection `replace` returned (whose reader still runs).
    pub fn restore(&self, (conn, generation): (Arc<Connection>, u64)) {
        let mut current = self.conn.write();
        *current = conn;
        self.generation.store(generation, Ordering::SeqCst);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the child's answers and events until it hangs up.
    pub fn start_reader(
        self: &Arc<Self>,
        on_event: impl Fn(P::Event) + Send + 'static,
        on_closed: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<()> {
        let link = self.clone();
        let (conn, generation) = self.current();
        std::thread::Builder::new()
            .name(format!("link {}", self.name))
            .spawn(move || {
                let why = loop {
                    match conn.recv::<Upcall<P::Answer, P::Event>>() {
                        Ok(Some(r)) => match r.msg {
                            Upcall::Response { id, result } => {
                                let waiter = link.pending.lock().remove(&id);
                                match waiter {
                                    Some(w) => {
                                        let fds = r.fds;
                                        let _ = w.send(result.map(|answer| (answer, fds)));
                                    }
                                    None => {
                                        log::warn!("{} answered unknown call {id}", link.name)
                                    }
                                }
                            }
                            Upcall::Event(e) => on_event(e),
                        },
                        Ok(None) => break format!("{} closed its control channel", link.name),
                        Err(e) => break format!("{} control channel: {e}", link.name),
                    }
                };
                if link.generation.load(Ordering::SeqCst) != generation {
                    // A replaced child that ended: the link goes on with its successor.
                    log::debug!("{} (replaced) ended: {why}", link.name);
                    return;
                }
                link.closed.store(true, Ordering::SeqCst);
                // Waiters see their sender dropped.
                link.pending.lock().clear();
                on_closed(why);
            })?;
        Ok(())
    }

    /// Sends a request and waits for its reply.
    pub fn request(&self, request: P::Call, fds: &[BorrowedFd]) -> Result<P::Answer, LinkError> {
        self.request_with_fds(request, fds)
            .map(|(answer, _)| answer)
    }

    /// `request`, keeping the fds the answer came with.
    pub fn request_with_fds(
        &self,
        request: P::Call,
        fds: &[BorrowedFd],
    ) -> Result<(P::Answer, Vec<OwnedFd>), LinkError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LinkError::NotRunning(self.name.clone()));
        }
        let conn = self.current().0;
        self.request_on(&conn, request, fds)
    }

    /// A call to the child on `conn` (one `replace` took over from), answered through
    /// this link.
    pub fn request_on(
        &self,
        conn: &Connection,
        request: P::Call,
        fds: &[BorrowedFd],
    ) -> Result<(P::Answer, Vec<OwnedFd>), LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        self.pending.lock().insert(id, tx);
        if let Err(e) = conn.send(&Call { id, request }, fds) {
            self.pending.lock().remove(&id);
            return Err(LinkError::Send {
                child: self.name.clone(),
                error: e,
            });
        }
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(result) => result.map_err(LinkError::Remote),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.pending.lock().remove(&id);
                Err(LinkError::Timeout {
                    child: self.name.clone(),
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(LinkError::Exited(self.name.clone())),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits (at most `limit`) until the reader has handled everything the child sent
    /// before it hung up: its last events must not be lost to a teardown.
    pub fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while !self.is_closed() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Unblocks the reader (used at teardown).
    pub fn shutdown(&self) {
        self.current().0.shutdown();
    }
}
