//! device_add and device_del, in QEMU 7.2's order of checks: the options (id, driver,
//! bus), the id taken, the properties (the drive or netdev they name), the slot, then
//! the model's own checks; the disk or NIC made by its layer (its daemon started,
//! sandboxed and supervised) and handed to vmm-core, which puts it on bus 0 and tells
//! the guest (ACPI hotplug). Any failure undoes it all. device_del asks vmm-core to ask
//! the guest; when (if ever) the guest ejects the device, vmm-core says so
//! (`VmmEvent::DeviceEjected`) and `device_ejected` stops its daemon, removes it from its
//! layer and sends DEVICE_DELETED as QEMU does: first for its virtio backend, then for
//! the device. After each change the devices a new vmm-core is launched with (a live
//! upgrade) and the shape a migration checks are the current ones. The command line's
//! --device disks and NICs are made the same way (`launch_device`), before vmm-core is
//! launched with them.

use std::os::fd::{AsFd, OwnedFd};

use ipc::{VmmReply, VmmRequest};
use serde_json::{Map, Value};

use super::spec::{DeviceSpec, Model, Props, MAX_QUEUES};
use super::{Backend, DeviceError, Ticket};
use crate::block::hotplug::DeviceDisk;
use crate::events::{DeviceDeleted, Event};
use crate::gateway::Gateway;
use crate::net::hotplug::DeviceNic;
use crate::objects::Object;
use crate::upgrade::CHANGING;

/// How a device arrives: device_add's hot plug (vmm-core puts it on the running
/// machine), or the launch's cold plug (vmm-core is launched with it) in a VM of `cpus`
/// vCPUs.
#[derive(Clone, Copy)]
enum Plug {
    Hot,
    Cold { cpus: u32 },
}

/// A disk or NIC made: what vmm-core has for it, the iothread it holds, and (cold plug)
/// vmm-core's end of its backend's socket, for the launch.
struct Made {
    backend: Backend,
    iothread: Option<String>,
    stream: Option<OwnedFd>,
}

impl Gateway {
    /// device_add.
    pub fn device_add(&self, args: &Map<String, Value>) -> Result<(), DeviceError> {
        let spec = DeviceSpec::read(args)?;
        if self.migrator.in_progress() {
            return Err(DeviceError::AddMigrating);
        }
        if let Model::Cpu(_) = spec.model {
            return self.cpu_device_add(&spec);
        }
        // One device change (or live upgrade) at a time: each ends with the device list
        // a new vmm-core gets.
        let _one = CHANGING.lock();
        let ticket = self
            .devices
            .lock()
            .reserve(spec.model, spec.id.as_deref())?;
        let added = match spec.model {
            Model::Dimm => self.dimm_add(&spec, &ticket).map(|b| (b, None)),
            _ => (self.add_reserved(&spec, &ticket, Plug::Hot)).map(|m| (m.backend, m.iothread)),
        };
        match &added {
            Ok((backend, iothread)) => {
                let mut devices = self.devices.lock();
                devices.added(&ticket, backend.clone());
                devices.set_iothread(&ticket, iothread.clone());
                drop(devices);
                self.devices_changed();
            }
            Err(_) => self.devices.lock().abandon(&ticket),
        }
        added.map(drop)
    }

    /// A --device disk or NIC (QEMU's -device): made as device_add makes one, in its slot
    /// before vmm-core boots, so the guest finds it at boot as QEMU's cold-plugged devices
    /// (`cpus`: the VM's, for a disk's default queues). Returns what vmm-core is launched
    /// with and its end of the backend's socket.
    pub fn launch_device(
        &self,
        spec: &DeviceSpec,
        cpus: u32,
    ) -> Result<(Backend, OwnedFd), DeviceError> {
        let ticket = self
            .devices
            .lock()
            .reserve(spec.model, spec.id.as_deref())?;
        let made = self.add_reserved(spec, &ticket, Plug::Cold { cpus });
        let mut devices = self.devices.lock();
        match made {
            Ok(Made {
                backend,
                iothread,
                stream: Some(stream),
            }) => {
                devices.added(&ticket, backend.clone());
                devices.set_iothread(&ticket, iothread);
                Ok((backend, stream))
            }
            Ok(_) => Err(DeviceError::Unexpected("no backend connection".into())),
            Err(e) => {
                devices.abandon(&ticket);
                Err(e)
            }
        }
    }

    /// The rest of device_add, once the id is taken: the device's backend and the
    /// iothread it holds (released here if the add fails).
    fn add_reserved(
        &self,
        spec: &DeviceSpec,
        ticket: &Ticket,
        plug: Plug,
    ) -> Result<Made, DeviceError> {
        let props = spec.properties()?;
        if let Some(index) = props.bootindex() {
            self.devices.lock().take_bootindex(ticket, index)?;
        }
        let iothread = match &props {
            Props::Blk(b) => b.iothread.clone(),
            Props::Net(_) => None,
        };
        if let Some(name) = &iothread {
            self.hold_iothread(name)?;
        }
        let added = self.add_with_props(spec, ticket, props, plug);
        if let (Err(_), Some(name)) = (&added, &iothread) {
            self.objects.release(name);
        }
        added.map(|(backend, stream)| Made {
            backend,
            iothread,
            stream,
        })
    }

    /// An iothread object held for a device placed on it, as QEMU's link property looks
    /// it up.
    fn hold_iothread(&self, name: &str) -> Result<(), DeviceError> {
        if self
            .objects
            .hold(name, |o| matches!(o, Object::IoThread(_)))
            .is_ok()
        {
            return Ok(());
        }
        match self.objects.exists(name) {
            true => Err(DeviceError::NotAnIothread),
            false => Err(DeviceError::NoIothread(name.to_string())),
        }
    }

    fn add_with_props(
        &self,
        spec: &DeviceSpec,
        ticket: &Ticket,
        props: Props,
        plug: Plug,
    ) -> Result<(Backend, Option<OwnedFd>), DeviceError> {
        // What the properties name is looked up when they are set, before the slot.
        match &props {
            Props::Blk(b) => {
                if let Some(drive) = &b.drive {
                    let backend = format!("{}/virtio-backend", ticket.qom_path);
                    self.block.check_drive(drive, &backend)?;
                }
            }
            Props::Net(n) => {
                if let Some(netdev) = &n.netdev {
                    self.net.check_netdev(netdev)?;
                }
            }
        }
        let slot = self.devices.lock().place(ticket, props.addr())?;
        let qdev_id = spec.id.clone();
        let (backend, stream, request) = match props {
            Props::Blk(b) => {
                let drive = b.drive.ok_or(DeviceError::DriveNotSet)?;
                // QEMU's default: a queue per vCPU.
                let cpus = match plug {
                    Plug::Hot => self.cpus(),
                    Plug::Cold { cpus } => cpus,
                };
                let queues = b.num_queues.unwrap_or_else(|| cpus.clamp(1, MAX_QUEUES));
                if queues == 0 {
                    return Err(DeviceError::NoQueues);
                }
                if queues > MAX_QUEUES {
                    return Err(DeviceError::TooManyQueues(MAX_QUEUES));
                }
                let disk = DeviceDisk {
                    drive,
                    qdev_id,
                    qom_path: ticket.qom_path.clone(),
                    serial: b.serial,
                    queues,
                    iothread: b.iothread,
                };
                let (launch, stream) = match plug {
                    Plug::Hot => self.block.add_device_disk(disk, slot)?,
                    Plug::Cold { .. } => self.block.add_launch_disk(disk, slot)?,
                };
                let request = VmmRequest::DiskAttach(launch.clone());
                (Backend::Disk(launch), stream, request)
            }
            Props::Net(n) => {
                let netdev = n.netdev.ok_or(DeviceError::NoNetdev)?;
                let nic = DeviceNic {
                    netdev,
                    qdev_id,
                    qom_path: ticket.qom_path.clone(),
                    mac: n.mac,
                };
                let (launch, stream) = self.net.add_device_nic(nic, slot)?;
                let request = VmmRequest::NicAttach(launch.clone());
                (Backend::Nic(launch), stream, request)
            }
        };
        if let Plug::Cold { .. } = plug {
            // The launch hands it to vmm-core, which boots with it.
            return Ok((backend, Some(stream)));
        }
        // The connection is vmm-core's alone once sent (`stream` is closed here).
        let attached = match self.vmm.request(request, &[stream.as_fd()]) {
            Ok(VmmReply::Done) => Ok(()),
            Ok(other) => Err(DeviceError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(e.into()),
        };
        drop(stream);
        if let Err(e) = attached {
            self.remove_backend(&backend);
            return Err(e);
        }
        log::info!(
            "{} {} added in slot {slot}",
            spec.model.typename(),
            ticket.qom_path
        );
        Ok((backend, None))
    }

    /// device_del: the guest is asked to let the device go.
    pub fn device_del(&self, id: &str) -> Result<(), DeviceError> {
        let _one = CHANGING.lock();
        let dimm = self.devices.lock().begin_dimm_removal(id)?;
        if let Some(slot) = dimm {
            return self.dimm_del(slot);
        }
        let removal = self.devices.lock().begin_removal(id)?;
        let slot = removal.slot;
        let asked = if self.migrator.in_progress() {
            Err(DeviceError::DelMigrating)
        } else {
            match self.vmm.request(VmmRequest::RequestUnplug { slot }, &[]) {
                Ok(VmmReply::Done) => Ok(()),
                Ok(other) => Err(DeviceError::Unexpected(format!("{other:?}"))),
                Err(e) => Err(e.into()),
            }
        };
        if asked.is_err() {
            self.devices.lock().removal_failed(&removal);
        }
        asked
    }

    /// The guest ejected the device in `slot` (asked to or not) and vmm-core let go of
    /// it: its daemon stops, it leaves its layer, and DEVICE_DELETED goes out. Runs on
    /// a thread of its own, not vmm-core's reader (it waits for daemons and locks held
    /// across calls to vmm-core).
    pub fn device_ejected(&self, slot: u8) {
        let _one = CHANGING.lock();
        let Some(device) = self.devices.lock().ejected(slot) else {
            log::warn!("vmm-core ejected slot {slot}, which holds no device of ours");
            return;
        };
        if let Some(backend) = &device.backend {
            self.remove_backend(backend);
        }
        if let Some(name) = &device.iothread {
            self.objects.release(name);
        }
        self.devices_changed();
        log::info!("{} removed from slot {slot}", device.qom_path);
        // QEMU unparents the virtio backend (no id) before the device itself.
        self.events.emit(Event::DeviceDeleted(DeviceDeleted {
            device: None,
            path: device.backend_path(),
        }));
        self.events.emit(Event::DeviceDeleted(DeviceDeleted {
            device: device.qdev_id.clone(),
            path: device.qom_path,
        }));
    }

    fn remove_backend(&self, backend: &Backend) {
        match backend {
            Backend::Disk(l) => {
                self.block.remove_disk(&l.id);
            }
            Backend::Nic(l) => {
                self.net.remove_nic(&l.id);
            }
            // vmm-core's own: nothing of it runs here. The VM has no balloon any more:
            // balloon and query-balloon say so, and a new vmm-core makes none.
            Backend::Balloon(_) => {
                if let Some(vm) = self.vmm_child.launch.lock().as_mut() {
                    vm.config.balloon = None;
                }
            }
            // Never in a PCI slot: its memory goes with the eject of its memory slot
            // (dimm.rs).
            Backend::Dimm(d) => self.objects.release(&d.memdev),
        }
    }

    /// The VM's vCPUs, as launched.
    fn cpus(&self) -> u32 {
        (self.vmm_child.launch.lock().as_ref()).map_or(1, |vm| vm.config.cpus.max(1))
    }

    /// A new vmm-core (live upgrade) recreates the devices there are now, in their
    /// slots; a migration's destination must have the same.
    pub(super) fn devices_changed(&self) {
        let lists = self.devices.lock().launch_lists();
        if let Some(vm) = self.vmm_child.launch.lock().as_mut() {
            vm.set_devices(lists);
            self.migrator.set_shape(vm.shape());
        }
    }
}
