//! Serving a backend to vhost-user frontends that connect to a listening socket: one
//! connection at a time, each with a fresh vhost-user daemon (and worker thread) whose
//! epoll also watches the engines' completions and the throttle timer.

use std::os::unix::net::UnixListener;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backend::BlkBackend;

/// The library's errors may hold a thread's panic payload (not Sync): kept as text.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    #[error("watching the backend's events: {0}")]
    Epoll(std::io::Error),
    #[error("accepting a frontend: {0}")]
    Accept(String),
    #[error("vhost-user connection: {0}")]
    Connection(String),
}

/// Serves one frontend connection from `listener` until it ends. A frontend that hangs
/// up (its VM ended, or it was restarted) is a normal end.
pub fn serve_one(backend: &BlkBackend, listener: &mut Listener) -> Result<(), ServeError> {
    let mut daemon = VhostUserDaemon::new(
        "block-daemon".into(),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| ServeError::Daemon(e.to_string()))?;
    let handlers = daemon.get_epoll_handlers();
    let Some(handler) = handlers.first() else {
        return Err(ServeError::Epoll(std::io::Error::other("no worker thread")));
    };
    for (q, fd) in backend.notifiers() {
        handler
            .register_listener(fd, EventSet::IN, backend.completion_event(q))
            .map_err(ServeError::Epoll)?;
    }
    let (timer, data) = backend.timer_event();
    handler
        .register_listener(timer, EventSet::IN, data)
        .map_err(ServeError::Epoll)?;
    daemon
        .start(listener)
        .map_err(|e| ServeError::Accept(e.to_string()))?;
    match daemon.wait() {
        Ok(())
        | Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(ServeError::Connection(e.to_string())),
    }
}

/// Serves frontends from `listener` one after another, for as long as the process lives
/// (a frontend may come back: vmm-core restarted, or a new VM attached).
pub fn serve_forever(backend: BlkBackend, listener: UnixListener) {
    let mut listener = Listener::from(listener);
    loop {
        match serve_one(&backend, &mut listener) {
            Ok(()) => log::info!("frontend disconnected; waiting for the next one"),
            Err(e) => {
                log::warn!("{e}; waiting for the next frontend");
                // A listener that keeps failing must not spin.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
