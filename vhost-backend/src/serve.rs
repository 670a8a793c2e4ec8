//! Serving a device to vhost-user frontends: one connection at a time on a listening
//! socket, each with fresh connection state and its own worker (a frontend may reconnect,
//! or a new VM attach); the device (and whatever it owns) carries over from one to the
//! next. The vhost crate's `BackendReqHandler` reads and answers the messages, except the
//! early SET_VRING_ENABLEs taken before it (early_enable.rs).

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vhost::vhost_user::{BackendReqHandler, Error as VhostError, Listener};

use crate::connection::Connection;
use crate::device::Device;
use crate::early_enable;
use crate::postcopy::UserfaultDevice;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("starting the connection's worker: {0}")]
    Worker(std::io::Error),
    #[error("accepting a frontend: {0}")]
    Accept(VhostError),
    #[error("vhost-user connection: {0}")]
    Connection(VhostError),
}

/// The connection, locked. The vhost crate wants a std Mutex around the handler; only
/// this thread takes it, and a panic inside ends the connection, whose state nothing needs
/// after that but `close`.
fn locked<D: Device>(conn: &Mutex<Connection<D>>) -> MutexGuard<'_, Connection<D>> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves one frontend on a connected `stream` until it ends. A frontend that hangs up
/// (its VM ended, or it will reconnect) is a normal end. Postcopy is refused (no
/// /dev/userfaultfd: see `serve_forever_with_userfault`).
pub fn serve_stream<D: Device>(device: &D, stream: UnixStream) -> Result<(), ServeError> {
    serve_stream_with(device, stream, &UserfaultDevice::new())
}

/// `serve_stream`, postcopy through `userfault`.
pub(crate) fn serve_stream_with<D: Device>(
    device: &D,
    stream: UnixStream,
    userfault: &UserfaultDevice,
) -> Result<(), ServeError> {
    let conn = Arc::new(Mutex::new(
        Connection::new(device.clone(), userfault.clone()).map_err(ServeError::Worker)?,
    ));
    let result = match stream.try_clone() {
        Ok(peer) => {
            let mut handler = BackendReqHandler::from_stream(stream, conn.clone());
            loop {
                if let Err(e) = next_message(&peer, &mut handler, &conn) {
                    break e;
                }
            }
        }
        Err(e) => VhostError::SocketBroken(e),
    };
    locked(&conn).close();
    match result {
        VhostError::Disconnected | VhostError::PartialMessage | VhostError::SocketBroken(_) => {
            Ok(())
        }
        e => Err(ServeError::Connection(e)),
    }
}

/// Handles the frontend's next message: an early enable here, anything else through the
/// vhost crate. Traced (vhost_user_backend_msg) from its header, looked at in the socket
/// only while the event is on.
fn next_message<D: Device>(
    peer: &UnixStream,
    handler: &mut BackendReqHandler<Mutex<Connection<D>>>,
    conn: &Mutex<Connection<D>>,
) -> Result<(), VhostError> {
    if ipc::trace::enabled(ipc::trace::Event::VhostUserBackendMsg) {
        if let Some((request, size)) = early_enable::peek_request(peer) {
            ipc::tracepoint!(VhostUserBackendMsg, "request={request} size={size}");
        }
    }
    if !locked(conn).protocol_features_acked() {
        if let Some(enable) = early_enable::take(peer)? {
            let (taken, reply) = {
                let mut conn = locked(conn);
                let taken = conn.hold_early_enable(enable.index, enable.state);
                (taken, enable.need_reply && conn.reply_ack())
            };
            if taken {
                log::debug!(
                    "ring {} enable={} before the features: held",
                    enable.index,
                    enable.state
                );
            } else {
                log::warn!(
                    "refused an early SET_VRING_ENABLE (ring {}, state {})",
                    enable.index,
                    enable.state
                );
            }
            if reply {
                early_enable::ack(peer, taken)?;
            }
            return Ok(());
        }
    }
    handler.handle_request()
}

/// Accepts the next frontend on `listener` and serves it until it ends.
pub fn serve_one<D: Device>(device: &D, listener: &mut Listener) -> Result<(), ServeError> {
    serve_one_with(device, listener, &UserfaultDevice::new())
}

fn serve_one_with<D: Device>(
    device: &D,
    listener: &mut Listener,
    userfault: &UserfaultDevice,
) -> Result<(), ServeError> {
    let stream = loop {
        match listener.accept() {
            Ok(Some(s)) => break s,
            Ok(None) => continue,
            Err(e) => return Err(ServeError::Accept(e)),
        }
    };
    serve_stream_with(device, stream, userfault)
}

/// Serves frontends from `listener` one after another; with `once`, only the first (its
/// result is the answer). `label` (an export's socket, or empty) begins the log lines.
pub fn serve_frontends<D: Device>(
    device: &D,
    listener: &mut Listener,
    once: bool,
    label: &str,
) -> Result<(), ServeError> {
    serve_frontends_with(device, listener, once, label, &UserfaultDevice::new())
}

fn serve_frontends_with<D: Device>(
    device: &D,
    listener: &mut Listener,
    once: bool,
    label: &str,
    userfault: &UserfaultDevice,
) -> Result<(), ServeError> {
    let prefix = if label.is_empty() {
        String::new()
    } else {
        format!("{label}: ")
    };
    loop {
        let result = serve_one_with(device, listener, userfault);
        if once {
            return result;
        }
        match result {
            Ok(()) => log::info!("{prefix}frontend disconnected; waiting for the next one"),
            Err(e) => {
                log::warn!("{prefix}{e}; waiting for the next frontend");
                // A listener that keeps failing must not spin.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Serves frontends from `listener` one after another for as long as the process lives.
pub fn serve_forever<D: Device>(device: D, listener: UnixListener) {
    serve_forever_with_userfault(device, listener, UserfaultDevice::new());
}

/// `serve_forever`, with postcopy migration through the /dev/userfaultfd fd the daemon
/// puts in `userfault` (its control thread keeps a clone to do so).
pub fn serve_forever_with_userfault<D: Device>(
    device: D,
    listener: UnixListener,
    userfault: UserfaultDevice,
) {
    let _ = serve_frontends_with(
        &device,
        &mut Listener::from(listener),
        false,
        "",
        &userfault,
    );
}

#[cfg(test)]
mod mem_slots_tests;
#[cfg(test)]
mod postcopy_tests;
#[cfg(test)]
pub(crate) mod tests;
