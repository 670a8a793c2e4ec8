//! The gateway's channel into vmm-core (ipc over an inherited socket): the launch
//! request with the fds the gateway opened, then requests (stop, cont, reset, ...) that
//! the VM's control loop answers, and VM events going back to the gateway.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use ipc::child::{ChildError, ChildLink};
use ipc::{LaunchConfig, RemoteError, VmmEvent, VmmReply, VmmRequest};

use crate::events::{EventSender, VmEvent};

/// The gateway's launch request.
pub struct Launch {
    pub id: u64,
    pub config: LaunchConfig,
    /// Kernel, then the initrd if any, then the console's fd if its sink has one.
    pub fds: Vec<OwnedFd>,
}

#[derive(Clone)]
pub struct Control {
    link: ChildLink<VmmRequest, VmmReply, VmmEvent>,
}

impl Control {
    pub fn new(stream: UnixStream) -> Control {
        Control {
            link: ChildLink::new(stream),
        }
    }

    /// Waits for the launch request, which must come first.
    pub fn receive_launch(&self) -> Result<Launch, ChildError> {
        let (id, config, fds) = self.link.recv_first(
            "a launch request",
            "launching the VM",
            |request| match request {
                VmmRequest::Launch(config) => Some(config),
                _ => None,
            },
        )?;
        Ok(Launch { id, config, fds })
    }

    /// Waits for the CPUID probe (`--cpuid-only`): its id, the model, /dev/kvm.
    pub fn receive_cpuid_probe(
        &self,
    ) -> Result<(u64, ipc::CpuModel, std::os::fd::OwnedFd), ChildError> {
        let (id, model, fds) = self.link.recv_first(
            "a CPUID probe",
            "probing the CPUID",
            |request| match request {
                VmmRequest::ProbeCpuid(model) => Some(model),
                _ => None,
            },
        )?;
        // ipc checked the frame's fds against the request's count: one.
        let kvm = (fds.into_iter().next()).ok_or(ipc::IpcError::FdMismatch {
            got: 0,
            expected: 1,
        })?;
        Ok((id, model, kvm))
    }

    pub fn reply(&self, id: u64, result: Result<VmmReply, RemoteError>) {
        self.link.reply(id, result);
    }

    /// Answers with the fds the reply declares (guest memory for a migration).
    pub fn reply_with_fds(
        &self,
        id: u64,
        result: Result<VmmReply, RemoteError>,
        fds: &[std::os::fd::BorrowedFd],
    ) {
        self.link.reply_with_fds(id, result, fds);
    }

    pub fn event(&self, event: VmmEvent) {
        self.link.event(event);
    }

    /// Tells the gateway that the VM has let go of its devices (the channel closes):
    /// nothing more comes from this side.
    pub fn hang_up(&self) {
        self.link.hang_up();
    }

    /// Feeds the gateway's requests into the VM's control loop until it hangs up.
    pub fn start_reader(&self, events: EventSender) -> std::io::Result<()> {
        let link = self.link.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || loop {
                match link.recv() {
                    Ok(Some(call)) => events.send(VmEvent::Control {
                        id: call.id,
                        request: Box::new(call.request),
                        fds: call.fds,
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
