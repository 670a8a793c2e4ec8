//! device_add and device_del of a pc-dimm (ACPI memory hotplug), with QEMU 7.2's checks in
//! its order and its words: the properties as they are set (memdev names a memory backend
//! object), then pc_dimm_pre_plug's slot (`slot=`, or the first free one), then
//! memory_device_pre_plug's place in the device memory region (the space maxmem leaves,
//! `addr=` or the first free range, aligned as the backend's memory is: 2 MiB for
//! memory-backend-ram, the page for -memfd and -file), then realize's (the backend not in
//! use, node 0). The DIMM holds its backend object (object-del refuses it) and goes to
//! vmm-core with the backend's fd (`VmmRequest::MemoryAttach`), which maps it, gives it to
//! KVM and the vhost-user backends and tells the guest. device_del asks the guest
//! (`MemoryUnplug`); when it ejects the DIMM, vmm-core lets go of the memory
//! (`VmmEvent::MemoryEjected`), the backend is released and DEVICE_DELETED goes out.

use std::os::fd::{AsFd, OwnedFd};

use ipc::{DimmLaunch, VmmReply, VmmRequest};
use serde_json::{json, Value};

use super::placement::{
    choose_addr, choose_slot, DeviceMemory, Dimm, DimmProps, MIB, PAGE, RAM_ALIGN,
};
use super::spec::DeviceSpec;
use super::{Backend, DeviceError, Ticket};
use crate::events::{DeviceDeleted, Event};
use crate::gateway::Gateway;
use crate::objects::memory_backend::BackendKind;
use crate::objects::Object;
use crate::upgrade::CHANGING;

impl Gateway {
    /// RAM and memory hotplug as launched.
    fn device_memory(&self) -> DeviceMemory {
        let launch = self.vmm_child.launch.lock();
        match launch.as_ref() {
            Some(vm) => DeviceMemory::of(vm.config.memory_mib * MIB, vm.config.memory_hotplug),
            None => DeviceMemory::of(0, None),
        }
    }

    /// A handle on each memory backend's memory, in the order given (a live upgrade's
    /// vmm-core maps the DIMMs' memory from them).
    pub fn dimm_memory(&self, memdevs: &[String]) -> Result<Vec<OwnedFd>, String> {
        (memdevs.iter())
            .map(|m| {
                self.objects
                    .with_memory_backend(m, |b| b.fd().try_clone_to_owned())
                    .ok_or_else(|| format!("no memory backend {m}"))?
                    .map_err(|e| format!("a handle on {m}'s memory: {e}"))
            })
            .collect()
    }

    /// The rest of device_add for a pc-dimm, once its id is taken.
    pub(super) fn dimm_add(
        &self,
        spec: &DeviceSpec,
        ticket: &Ticket,
    ) -> Result<Backend, DeviceError> {
        let (dimm, fd) = self.plan_dimm(spec, &self.device_memory(), true)?;
        let attached = match self
            .vmm
            .request(VmmRequest::MemoryAttach(dimm.launch), &[fd.as_fd()])
        {
            Ok(VmmReply::Done) => Ok(()),
            Ok(other) => Err(DeviceError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = attached {
            self.objects.release(&dimm.memdev);
            return Err(e);
        }
        let DimmLaunch { slot, addr, size } = dimm.launch;
        log::info!(
            "pc-dimm {} added in memory slot {slot} at {addr:#x} ({size:#x} bytes of {})",
            ticket.qom_path,
            dimm.memdev
        );
        Ok(Backend::Dimm(dimm))
    }

    /// A pc-dimm of the command line (`--device pc-dimm,...`, QEMU's -device): placed
    /// and checked as device_add places it, in `memory` (the launch's), and on the
    /// machine from the start (vmm-core's launch maps it: `OpenedVm::add_dimm`, with the
    /// fd returned).
    pub fn launch_dimm(
        &self,
        args: &serde_json::Map<String, Value>,
        memory: &DeviceMemory,
    ) -> Result<(Dimm, OwnedFd), DeviceError> {
        let spec = DeviceSpec::read(args)?;
        let ticket = self
            .devices
            .lock()
            .reserve(spec.model, spec.id.as_deref())?;
        match self.plan_dimm(&spec, memory, false) {
            Ok((dimm, fd)) => {
                (self.devices.lock()).added(&ticket, Backend::Dimm(dimm.clone()));
                Ok((dimm, fd))
            }
            Err(e) => {
                self.devices.lock().abandon(&ticket);
                Err(e)
            }
        }
    }

    /// A new DIMM's place and memory, by QEMU 7.2's checks in its order; its memory
    /// backend is held from now on (released by the caller if the DIMM does not come).
    fn plan_dimm(
        &self,
        spec: &DeviceSpec,
        memory: &DeviceMemory,
        hotplugged: bool,
    ) -> Result<(Dimm, OwnedFd), DeviceError> {
        if spec.model != super::spec::Model::Dimm {
            return Err(DeviceError::Unexpected(format!(
                "{} is not a pc-dimm",
                spec.model.typename()
            )));
        }
        let props = DimmProps::read(spec)?;
        // The link is resolved when it is set: a missing object, or one of another kind.
        if let Some(memdev) = &props.memdev {
            let kind = self.objects.each(|id, o| match (id == memdev, o) {
                (true, Object::MemoryBackend(_)) => Some(true),
                (true, _) => Some(false),
                _ => None,
            });
            match kind.first() {
                None => return Err(DeviceError::NoMemdev(memdev.clone())),
                Some(false) => return Err(DeviceError::NotAMemdev),
                Some(true) => {}
            }
        }
        let dimms = self.devices.lock().dimms();
        let slot = choose_slot(memory, props.slot, &dimms)?;
        let memdev = props.memdev.clone().ok_or(DeviceError::MemdevNotSet)?;
        let (size, align) = self
            .objects
            .with_memory_backend(&memdev, |b| {
                let align = match b.spec.kind {
                    BackendKind::Ram => RAM_ALIGN,
                    BackendKind::Memfd | BackendKind::File { .. } => PAGE,
                };
                (b.spec.size, align)
            })
            .ok_or_else(|| DeviceError::NoMemdev(memdev.clone()))?;
        let addr = choose_addr(memory, props.addr, size, align, &dimms)?;
        if self.objects.in_use(&memdev) {
            return Err(DeviceError::MemdevBusy(memdev));
        }
        if let Some(node) = props.node.filter(|&n| n > 0) {
            return Err(DeviceError::NoNumaNode(node));
        }
        // The backend's memory goes to vmm-core with a handle of its own.
        let fd = self
            .objects
            .with_memory_backend(&memdev, |b| b.fd().try_clone_to_owned())
            .ok_or_else(|| DeviceError::NoMemdev(memdev.clone()))?
            .map_err(|e| DeviceError::Unexpected(format!("a handle on {memdev}'s memory: {e}")))?;
        self.objects
            .hold(&memdev, |o| matches!(o, Object::MemoryBackend(_)))
            .map_err(|_| DeviceError::NoMemdev(memdev.clone()))?;
        let launch = DimmLaunch { slot, addr, size };
        Ok((
            Dimm {
                memdev,
                launch,
                hotplugged,
            },
            fd,
        ))
    }

    /// device_del of a pc-dimm in memory slot `slot`: the guest is asked (again, if
    /// asked before: QEMU asks again too).
    pub(super) fn dimm_del(&self, slot: u32) -> Result<(), DeviceError> {
        if self.migrator.in_progress() {
            return Err(DeviceError::DelMigrating);
        }
        match self.vmm.request(VmmRequest::MemoryUnplug { slot }, &[]) {
            Ok(VmmReply::Done) => Ok(()),
            Ok(other) => Err(DeviceError::Unexpected(format!("{other:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// The guest ejected the DIMM in memory slot `slot` and vmm-core let go of its memory:
    /// its backend is free, and DEVICE_DELETED goes out (one: a DIMM has no backend
    /// child).
    pub fn dimm_ejected(&self, slot: u32) {
        let _one = CHANGING.lock();
        let Some(device) = self.devices.lock().ejected_dimm(slot) else {
            log::warn!("vmm-core ejected memory slot {slot}, which holds no DIMM of ours");
            return;
        };
        if let Some(Backend::Dimm(d)) = &device.backend {
            self.objects.release(&d.memdev);
        }
        self.devices_changed();
        log::info!("{} removed from memory slot {slot}", device.qom_path);
        self.events.emit(Event::DeviceDeleted(DeviceDeleted {
            device: device.qdev_id.clone(),
            path: device.qom_path,
        }));
    }

    /// query-memory-devices: the DIMMs by address, as QEMU 7.2 lists them.
    pub fn memory_devices(&self) -> Value {
        let devices = self.devices.lock().dimm_devices();
        let mut list: Vec<(u64, Value)> = devices
            .into_iter()
            .map(|(id, d)| {
                let mut data = json!({
                    "addr": d.launch.addr,
                    "size": d.launch.size,
                    "slot": d.launch.slot,
                    "node": 0,
                    "memdev": format!("/objects/{}", d.memdev),
                    "hotplugged": d.hotplugged,
                    "hotpluggable": true,
                });
                if let Some(id) = id {
                    data["id"] = json!(id);
                }
                (d.launch.addr, json!({"type": "dimm", "data": data}))
            })
            .collect();
        list.sort_by_key(|(addr, _)| *addr);
        Value::Array(list.into_iter().map(|(_, v)| v).collect())
    }
}
