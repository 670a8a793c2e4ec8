//! Serving the NIC to vhost-user frontends on a listening socket, one connection after
//! another (a frontend may reconnect), each with a fresh vhost-user-backend daemon whose
//! worker also watches the host ports. The frontend's connection reaches the daemon
//! through the relay (see relay.rs), over a private abstract-namespace socket the daemon
//! accepts from.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::NetDevice;
use crate::relay;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    #[error("watching the host ports: {0}")]
    Ports(std::io::Error),
    #[error("accepting a frontend: {0}")]
    Accept(String),
    #[error("vhost-user connection: {0}")]
    Connection(String),
}

/// A socket pair joined through a listener on a random abstract name: the daemon only
/// accepts from a listener, and the one connection queued on it is ours (the name is
/// unguessable and the listener is gone once the daemon has accepted).
fn private_link() -> std::io::Result<(Listener, UnixStream)> {
    let mut nonce = [0u8; 16];
    // SAFETY: getrandom writes at most nonce.len() bytes into nonce.
    let n = unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
    if n != nonce.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    let name: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let addr = SocketAddr::from_abstract_name(format!("flotilla-net-{name}"))?;
    let listener = UnixListener::bind_addr(&addr)?;
    let stream = UnixStream::connect_addr(&addr)?;
    Ok((Listener::from(listener), stream))
}

pub fn serve_one(device: &NetDevice, listener: &UnixListener) -> Result<(), ServeError> {
    let (frontend, _) = listener
        .accept()
        .map_err(|e| ServeError::Accept(e.to_string()))?;
    let (mut inner, backend_end) =
        private_link().map_err(|e| ServeError::Accept(format!("relay socket: {e}")))?;
    let mut daemon = VhostUserDaemon::new(
        "net-daemon".into(),
        device.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| ServeError::Daemon(e.to_string()))?;
    let handler = daemon
        .get_epoll_handlers()
        .into_iter()
        .next()
        .ok_or_else(|| ServeError::Daemon("no worker thread".into()))?;
    device.attach(handler).map_err(ServeError::Ports)?;
    daemon
        .start(&mut inner)
        .map_err(|e| ServeError::Accept(e.to_string()))?;
    drop(inner);
    let relay = std::thread::Builder::new()
        .name("vhost-user relay".into())
        .spawn(move || relay::run(frontend, backend_end))
        .map_err(|e| ServeError::Accept(format!("relay thread: {e}")))?;
    let served = daemon.wait();
    match relay.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("vhost-user connection: {e}"),
        Err(_) => log::warn!("vhost-user relay panicked"),
    }
    match served {
        Ok(())
        | Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(ServeError::Connection(e.to_string())),
    }
}

pub fn serve_forever(device: NetDevice, listener: UnixListener) {
    loop {
        match serve_one(&device, &listener) {
            Ok(()) => log::info!("frontend disconnected; waiting for the next one"),
            Err(e) => {
                log::warn!("{e}; waiting for the next frontend");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
