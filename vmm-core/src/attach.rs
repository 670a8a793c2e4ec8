//! Puts a vhost-user device behind a virtio-pci transport in a slot of PCI bus 0: the
//! disks and NICs a VM is launched with (the builder) and those added while it runs
//! (hotplug.rs) come in by this one path. A device that fails half-way leaves nothing
//! behind: its backend connection closed, its BAR back in the window, nothing of it
//! registered with KVM.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::VmFd;
use parking_lot::Mutex;

use crate::devices::pci::{PciFunction, PciRoot};
use crate::devices::virtio_pci::{self, VirtioPci};
pub use crate::error::AttachError;
use crate::interrupts::MsiRouter;
use crate::memory::GuestRam;
use crate::vhost_user::{
    Blk, ConfigChangeHandle, DeviceModel, Handover, Link, LinkHandle, Net, Reconnect,
    VhostUserDevice,
};
use crate::vm::{DiskHandle, NicHandle};

/// A vhost-user backend over an already connected socket.
pub struct BackendConnection {
    pub stream: UnixStream,
    /// The backend's socket, to connect to again if it hangs up (vmm-core on its own);
    /// None under the gateway, which hands over a new connection instead.
    pub path: Option<PathBuf>,
}

/// A virtio-blk disk served by a vhost-user backend.
pub struct DiskConnection {
    /// The disk's number in the requests about it: the gateway's, never reused while
    /// the VM lives (its place on the command line, vmm-core on its own).
    pub index: u32,
    /// Its slot on bus 0; None for the lowest free one.
    pub slot: Option<u8>,
    pub backend: BackendConnection,
    /// The guest device's qdev id ("" without one).
    pub qdev_id: String,
    /// Most queues the guest gets (the backend may offer fewer).
    pub max_queues: usize,
    /// A live upgrade: the device as the previous vmm-core had settled it.
    pub shape: Option<ipc::LinkShape>,
}

/// A virtio-net NIC served by a vhost-user backend.
pub struct NicConnection {
    /// As a disk's.
    pub index: u32,
    pub slot: Option<u8>,
    pub backend: BackendConnection,
    /// The guest device's qdev id ("" without one).
    pub qdev_id: String,
    pub mac: [u8; 6],
    pub queue_pairs: u16,
    /// A live upgrade: the device as the previous vmm-core had settled it.
    pub shape: Option<ipc::LinkShape>,
}

/// A connection the gateway opened; the gateway hands over the next one too.
fn handed(stream: UnixStream) -> BackendConnection {
    BackendConnection { stream, path: None }
}

impl DiskConnection {
    /// The disk the gateway describes, over the connection it opened to its daemon.
    pub fn handed(
        disk: &ipc::DiskLaunch,
        stream: UnixStream,
        shape: Option<ipc::LinkShape>,
    ) -> DiskConnection {
        DiskConnection {
            index: disk.index,
            slot: disk.slot,
            backend: handed(stream),
            qdev_id: disk.qdev_id.clone(),
            max_queues: disk.max_queues as usize,
            shape,
        }
    }
}

impl NicConnection {
    /// The NIC the gateway describes, over the connection it opened to its daemon.
    pub fn handed(
        nic: &ipc::NicLaunch,
        stream: UnixStream,
        shape: Option<ipc::LinkShape>,
    ) -> NicConnection {
        NicConnection {
            index: nic.index,
            slot: nic.slot,
            backend: handed(stream),
            qdev_id: nic.qdev_id.clone(),
            mac: nic.mac,
            queue_pairs: NicConnection::queue_pairs(nic),
            shape,
        }
    }

    /// The queue pairs a NIC gets: 1 to 7 (one more queue, the control queue, makes
    /// 15 of the 16 a device may have).
    pub fn queue_pairs(nic: &ipc::NicLaunch) -> u16 {
        nic.queue_pairs.clamp(1, 7) as u16
    }
}

/// How a function joins bus 0, and in which slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plug {
    /// Before the guest runs: it finds the function when it scans the bus.
    AtBoot(u8),
    /// While the VM lives: the guest is told (ACPI hotplug).
    Hot(u8),
}

/// A vhost-user device as attached: what the VM's control loop keeps of it.
struct Attached {
    slot: u8,
    config: ConfigChangeHandle,
    handover: Option<Handover>,
    link: Arc<Mutex<Link>>,
    pending: Option<UnixStream>,
}

/// What a vhost-user device needs to sit behind a virtio-pci transport on bus 0.
pub struct Transports<'a> {
    pub pci: &'a Mutex<PciRoot>,
    pub vm: &'a Arc<VmFd>,
    pub router: Arc<MsiRouter>,
    pub ram: &'a GuestRam,
    /// How long a backend has for its first connection.
    pub within: Duration,
}

impl Transports<'_> {
    pub fn attach_disk(&self, disk: DiskConnection, plug: Plug) -> Result<DiskHandle, AttachError> {
        let a = self.attach(
            format!("disk {}", disk.index),
            disk.qdev_id,
            Blk::new(disk.max_queues),
            disk.backend,
            disk.shape.as_ref(),
            plug,
        )?;
        Ok(DiskHandle {
            slot: a.slot,
            config: a.config,
            handover: a.handover,
            link: a.link,
            pending: a.pending,
        })
    }

    pub fn attach_nic(&self, nic: NicConnection, plug: Plug) -> Result<NicHandle, AttachError> {
        let net = Net::new(nic.mac, nic.queue_pairs);
        let link_up = net.link_up();
        let a = self.attach(
            format!("nic {}", nic.index),
            nic.qdev_id,
            net,
            nic.backend,
            nic.shape.as_ref(),
            plug,
        )?;
        Ok(NicHandle {
            slot: a.slot,
            link_state: LinkHandle::new(link_up, a.config),
            handover: a.handover,
            link: a.link,
            pending: a.pending,
        })
    }

    /// A `model` device served by `backend`, with its BAR assigned, in its slot.
    fn attach(
        &self,
        name: String,
        qdev_id: String,
        model: impl DeviceModel,
        backend: BackendConnection,
        shape: Option<&ipc::LinkShape>,
        plug: Plug,
    ) -> Result<Attached, AttachError> {
        let (reconnect, handover) = Reconnect::new(backend.path);
        let frontend = |error| AttachError::Frontend {
            name: name.clone(),
            error,
        };
        // Upgraded, the backend still serves the previous vmm-core: its connection
        // waits (`pending`) until the VM's state is in.
        let (device, pending) = match shape {
            Some(shape) => (
                VhostUserDevice::shaped(name.clone(), model, shape, reconnect, self.ram)
                    .map_err(frontend)?,
                Some(backend.stream),
            ),
            None => (
                VhostUserDevice::new(
                    name.clone(),
                    model,
                    backend.stream,
                    reconnect,
                    self.ram,
                    self.within,
                )
                .map_err(frontend)?,
                None,
            ),
        };
        let config = device.config_change_handle();
        let link = device.link();
        let slot = match self.place(name, qdev_id, device, plug) {
            Ok(slot) => slot,
            Err(e) => {
                // Its supervisor thread ends, its backend sees the hang-up.
                link.lock().close();
                return Err(e);
            }
        };
        Ok(Attached {
            slot,
            config,
            handover,
            link,
            pending,
        })
    }

    /// `device` behind a transport whose BAR comes from the window, in the slot `plug`
    /// says; on an error the BAR is back and nothing is left registered.
    fn place(
        &self,
        name: String,
        qdev_id: String,
        device: VhostUserDevice,
        plug: Plug,
    ) -> Result<u8, AttachError> {
        let pci = |error| AttachError::Pci {
            name: name.clone(),
            error,
        };
        let bar = self
            .pci
            .lock()
            .allocate_bar(virtio_pci::BAR_SIZE)
            .map_err(pci)?;
        let transport = VirtioPci::new(
            Box::new(device),
            bar.addr,
            self.vm.clone(),
            self.router.clone(),
        );
        let transport = match transport {
            Ok(t) => Arc::new(Mutex::new(t.with_qdev_id(qdev_id))),
            Err(error) => {
                self.pci.lock().release_bar(bar);
                return Err(AttachError::Transport { name, error });
            }
        };
        let mut root = self.pci.lock();
        let placed = match plug {
            Plug::AtBoot(slot) => root.add(transport.clone(), slot).map(|()| slot),
            Plug::Hot(slot) => root.hotplug(transport.clone(), Some(slot)),
        };
        if placed.is_err() {
            transport.lock().unplug();
            root.release_bar(bar);
        }
        placed.map_err(pci)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use vhost::vhost_user::message::VhostUserProtocolFeatures;

    use super::*;
    use crate::devices::gpe::Gpe0;
    use crate::devices::sci::SharedLine;
    use crate::devices::virtio_pci::transport::NOTIFY;
    use crate::devices::IrqLine;
    use crate::events::EventSender;
    use crate::layout::PCI_MMIO_START;
    use crate::test_kvm;
    use crate::vhost_user::test_backend::{mock_watched, Journal};
    use crate::vhost_user::VhostUserError;

    struct NoLine;
    impl IrqLine for NoLine {
        fn set_level(&self, _: bool) {}
    }

    struct Bus0 {
        pci: Mutex<PciRoot>,
        vm: Arc<VmFd>,
        router: Arc<MsiRouter>,
        ram: GuestRam,
    }

    /// Bus 0 with its hotplug controller, on a KVM VM.
    fn bus0() -> Bus0 {
        let vm = test_kvm::vm();
        let mut pci = PciRoot::default();
        let gpe = Arc::new(Mutex::new(Gpe0::new(
            SharedLine::new(Box::new(NoLine)).source(),
        )));
        pci.connect_hotplug(gpe, EventSender::channel().0);
        Bus0 {
            pci: Mutex::new(pci),
            router: MsiRouter::new(vm.clone()),
            vm,
            ram: GuestRam::new(4).unwrap(),
        }
    }

    impl Bus0 {
        fn transports(&self) -> Transports<'_> {
            Transports {
                pci: &self.pci,
                vm: &self.vm,
                router: self.router.clone(),
                ram: &self.ram,
                within: Duration::from_millis(200),
            }
        }
    }

    fn disk(index: u32, stream: UnixStream) -> DiskConnection {
        DiskConnection {
            index,
            slot: None,
            backend: BackendConnection { stream, path: None },
            qdev_id: format!("disk{index}"),
            max_queues: 1,
            shape: None,
        }
    }

    fn nic(index: u32, stream: UnixStream) -> NicConnection {
        NicConnection {
            index,
            slot: None,
            backend: BackendConnection { stream, path: None },
            qdev_id: String::new(),
            mac: [0x52, 0x54, 0, 0, 0, 1],
            queue_pairs: 1,
            shape: None,
        }
    }

    const FIRST_BAR: u64 = PCI_MMIO_START;

    #[test]
    fn a_device_goes_into_its_slot_at_boot_or_hot() {
        let bus = bus0();
        let journal = Journal::default();
        let protocol = VhostUserProtocolFeatures::empty();
        let t = bus.transports();
        let d = t.attach_disk(disk(4, mock_watched(&journal, protocol).0), Plug::AtBoot(3));
        assert_eq!(d.unwrap().slot, 3);
        let n = t.attach_nic(nic(0, mock_watched(&journal, protocol).0), Plug::Hot(9));
        assert_eq!(n.unwrap().slot, 9);
        let described: Vec<(u8, String)> = (bus.pci.lock().describe().into_iter())
            .map(|f| (f.slot, f.qdev_id))
            .collect();
        assert_eq!(
            described,
            [(0, String::new()), (3, "disk4".into()), (9, String::new())]
        );
        // Each with a BAR of its own and its kicks registered there.
        assert!(test_kvm::ioevent_at(&bus.vm, FIRST_BAR + NOTIFY));
        assert!(test_kvm::ioevent_at(
            &bus.vm,
            FIRST_BAR + virtio_pci::BAR_SIZE + NOTIFY
        ));
    }

    /// Whether the backend's end of a connection sees it closed.
    fn hung_up(theirs: &mut UnixStream) -> bool {
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        match theirs.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    #[test]
    fn a_device_that_finds_its_slot_taken_leaves_nothing() {
        let bus = bus0();
        let journal = Journal::default();
        let protocol = VhostUserProtocolFeatures::empty();
        let t = bus.transports();
        t.attach_disk(disk(0, mock_watched(&journal, protocol).0), Plug::Hot(2))
            .unwrap();
        let gsis_before = bus.router.allocate_gsi();
        let (stream, ended) = mock_watched(&journal, protocol);
        let e = t.attach_disk(disk(1, stream), Plug::Hot(2)).err().unwrap();
        assert_eq!(e.to_string(), "disk 1: PCI slot 2 is in use");
        assert!(
            ended.recv_timeout(Duration::from_secs(5)).is_ok(),
            "hung up on"
        );
        let second_bar = FIRST_BAR + virtio_pci::BAR_SIZE;
        assert!(!test_kvm::ioevent_at(&bus.vm, second_bar + NOTIFY));
        assert_eq!(
            bus.pci
                .lock()
                .allocate_bar(virtio_pci::BAR_SIZE)
                .unwrap()
                .addr,
            second_bar,
            "its BAR is back in the window"
        );
        // Its two GSIs come back before any new one.
        let next: Vec<u32> = (0..3).map(|_| bus.router.allocate_gsi()).collect();
        assert_eq!(next, [gsis_before + 1, gsis_before + 2, gsis_before + 3]);
        assert_eq!(bus.router.allocate_gsi(), gsis_before + 4);
    }

    #[test]
    fn a_device_whose_backend_never_answers_fails_in_bounded_time_leaving_nothing() {
        let bus = bus0();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let e = bus
            .transports()
            .attach_nic(nic(3, ours), Plug::Hot(5))
            .err()
            .unwrap();
        assert!(
            matches!(
                &e,
                AttachError::Frontend {
                    error: VhostUserError::NoAnswer(_),
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().starts_with("nic 3: "), "{e}");
        assert!(hung_up(&mut theirs));
        assert!(!bus.pci.lock().occupied(5));
        assert_eq!(
            bus.pci
                .lock()
                .allocate_bar(virtio_pci::BAR_SIZE)
                .unwrap()
                .addr,
            FIRST_BAR
        );
    }

    #[test]
    fn a_device_whose_transport_cannot_be_set_up_leaves_nothing() {
        let bus = bus0();
        // Something else's doorbell where the device's first kick would go.
        let squatter = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let at = kvm_ioctls::IoEventAddress::Mmio(FIRST_BAR + NOTIFY);
        bus.vm
            .register_ioevent(&squatter, &at, kvm_ioctls::NoDatamatch)
            .unwrap();
        let (stream, ended) = mock_watched(&Journal::default(), VhostUserProtocolFeatures::empty());
        let e = bus
            .transports()
            .attach_disk(disk(0, stream), Plug::Hot(1))
            .err()
            .unwrap();
        assert!(matches!(e, AttachError::Transport { .. }), "{e}");
        assert!(
            ended.recv_timeout(Duration::from_secs(5)).is_ok(),
            "hung up on"
        );
        assert!(!bus.pci.lock().occupied(1));
        assert_eq!(
            bus.pci
                .lock()
                .allocate_bar(virtio_pci::BAR_SIZE)
                .unwrap()
                .addr,
            FIRST_BAR
        );
    }
}
