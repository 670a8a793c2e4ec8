//! Gateway mode: the NIC's configuration and its host side arrive on an inherited
//! control socket. The first call opens the NIC (backend fds, vhost-user listener);
//! later calls manage it (link, receive filter, counters, the announcement after a
//! migration, /dev/userfaultfd for a postcopy migration's destination). The receive
//! filter's changes go back as events.

use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use ipc::child::{ChildError, ChildLink};
use ipc::{NetEvent, NetOpen, NetReply, NetRequest, RemoteError};
use vhost_backend::UserfaultDevice;

use crate::device::NetDevice;
use crate::filter::RxFilter;
use crate::port::Port;

/// The daemon's end of its control link.
type Link = ChildLink<NetRequest, NetReply, NetEvent>;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Link(#[from] ChildError),
    #[error("opening the NIC: {0}")]
    Open(String),
}

fn open(
    link: &Link,
    open: &NetOpen,
    fds: Vec<OwnedFd>,
    userfault: &UserfaultDevice,
) -> Result<NetDevice, String> {
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
    let events = link.clone();
    let device = NetDevice::new(
        ports,
        open.mac,
        open.link_up,
        open.filter.as_deref().map(RxFilter::from_state),
        Some(Arc::new(move |e: NetEvent| events.event(e))),
    );
    let serving = device.clone();
    let userfault = userfault.clone();
    std::thread::Builder::new()
        .name("vhost-user".into())
        .spawn(move || vhost_backend::serve_forever_with_userfault(serving, listener, userfault))
        .map_err(|e| format!("serving thread: {e}"))?;
    Ok(device)
}

/// Answers one management call.
fn handle(
    device: &NetDevice,
    userfault: &UserfaultDevice,
    request: NetRequest,
    fds: Vec<OwnedFd>,
) -> Result<NetReply, RemoteError> {
    match request {
        NetRequest::Open(_) => Err(RemoteError::generic("the NIC is already open")),
        NetRequest::SetLink { up } => {
            device.set_link(up);
            Ok(NetReply::Done)
        }
        NetRequest::RxFilter => Ok(NetReply::RxFilter(Box::new(device.rx_filter()))),
        NetRequest::Stats => Ok(NetReply::Stats(device.stats())),
        NetRequest::RestoreRxFilter(state) => {
            device.restore_rx_filter(&state);
            Ok(NetReply::Done)
        }
        NetRequest::Announce => device
            .announce()
            .map(|()| NetReply::Done)
            .map_err(|e| RemoteError::generic(format!("announcing the NIC: {e}"))),
        NetRequest::Userfault => userfault
            .take_from(fds)
            .map_err(|e| RemoteError::generic(e.to_string()))
            .map(|()| NetReply::Done),
        NetRequest::Quit => Ok(NetReply::Done),
    }
}

/// Runs the daemon under the gateway until it says quit or hangs up.
pub fn run(stream: UnixStream) -> Result<(), ControlError> {
    let link = Link::new(stream);
    let (id, config, fds) =
        link.recv_first(
            "the open call",
            "opening the NIC",
            |request| match request {
                NetRequest::Open(config) => Some(config),
                _ => None,
            },
        )?;
    let userfault = UserfaultDevice::new();
    let device = match open(&link, &config, fds, &userfault) {
        Ok(d) => d,
        Err(e) => {
            link.reply(id, Err(RemoteError::generic(e.clone())));
            return Err(ControlError::Open(e));
        }
    };
    log::info!(
        "NIC {}: {} queue pair(s) on {:?}",
        config.nic,
        config.queue_pairs,
        config.backend
    );
    link.reply(id, Ok(NetReply::Done));
    link.answer_calls(
        |request| *request == NetRequest::Quit,
        |request, fds| handle(&device, &userfault, request, fds),
    )
    .map_err(ChildError::from)?;
    Ok(())
}
