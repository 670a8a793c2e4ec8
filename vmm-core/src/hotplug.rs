//! Devices that come and go while the VM lives (QMP device_add and device_del, through
//! the gateway): a disk or NIC attached into a given slot of bus 0 with the guest told
//! by ACPI hotplug, a removal asked of the guest, and a device the guest ejected let go
//! of: its KVM doorbells and interrupt routes, its backend connection, its place among
//! the VM's disks and NICs. Whether the VM may change now (not while it migrates) is the
//! runner's to say.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use crate::attach::{AttachError, DiskConnection, NicConnection, Plug, Transports};
use crate::devices::pci::PciError;
use crate::vhost_user::deadline::FIRST_CONNECTION;
use crate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("a device added to a running VM needs its PCI slot")]
    NoSlot,
    /// The gateway's index names a device this VM has.
    #[error("{0} exists already")]
    Exists(String),
    #[error("no connection to the device's daemon came with the request")]
    NoConnection,
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

impl Vm {
    /// What a device needs to join this VM's bus.
    pub(crate) fn transports(&self) -> Transports<'_> {
        Transports {
            pci: &self.pci,
            vm: &self.vm,
            router: self.router.clone(),
            ram: &self.ram,
            within: FIRST_CONNECTION,
        }
    }

    /// `VmmRequest::DiskAttach`: the disk in its slot, served over the daemon connection
    /// in `fds`, and the guest told. On an error nothing of it is left.
    pub(crate) fn hot_attach_disk(
        &mut self,
        disk: &ipc::DiskLaunch,
        fds: Vec<OwnedFd>,
    ) -> Result<u8, HotplugError> {
        let slot = self.hot_slot(disk.slot)?;
        if self.disks.contains_key(&disk.index) {
            return Err(HotplugError::Exists(format!("disk {}", disk.index)));
        }
        let connection = DiskConnection::handed(disk, connection(fds)?, None);
        let handle = self.transports().attach_disk(connection, Plug::Hot(slot))?;
        self.disks.insert(disk.index, handle);
        Ok(slot)
    }

    /// `VmmRequest::NicAttach`, as `hot_attach_disk`.
    pub(crate) fn hot_attach_nic(
        &mut self,
        nic: &ipc::NicLaunch,
        fds: Vec<OwnedFd>,
    ) -> Result<u8, HotplugError> {
        let slot = self.hot_slot(nic.slot)?;
        if self.nics.contains_key(&nic.index) {
            return Err(HotplugError::Exists(format!("NIC {}", nic.index)));
        }
        let connection = NicConnection::handed(nic, connection(fds)?, None);
        let handle = self.transports().attach_nic(connection, Plug::Hot(slot))?;
        self.nics.insert(nic.index, handle);
        Ok(slot)
    }

    /// The slot a device asks for, if it may go there now (checked before its backend
    /// is talked to).
    fn hot_slot(&self, slot: Option<u8>) -> Result<u8, HotplugError> {
        let slot = slot.ok_or(HotplugError::NoSlot)?;
        self.pci.lock().free_slot(slot)?;
        Ok(slot)
    }

    /// `VmmRequest::RequestUnplug`: the guest is asked to release the function in
    /// `slot`; it goes when the guest ejects it (`let_go_ejected`).
    pub(crate) fn request_unplug(&self, slot: u8) -> Result<(), HotplugError> {
        Ok(self.pci.lock().request_unplug(slot)?)
    }

    /// Lets go of the functions the guest ejected (off the bus already, their BARs back
    /// in the window), or a reset removed: their doorbells and routes leave KVM, their
    /// backends are hung up on, and they leave the VM's disks and NICs, so that no
    /// request finds them and nothing reconnects them. Returns their slots.
    pub(crate) fn let_go_ejected(&mut self) -> Vec<u8> {
        let ejected = self.pci.lock().take_ejected();
        ejected
            .into_iter()
            .map(|e| {
                e.function.lock().unplug();
                // Dropping a handle drops its handover: the supervisor waiting on it ends.
                self.disks.retain(|_, d| d.slot != e.slot);
                self.nics.retain(|_, n| n.slot != e.slot);
                e.slot
            })
            .collect()
    }
}

fn connection(fds: Vec<OwnedFd>) -> Result<UnixStream, HotplugError> {
    (fds.into_iter().next())
        .map(UnixStream::from)
        .ok_or(HotplugError::NoConnection)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    use std::path::Path;
    use std::sync::mpsc::Receiver;
    use std::time::Duration;

    use vhost::vhost_user::message::VhostUserProtocolFeatures;

    use super::*;
    use crate::attach::BackendConnection;
    use crate::boot::BootImage;
    use crate::builder::{build_vm, VmConfig};
    use crate::devices::pci::config::BAR0;
    use crate::devices::serial::Console;
    use crate::devices::virtio_pci::transport::NOTIFY;
    use crate::error::VmError;
    use crate::layout::ports;
    use crate::test_kvm::ioevent_at;
    use crate::vhost_user::test_backend::{mock_watched, Journal};

    /// A VM of 16 MiB and one vCPU with these devices, built as a migration's
    /// destination: nothing is loaded into it, so its "kernel" need only look like one
    /// (its vCPUs never run).
    pub fn built_vm(disks: Vec<DiskConnection>, nics: Vec<NicConnection>) -> Result<Vm, VmError> {
        built_vm_with(None, disks, nics)
    }

    /// `built_vm`, with memory hotplug's shape.
    pub fn built_vm_with(
        memory_hotplug: Option<ipc::MemoryHotplug>,
        disks: Vec<DiskConnection>,
        nics: Vec<NicConnection>,
    ) -> Result<Vm, VmError> {
        let config = VmConfig {
            memory_mib: 16,
            cpus: 1,
            max_cpus: 1,
            added_cpus: Vec::new(),
            start_paused: true,
            incoming: true,
            ram: None,
            memory_hotplug,
            cpu: Default::default(),
        };
        // SAFETY: memfd_create with a valid name; the descriptor is ours.
        let fd = unsafe { libc::memfd_create(c"kernel".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: just created, owned by nobody else.
        let mut kernel = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        kernel.write_all(b"\x7fELF\x02\x01").unwrap();
        let boot = BootImage::from_files((Path::new("kernel"), kernel), None, "").unwrap();
        let kvm =
            kvm_ioctls::Kvm::new().unwrap_or_else(|e| panic!("this test needs /dev/kvm: {e}"));
        build_vm(kvm, &config, boot, Console::none(), disks, nics)
    }

    /// A connection to a new mock backend, and what says it was hung up on.
    fn backend() -> (UnixStream, Receiver<()>) {
        mock_watched(&Journal::default(), VhostUserProtocolFeatures::empty())
    }

    fn boot_disk(index: u32, slot: Option<u8>) -> DiskConnection {
        DiskConnection {
            index,
            slot,
            backend: BackendConnection {
                stream: backend().0,
                path: None,
            },
            qdev_id: String::new(),
            max_queues: 1,
            shape: None,
        }
    }

    fn boot_nic(index: u32, slot: Option<u8>) -> NicConnection {
        NicConnection {
            index,
            slot,
            backend: BackendConnection {
                stream: backend().0,
                path: None,
            },
            qdev_id: String::new(),
            mac: [0x52, 0x54, 0, 0, 0, 1],
            queue_pairs: 1,
            shape: None,
        }
    }

    fn disk(index: u32, slot: Option<u8>) -> ipc::DiskLaunch {
        ipc::DiskLaunch {
            index,
            slot,
            id: format!("d{index}"),
            qdev_id: format!("disk{index}"),
            max_queues: 1,
        }
    }

    fn nic(index: u32, slot: Option<u8>) -> ipc::NicLaunch {
        ipc::NicLaunch {
            index,
            slot,
            id: format!("n{index}"),
            qdev_id: format!("nic{index}"),
            mac: [0x52, 0x54, 0, 0, 0, 2],
            queue_pairs: 1,
        }
    }

    /// Indexes and slots.
    type Placed = Vec<(u32, u8)>;

    /// The disks' and NICs' indexes and slots.
    fn devices(vm: &Vm) -> (Placed, Placed) {
        (
            vm.disks.iter().map(|(&i, d)| (i, d.slot)).collect(),
            vm.nics.iter().map(|(&i, n)| (i, n.slot)).collect(),
        )
    }

    /// What the guest's _EJ0 does: B0EJ with the slot's bit.
    fn eject(vm: &Vm, slot: u8) {
        let b0ej = u64::from(ports::PCI_HOTPLUG) + 8;
        assert!(vm.pio.write(b0ej, &(1u32 << slot).to_le_bytes()));
    }

    /// Where the first kick of the function in `slot` lands (BAR 0 as the guest reads
    /// it).
    fn kicks_at_bar_of(vm: &Vm, slot: u8) -> u64 {
        let mut bar = [0u8; 4];
        vm.pci.lock().config_read(0, slot, 0, BAR0, &mut bar);
        u64::from(u32::from_le_bytes(bar) & !0xf) + NOTIFY
    }

    #[test]
    fn launched_devices_keep_their_indexes_and_the_slots_asked_for() {
        let vm = built_vm(
            vec![boot_disk(0, None), boot_disk(4, Some(5))],
            vec![boot_nic(2, None)],
        )
        .unwrap();
        assert_eq!(devices(&vm), (vec![(0, 1), (4, 5)], vec![(2, 2)]));
        let e = built_vm(vec![boot_disk(1, None), boot_disk(1, None)], vec![])
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "two disks have index 1");
        let e = built_vm(vec![boot_disk(0, Some(3))], vec![boot_nic(0, Some(3))])
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "placing the devices on PCI bus 0: PCI slot 3 is in use"
        );
    }

    #[test]
    fn a_hot_plugged_device_joins_by_its_index_in_its_slot() {
        let mut vm = built_vm(vec![boot_disk(0, None)], vec![boot_nic(0, None)]).unwrap();
        let fds = || vec![OwnedFd::from(backend().0)];
        assert_eq!(vm.hot_attach_disk(&disk(5, Some(7)), fds()).unwrap(), 7);
        assert_eq!(vm.hot_attach_nic(&nic(3, Some(4)), fds()).unwrap(), 4);
        assert_eq!(devices(&vm), (vec![(0, 1), (5, 7)], vec![(0, 2), (3, 4)]));
        let qdev = |vm: &Vm, slot| {
            let described = vm.pci.lock().describe();
            described
                .into_iter()
                .find(|f| f.slot == slot)
                .map(|f| f.qdev_id)
        };
        assert_eq!(qdev(&vm, 7).as_deref(), Some("disk5"));
        let err = |r: Result<u8, HotplugError>| r.unwrap_err().to_string();
        assert_eq!(
            err(vm.hot_attach_disk(&disk(6, None), fds())),
            "a device added to a running VM needs its PCI slot"
        );
        assert_eq!(
            err(vm.hot_attach_disk(&disk(6, Some(0)), fds())),
            "PCI slot 0 holds part of the machine (the host bridge)"
        );
        assert_eq!(
            err(vm.hot_attach_disk(&disk(6, Some(32)), fds())),
            "PCI slot 32 does not exist (bus 0 has slots 0 to 31)"
        );
        assert_eq!(
            err(vm.hot_attach_nic(&nic(6, Some(7)), fds())),
            "PCI slot 7 is in use"
        );
        assert_eq!(
            err(vm.hot_attach_disk(&disk(5, Some(8)), fds())),
            "disk 5 exists already"
        );
        assert_eq!(
            err(vm.hot_attach_nic(&nic(0, Some(8)), fds())),
            "NIC 0 exists already"
        );
        assert_eq!(
            err(vm.hot_attach_disk(&disk(6, Some(8)), Vec::new())),
            "no connection to the device's daemon came with the request"
        );
        // A daemon gone before its handshake: nothing of the device stays.
        let (gone, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let e = err(vm.hot_attach_disk(&disk(6, Some(8)), vec![OwnedFd::from(gone)]));
        assert!(e.starts_with("disk 6: vhost-user "), "{e}");
        assert!(!vm.pci.lock().occupied(8));
        assert_eq!(devices(&vm).0, [(0, 1), (5, 7)]);
    }

    #[test]
    fn an_ejected_device_is_let_go_of_whether_hot_plugged_or_launched() {
        let (stream, boot_backend) = backend();
        let launched = DiskConnection {
            backend: BackendConnection { stream, path: None },
            ..boot_disk(0, None)
        };
        let mut vm = built_vm(vec![launched], vec![]).unwrap();
        let (stream, hot_backend) = backend();
        vm.hot_attach_nic(&nic(2, Some(6)), vec![OwnedFd::from(stream)])
            .unwrap();
        let hot_kicks = kicks_at_bar_of(&vm, 6);
        let boot_kicks = kicks_at_bar_of(&vm, 1);
        let link = vm.nics[&2].link.clone();
        assert!(ioevent_at(&vm.vm, hot_kicks) && ioevent_at(&vm.vm, boot_kicks));
        assert!(vm.let_go_ejected().is_empty());
        // The guest ejects the NIC (asked or not).
        eject(&vm, 6);
        assert_eq!(vm.let_go_ejected(), [6]);
        assert!(vm.nics.is_empty(), "no request finds it");
        assert!(!ioevent_at(&vm.vm, hot_kicks), "its doorbells left KVM");
        assert!(
            hot_backend.recv_timeout(Duration::from_secs(5)).is_ok(),
            "hung up on"
        );
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while std::sync::Arc::strong_count(&link) > 1 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            std::sync::Arc::strong_count(&link),
            1,
            "its supervisor ended"
        );
        // The launched disk goes the same way.
        eject(&vm, 1);
        assert_eq!(vm.let_go_ejected(), [1]);
        assert!(vm.disks.is_empty());
        assert!(!ioevent_at(&vm.vm, boot_kicks));
        assert!(boot_backend.recv_timeout(Duration::from_secs(5)).is_ok());
        // Its slot and BAR take the next device.
        assert_eq!(
            vm.hot_attach_disk(&disk(1, Some(1)), vec![OwnedFd::from(backend().0)])
                .unwrap(),
            1
        );
        assert_eq!(kicks_at_bar_of(&vm, 1), boot_kicks);
    }

    #[test]
    fn a_reset_finishes_the_removals_asked_for() {
        let mut vm = built_vm(vec![boot_disk(0, None), boot_disk(1, None)], vec![]).unwrap();
        assert_eq!(
            vm.request_unplug(0).unwrap_err().to_string(),
            "PCI slot 0 holds part of the machine (the host bridge)"
        );
        assert_eq!(
            vm.request_unplug(9).unwrap_err().to_string(),
            "PCI slot 9 is empty"
        );
        vm.request_unplug(2).unwrap();
        assert!(vm.let_go_ejected().is_empty(), "asked, not ejected");
        vm.pio.reset();
        assert_eq!(vm.let_go_ejected(), [2]);
        assert_eq!(devices(&vm).0, [(0, 1)]);
    }
}
