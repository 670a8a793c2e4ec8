//! Events that end or restart the VM's run: raised by devices, vCPUs and signals, and
//! handled by the VM's control loop in one place.

use std::sync::mpsc;

/// Where a vhost-user link raises what the gateway hears from it during postcopy (its
/// backend's mapping of guest RAM).
pub type PostcopyEvents = std::sync::Arc<dyn Fn(ipc::VmmEvent) + Send + Sync>;

#[derive(Debug)]
pub enum VmEvent {
    /// The guest entered ACPI S5.
    PowerOff,
    /// The guest asked for a reset; the string names the mechanism.
    Reset(&'static str),
    /// The guest ejected a PCI function; the PCI root holds it until it is taken
    /// (`PciRoot::take_ejected`).
    DeviceEjected,
    /// A vCPU stopped in a way the VM cannot continue from.
    VcpuFailed { vcpu: usize, reason: String },
    /// vmm-core received a terminating signal.
    Signal(i32),
    /// A request from the gateway, with the fds it declares (boxed: a launch's is large).
    Control {
        id: u64,
        request: Box<ipc::VmmRequest>,
        fds: Vec<std::os::fd::OwnedFd>,
    },
    /// The gateway hung up.
    ControlClosed,
    /// The guest wrote another `actual` into the balloon's configuration: guest RAM less
    /// the pages it says the balloon holds.
    BalloonChanged { actual_bytes: u64 },
    /// The guest ejected a DIMM; the memory hotplug block holds its slot until it is taken
    /// (`MemoryHotplug::take_ejected`).
    MemoryEjected,
    /// The guest's _OST about an ACPI hotplug slot (a memory slot or a vCPU).
    AcpiOst {
        slot: ipc::AcpiSlot,
        ost: ipc::SlotOst,
    },
    /// dump-guest-memory's thread is done writing (its error, if it failed).
    DumpFinished { error: Option<String> },
}

/// A cloneable handle that devices and vCPU threads use to post events.
#[derive(Clone, Debug)]
pub struct EventSender(mpsc::Sender<VmEvent>);

impl EventSender {
    pub fn channel() -> (EventSender, mpsc::Receiver<VmEvent>) {
        let (tx, rx) = mpsc::channel();
        (EventSender(tx), rx)
    }

    /// Posting after the control loop has gone is harmless: the VM is ending anyway.
    pub fn send(&self, event: VmEvent) {
        let _ = self.0.send(event);
    }
}
