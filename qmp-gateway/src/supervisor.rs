//! The gateway's children (vmm-core, block and net daemons): each spawned (sandbox.rs) in
//! its own process group with its control socket as fd 3 and a parent-death signal, so
//! none outlives the gateway; and the link over that socket: calls matched to answers by id, events handed
//! on.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipc::{Call, Connection, Message, RemoteError, Upcall, VmmEvent, VmmReply, VmmRequest};
use serde::{de::DeserializeOwned, Serialize};

use crate::qmp::protocol::QmpError;
use crate::sandbox::{self, Mode, Process};

/// How long a request may wait for a child before the client gets an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `binary` (sandboxed as `mode` says) with the far end of a fresh socket pair as
/// its control channel (`--control-fd 3`, then `args`).
pub fn spawn_child(
    binary: &Path,
    args: &[&str],
    mode: Mode,
) -> std::io::Result<(Process, Connection)> {
    let (ours, theirs) = UnixStream::pair()?;
    let child = sandbox::spawn(binary, args, &OwnedFd::from(theirs), mode)?;
    Ok((child, Connection::new(ours)))
}

type Waiter<T> = SyncSender<Result<T, RemoteError>>;

/// The gateway's end of a child's control channel: calls of type `R` answered with `T`,
/// and events `E`.
pub struct Link<R, T, E> {
    /// The child's name in errors ("vmm-core", "block daemon d0").
    name: String,
    conn: Connection,
    pending: Mutex<HashMap<u64, Waiter<T>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    _types: std::marker::PhantomData<fn(R, E)>,
}

pub type VmmLink = Link<VmmRequest, VmmReply, VmmEvent>;

impl<R, T, E> Link<R, T, E>
where
    R: Message,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Serialize + DeserializeOwned + 'static,
{
    pub fn new(name: impl Into<String>, conn: Connection) -> Arc<Self> {
        Arc::new(Link {
            name: name.into(),
            conn,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            _types: std::marker::PhantomData,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the child's answers and events until it hangs up.
    pub fn start_reader(
        self: &Arc<Self>,
        on_event: impl Fn(E) + Send + 'static,
        on_closed: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<()>
    where
        R: 'static,
    {
        let link = self.clone();
        std::thread::Builder::new()
            .name(format!("link {}", self.name))
            .spawn(move || {
                let why = loop {
                    match link.conn.recv::<Upcall<T, E>>() {
                        Ok(Some(r)) => match r.msg {
                            Upcall::Response { id, result } => {
                                let waiter = link
                                    .pending
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&id);
                                match waiter {
                                    Some(w) => {
                                        let _ = w.send(result);
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
                link.closed.store(true, Ordering::SeqCst);
                // Waiters see their sender dropped.
                link.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                on_closed(why);
            })?;
        Ok(())
    }

    /// Sends a request and waits for its reply.
    pub fn request(&self, request: R, fds: &[BorrowedFd]) -> Result<T, QmpError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(QmpError::generic(format!("{} is not running", self.name)));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if let Err(e) = self.conn.send(&Call { id, request }, fds) {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(QmpError::generic(format!("sending to {}: {e}", self.name)));
        }
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(result) => result.map_err(QmpError::from),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(QmpError::generic(format!(
                    "{} did not answer within {} s",
                    self.name,
                    REQUEST_TIMEOUT.as_secs()
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(QmpError::generic(format!(
                "{} exited before answering",
                self.name
            ))),
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
        self.conn.shutdown();
    }
}
