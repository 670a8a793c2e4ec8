//! Serving the device to vhost-user frontends that connect to a listening socket: one
//! connection at a time, each with fresh connection state and its own worker; the device
//! (image, engines, limits, statistics) carries over from one to the next.

use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::{BackendReqHandler, Error as VhostUserError, Listener};

use crate::backend::BlkBackend;
use crate::vhost_user::connection::Connection;
use crate::vhost_user::lock;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("starting the connection's worker: {0}")]
    Worker(std::io::Error),
    #[error("accepting a frontend: {0}")]
    Accept(VhostUserError),
    #[error("vhost-user connection: {0}")]
    Connection(VhostUserError),
}

/// Serves one frontend connection from `listener` until it ends. A frontend that hangs
/// up (its VM ended, or it will reconnect) is a normal end.
pub fn serve_one(backend: &BlkBackend, listener: &mut Listener) -> Result<(), ServeError> {
    let stream = loop {
        match listener.accept() {
            Ok(Some(s)) => break s,
            Ok(None) => continue,
            Err(e) => return Err(ServeError::Accept(e)),
        }
    };
    let conn = Arc::new(Mutex::new(
        Connection::new(backend.clone()).map_err(ServeError::Worker)?,
    ));
    let mut handler = BackendReqHandler::from_stream(stream, conn.clone());
    let result = loop {
        if let Err(e) = handler.handle_request() {
            break e;
        }
    };
    lock(&conn).close();
    match result {
        VhostUserError::Disconnected
        | VhostUserError::PartialMessage
        | VhostUserError::SocketBroken(_) => Ok(()),
        e => Err(ServeError::Connection(e)),
    }
}

/// Serves frontends from `listener` one after another, for as long as the process lives
/// (a frontend may come back: vmm-core reconnecting, or a new VM attached).
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
