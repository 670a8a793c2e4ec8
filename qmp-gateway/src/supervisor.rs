//! vmm-core as a child process: spawned in its own process group with the control
//! socket as fd 3 and a parent-death signal, so it never outlives the gateway; and the
//! link over that socket: requests matched to replies by id, events handed on.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipc::{Connection, FromVmm, RemoteError, ToVmm, VmmEvent, VmmReply, VmmRequest};

use crate::qmp::protocol::QmpError;

/// The control socket's number in the child.
const CONTROL_FD: i32 = 3;
/// How long a request may wait for vmm-core before the client gets an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts vmm-core with the far end of a fresh socket pair as its control channel.
pub fn spawn_vmm_core(binary: &Path) -> std::io::Result<(Child, Connection)> {
    let (ours, theirs) = UnixStream::pair()?;
    let child_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(binary);
    cmd.arg("--control-fd").arg(CONTROL_FD.to_string());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if child_fd == CONTROL_FD {
                // dup2 onto itself would keep close-on-exec: clear it instead.
                if libc::fcntl(CONTROL_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Terminal signals (Ctrl-C) go to the gateway, which stops vmm-core in order.
            if libc::setpgid(0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If the gateway dies without cleaning up, vmm-core goes with it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((child, Connection::new(ours)))
}

type Waiter = SyncSender<Result<VmmReply, RemoteError>>;

pub struct VmmLink {
    conn: Connection,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl VmmLink {
    pub fn new(conn: Connection) -> Arc<VmmLink> {
        Arc::new(VmmLink {
            conn,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        })
    }

    /// Reads vmm-core's replies and events until it hangs up.
    pub fn start_reader(
        self: &Arc<Self>,
        on_event: impl Fn(VmmEvent) + Send + 'static,
        on_closed: impl FnOnce(String) + Send + 'static,
    ) -> std::io::Result<()> {
        let link = self.clone();
        std::thread::Builder::new()
            .name("vmm-link".into())
            .spawn(move || {
                let why = loop {
                    match link.conn.recv::<FromVmm>() {
                        Ok(Some(r)) => match r.msg {
                            FromVmm::Response { id, result } => {
                                let waiter = link
                                    .pending
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&id);
                                match waiter {
                                    Some(w) => {
                                        let _ = w.send(result);
                                    }
                                    None => log::warn!("vmm-core answered unknown request {id}"),
                                }
                            }
                            FromVmm::Event(e) => on_event(e),
                        },
                        Ok(None) => break "vmm-core closed its control channel".to_string(),
                        Err(e) => break format!("vmm-core control channel: {e}"),
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
    pub fn request(&self, request: VmmRequest, fds: &[BorrowedFd]) -> Result<VmmReply, QmpError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(QmpError::generic("vmm-core is not running"));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if let Err(e) = self.conn.send(&ToVmm { id, request }, fds) {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(QmpError::generic(format!("sending to vmm-core: {e}")));
        }
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(result) => result.map_err(QmpError::from),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(QmpError::generic(format!(
                    "vmm-core did not answer within {} s",
                    REQUEST_TIMEOUT.as_secs()
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(QmpError::generic("vmm-core exited before answering"))
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Unblocks the reader (used at teardown).
    pub fn shutdown(&self) {
        self.conn.shutdown();
    }
}
