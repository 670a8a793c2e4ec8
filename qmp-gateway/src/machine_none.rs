//! `--machine`: the machine type, and QEMU's `none` machine: no vCPUs, no RAM, no
//! devices, nothing to run (what libvirt probes an emulator with). No vmm-core is started
//! for it: a thread of the gateway answers vmm-core's protocol on the other end of the
//! link, as QEMU 7.2's none machine answers (its run state moves with stop, cont and
//! system_reset as a VM's with no vCPUs; what needs a vCPU, guest memory or a bus is
//! refused in QEMU's words). So the gateway and its handlers work as with a VM.

use std::str::FromStr;
use std::sync::Arc;

use ipc::{
    Call, Connection, DumpProgress, DumpStatus, ErrorClass, RemoteError, RunState, ShutdownCause,
    Upcall, VmmEvent, VmmReply, VmmRequest,
};

use crate::children::link::VmmLink;

/// `--machine`: what the gateway runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MachineType {
    /// A VM (vmm-core, QEMU's i440fx pc).
    #[default]
    Pc,
    /// No VM: QMP only (QEMU's -machine none).
    None,
}

/// An unknown machine type (QEMU 7.2's words).
#[derive(Debug, thiserror::Error)]
#[error("unsupported machine type\nUse -machine help to list supported machines")]
pub struct UnsupportedMachine;

impl FromStr for MachineType {
    type Err = UnsupportedMachine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pc" => Ok(MachineType::Pc),
            "none" => Ok(MachineType::None),
            _ => Err(UnsupportedMachine),
        }
    }
}

/// `--accel`: how guest code runs. A VM runs on KVM only; TCG is taken with the none
/// machine, where no guest code runs (libvirt probes an emulator once with
/// `accel=kvm:tcg` and once with `accel=tcg`, and fails the whole probe if either fails).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accel {
    #[default]
    Kvm,
    Tcg,
}

/// An accelerator QEMU does not have (QEMU 7.2's words).
#[derive(Debug, thiserror::Error)]
#[error("invalid accelerator {0}")]
pub struct InvalidAccel(pub String);

impl FromStr for Accel {
    type Err = InvalidAccel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(InvalidAccel(s.to_string())),
        }
    }
}

impl Accel {
    /// The first of QEMU's accelerator list (`kvm:tcg`) that is one: QEMU uses the first
    /// that works, and both work here (TCG only without a guest: checked with the machine).
    pub fn first_of(list: &str) -> Result<Accel, InvalidAccel> {
        list.split(':')
            .find_map(|a| a.parse().ok())
            .ok_or_else(|| InvalidAccel(list.split(':').next().unwrap_or_default().to_string()))
    }
}

/// The none machine's answer to each of vmm-core's requests, and the events it raises.
struct NoneMachine {
    state: RunState,
}

type Answer = Result<VmmReply, RemoteError>;

impl NoneMachine {
    /// Moves to `state`, reporting it if that is a change.
    fn to(&mut self, state: RunState, events: &mut Vec<VmmEvent>) {
        if self.state != state {
            self.state = state;
            events.push(VmmEvent::RunState(state));
        }
    }

    /// `request`'s answer; `events` gets what vmm-core would report with it.
    fn answer(&mut self, request: VmmRequest, events: &mut Vec<VmmEvent>) -> Answer {
        match request {
            VmmRequest::Stop => {
                // QEMU's stop leaves prelaunch as it is.
                if self.state == RunState::Running {
                    self.to(RunState::Paused, events);
                }
                Ok(VmmReply::Done)
            }
            VmmRequest::Cont => {
                self.to(RunState::Running, events);
                Ok(VmmReply::Done)
            }
            VmmRequest::SystemReset => {
                events.push(VmmEvent::Reset(ShutdownCause::HostQmpSystemReset));
                // QEMU's main loop: a VM not running after a reset is in prelaunch.
                if self.state != RunState::Running {
                    self.to(RunState::Prelaunch, events);
                }
                Ok(VmmReply::Done)
            }
            VmmRequest::SystemPowerdown => {
                events.push(VmmEvent::Powerdown);
                Ok(VmmReply::Done)
            }
            VmmRequest::Quit(cause) => {
                events.push(VmmEvent::Shutdown(cause));
                Ok(VmmReply::Done)
            }
            VmmRequest::QueryCpus => Ok(VmmReply::Cpus(Vec::new())),
            VmmRequest::QueryPci => Ok(VmmReply::Pci(Vec::new())),
            VmmRequest::QueryDump => Ok(VmmReply::Dump(DumpProgress {
                status: DumpStatus::None,
                completed: 0,
                total: 0,
            })),
            VmmRequest::QueryBalloon | VmmRequest::BalloonTarget { .. } => Err(RemoteError {
                class: ErrorClass::DeviceNotActive,
                desc: "No balloon device has been activated".into(),
            }),
            VmmRequest::QueryAcpiSlots => Err(RemoteError::generic(
                "command is not supported, missing ACPI device",
            )),
            VmmRequest::InjectNmi => Err(RemoteError::generic(
                "this feature or command is not currently supported",
            )),
            VmmRequest::DumpGuestMemory(_) => {
                Err(RemoteError::generic("dump: no guest memory to dump"))
            }
            VmmRequest::DiskAttach(_) => Err(no_pci_bus("virtio-blk-pci")),
            VmmRequest::NicAttach(_) => Err(no_pci_bus("virtio-net-pci")),
            // No keyboard or mouse: the events go nowhere, as in QEMU.
            VmmRequest::Input(_) => Ok(VmmReply::Done),
            other => Err(RemoteError::generic(format!(
                "the machine 'none' has no {}",
                what_is_missing(&other)
            ))),
        }
    }
}

fn no_pci_bus(driver: &str) -> RemoteError {
    RemoteError::generic(format!("No 'PCI' bus found for device '{driver}'"))
}

/// What a request needs that the none machine lacks (for its refusal).
fn what_is_missing(request: &VmmRequest) -> &'static str {
    match request {
        VmmRequest::CpuAdd { .. } | VmmRequest::QueryCpuid => "vCPUs",
        VmmRequest::MemoryAttach(_) | VmmRequest::MemoryUnplug { .. } => "memory hotplug",
        VmmRequest::RequestUnplug { .. } => "PCI bus",
        _ => "guest to run",
    }
}

/// Starts the none machine: the link the gateway uses as vmm-core's, answered by a
/// thread of its own that ends when the gateway closes the link or quits. Runs at once
/// unless `start_paused` (-S: prelaunch until cont).
pub fn start(start_paused: bool) -> std::io::Result<Arc<VmmLink>> {
    let (ours, machine) = Connection::pair()?;
    let mut none = NoneMachine {
        state: RunState::Prelaunch,
    };
    std::thread::Builder::new()
        .name("machine none".into())
        .spawn(move || {
            let send = |msg: Upcall<VmmReply, VmmEvent>| machine.send(&msg, &[]).is_ok();
            if !start_paused {
                none.state = RunState::Running;
                if !send(Upcall::Event(VmmEvent::RunState(RunState::Running))) {
                    return;
                }
            }
            while let Ok(Some(call)) = machine.recv::<Call<VmmRequest>>() {
                let Call { id, request } = call.msg;
                let quit = matches!(request, VmmRequest::Quit(_));
                let mut events = Vec::new();
                let result = none.answer(request, &mut events);
                // vmm-core reports the events a request caused before its answer.
                let events = events.into_iter().map(Upcall::Event);
                if !events.chain([Upcall::Response { id, result }]).all(send) || quit {
                    break;
                }
            }
            // The gateway sees the link close, as when vmm-core exits.
            machine.shutdown();
        })?;
    Ok(VmmLink::new("vmm-core", ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(m: &mut NoneMachine, r: VmmRequest) -> (Answer, Vec<VmmEvent>) {
        let mut events = Vec::new();
        (m.answer(r, &mut events), events)
    }

    #[test]
    fn run_state_moves_as_qemus_none_machine() {
        let mut m = NoneMachine {
            state: RunState::Prelaunch,
        };
        assert_eq!(ask(&mut m, VmmRequest::Stop).1, vec![]);
        assert_eq!(m.state, RunState::Prelaunch);
        let (_, ev) = ask(&mut m, VmmRequest::Cont);
        assert_eq!(ev, vec![VmmEvent::RunState(RunState::Running)]);
        let (_, ev) = ask(&mut m, VmmRequest::Stop);
        assert_eq!(ev, vec![VmmEvent::RunState(RunState::Paused)]);
        let (_, ev) = ask(&mut m, VmmRequest::SystemReset);
        assert_eq!(
            ev,
            vec![
                VmmEvent::Reset(ShutdownCause::HostQmpSystemReset),
                VmmEvent::RunState(RunState::Prelaunch)
            ]
        );
        let (r, _) = ask(&mut m, VmmRequest::InjectNmi);
        assert!(r.is_err());
    }

    #[test]
    fn machine_types() {
        assert_eq!("none".parse::<MachineType>().ok(), Some(MachineType::None));
        assert_eq!("pc".parse::<MachineType>().ok(), Some(MachineType::Pc));
        assert!("q35".parse::<MachineType>().is_err());
    }
}
