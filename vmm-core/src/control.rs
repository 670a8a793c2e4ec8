//! The gateway's channel into vmm-core (ipc over an inherited socket): the launch
//! request with the fds the gateway opened, then requests (stop, cont, reset, ...) that
//! the VM's control loop answers, and VM events going back to the gateway.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use ipc::{
    Connection, FromVmm, IpcError, LaunchConfig, RemoteError, ToVmm, VmmEvent, VmmReply, VmmRequest,
};

use crate::events::{EventSender, VmEvent};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control channel: {0}")]
    Ipc(#[from] IpcError),
    #[error("control channel: the gateway hung up before launching the VM")]
    NoLaunch,
    #[error("control channel: expected a launch request first, got {0:?}")]
    NotLaunch(Box<VmmRequest>),
}

/// The gateway's launch request.
pub struct Launch {
    pub id: u64,
    pub config: LaunchConfig,
    /// Kernel, then the initrd if any, then the console's fd if its sink has one.
    pub fds: Vec<OwnedFd>,
}

#[derive(Clone)]
pub struct Control {
    conn: Arc<Connection>,
}

impl Control {
    pub fn new(stream: UnixStream) -> Control {
        Control {
            conn: Arc::new(Connection::new(stream)),
        }
    }

    /// Waits for the launch request, which must come first.
    pub fn receive_launch(&self) -> Result<Launch, ControlError> {
        let received = self.conn.recv::<ToVmm>()?.ok_or(ControlError::NoLaunch)?;
        match received.msg.request {
            VmmRequest::Launch(config) => Ok(Launch {
                id: received.msg.id,
                config,
                fds: received.fds,
            }),
            other => Err(ControlError::NotLaunch(Box::new(other))),
        }
    }

    pub fn reply(&self, id: u64, result: Result<VmmReply, RemoteError>) {
        if let Err(e) = self.conn.send(&FromVmm::Response { id, result }, &[]) {
            log::warn!("replying to the gateway: {e}");
        }
    }

    pub fn event(&self, event: VmmEvent) {
        if let Err(e) = self.conn.send(&FromVmm::Event(event), &[]) {
            log::warn!("sending an event to the gateway: {e}");
        }
    }

    /// Feeds the gateway's requests into the VM's control loop until it hangs up.
    pub fn start_reader(&self, events: EventSender) -> std::io::Result<()> {
        let conn = self.conn.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || loop {
                match conn.recv::<ToVmm>() {
                    Ok(Some(r)) => events.send(VmEvent::Control {
                        id: r.msg.id,
                        request: r.msg.request,
                        fds: r.fds,
                    }),
                    Ok(None) => {
                        events.send(VmEvent::ControlClosed);
                        break;
                    }
                    Err(e) => {
                        log::error!("control channel: {e}; treating it as closed");
                        events.send(VmEvent::ControlClosed);
                        break;
                    }
                }
            })?;
        Ok(())
    }
}
