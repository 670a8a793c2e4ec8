//! Gateway mode: the NIC's configuration and its host side arrive on an inherited
//! control socket. The first call opens the NIC (backend fds, vhost-user listener);
//! later calls manage it (link, receive filter, counters). The receive filter's changes
//! go back as events.

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use ipc::{
    Connection, FromNet, IpcError, NetEvent, NetOpen, NetReply, NetRequest, RemoteError, ToNet,
};

use crate::device::NetDevice;
use crate::filter::RxFilter;
use crate::port::Port;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control channel: {0}")]
    Ipc(#[from] IpcError),
    #[error("control channel: the gateway hung up before opening the NIC")]
    NoOpen,
    #[error("control channel: expected the open call first, got {0}")]
    NotOpen(String),
    #[error("opening the NIC: {0}")]
    Open(String),
}

fn reply(conn: &Connection, id: u64, result: Result<NetReply, RemoteError>) {
    if let Err(e) = conn.send(&FromNet::Response { id, result }, &[]) {
        log::warn!("replying to the gateway: {e}");
    }
}

fn open(conn: &Arc<Connection>, open: &NetOpen, fds: Vec<OwnedFd>) -> Result<NetDevice, String> {
    let n = open.backend_fds as usize;
    if n == 0 || fds.len() != n + 1 {
        return Err(format!("expected {} fds, got {}", n + 1, fds.len()));
    }
    if open.queue_pairs as usize != n && open.backend == ipc::NetBackendKind::Tap {
        return Err(format!(
            "{} queue pairs need as many tap queues, got {n}",
            open.queue_pairs
        ));
    }
    let mut fds = fds.into_iter();
    let ports = (&mut fds)
        .take(n)
        .map(|fd| Port::new(fd, open.backend).map_err(|e| format!("host port: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let listener = UnixListener::from(fds.next().ok_or("no listener")?);
    let events_conn = conn.clone();
    let device = NetDevice::new(
        ports,
        open.mac,
        open.link_up,
        open.filter.as_deref().map(RxFilter::from_state),
        Some(Arc::new(move |e: NetEvent| {
            if let Err(err) = events_conn.send(&FromNet::Event(e), &[]) {
                log::warn!("sending an event to the gateway: {err}");
            }
        })),
    );
    let serving = device.clone();
    std::thread::Builder::new()
        .name("vhost-user".into())
        .spawn(move || vhost_backend::serve_forever(serving, listener))
        .map_err(|e| format!("serving thread: {e}"))?;
    Ok(device)
}

pub fn run(stream: UnixStream) -> Result<(), ControlError> {
    let conn = Arc::new(Connection::new(stream));
    let first = conn.recv::<ToNet>()?.ok_or(ControlError::NoOpen)?;
    let id = first.msg.id;
    let NetRequest::Open(config) = first.msg.request else {
        return Err(ControlError::NotOpen(format!("{:?}", first.msg.request)));
    };
    let device = match open(&conn, &config, first.fds) {
        Ok(d) => d,
        Err(e) => {
            reply(&conn, id, Err(RemoteError::generic(e.clone())));
            return Err(ControlError::Open(e));
        }
    };
    log::info!(
        "NIC {}: {} queue pair(s) on {:?}",
        config.nic,
        config.queue_pairs,
        config.backend
    );
    reply(&conn, id, Ok(NetReply::Done));
    loop {
        let Some(call) = conn.recv::<ToNet>()? else {
            return Ok(());
        };
        let quit = call.msg.request == NetRequest::Quit;
        let result = match call.msg.request {
            NetRequest::Open(_) => Err(RemoteError::generic("the NIC is already open")),
            NetRequest::SetLink { up } => {
                device.set_link(up);
                Ok(NetReply::Done)
            }
            NetRequest::RxFilter => Ok(NetReply::RxFilter(Box::new(device.rx_filter()))),
            NetRequest::Stats => Ok(NetReply::Stats(device.stats())),
            NetRequest::Quit => Ok(NetReply::Done),
        };
        reply(&conn, call.msg.id, result);
        if quit {
            return Ok(());
        }
    }
}
