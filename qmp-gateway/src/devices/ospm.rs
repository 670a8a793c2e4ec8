//! What the guest's _OST said about each ACPI hotplug slot: query-acpi-ospm-status and
//! ACPI_DEVICE_OST, as QEMU 7.2's pc machine gives them. vmm-core keeps the reports
//! (`VmmRequest::QueryAcpiSlots`); the gateway names each slot's device: the memory slots
//! first (a DIMM's id), then every possible vCPU by index once the guest left the legacy
//! CPU hotplug mode (the id of a CPU device_add made with one; none for the launch's
//! vCPUs and cpu-add's), "device" left out where there is no id, as QEMU does.

use ipc::{AcpiSlot, SlotOst, VmmReply, VmmRequest};
use serde_json::Value;

use super::DeviceError;
use crate::events::{AcpiOstInfo, Event};
use crate::gateway::Gateway;

impl Gateway {
    /// The id of vCPU `index`'s CPU device, if device_add gave it one.
    fn vcpu_device_id(&self, index: u32) -> Option<String> {
        let path = self.vcpu_qom_path(index);
        let devices = self.devices.lock();
        devices.find(&path).ok().and_then(|d| d.qdev_id.clone())
    }

    /// `slot`'s report, with its device's id.
    fn ost_info(&self, slot: AcpiSlot, ost: SlotOst) -> AcpiOstInfo {
        let (device, number, slot_type) = match slot {
            AcpiSlot::Dimm(n) => (self.devices.lock().dimm_id(n), n, "DIMM"),
            AcpiSlot::Cpu(n) => (self.vcpu_device_id(n), n, "CPU"),
        };
        AcpiOstInfo {
            device,
            slot: number.to_string(),
            slot_type,
            source: i64::from(ost.source),
            status: i64::from(ost.status),
        }
    }

    /// The guest's _OST about `slot`: ACPI_DEVICE_OST.
    pub fn acpi_ost(&self, slot: AcpiSlot, ost: SlotOst) {
        self.events
            .emit(Event::AcpiDeviceOst(self.ost_info(slot, ost)));
    }

    /// query-acpi-ospm-status: the memory slots, then the vCPUs (QEMU's piix4 order).
    pub fn acpi_ospm_status(&self) -> Result<Vec<Value>, DeviceError> {
        let (dimms, cpus) = match self.vmm.request(VmmRequest::QueryAcpiSlots, &[]) {
            Ok(VmmReply::AcpiSlots { dimms, cpus }) => (dimms, cpus),
            Ok(other) => return Err(DeviceError::Unexpected(format!("{other:?}"))),
            Err(e) => return Err(e.into()),
        };
        let slots = ((0..).zip(dimms).map(|(n, ost)| (AcpiSlot::Dimm(n), ost)))
            .chain((0..).zip(cpus).map(|(n, ost)| (AcpiSlot::Cpu(n), ost)));
        slots
            .map(|(slot, ost)| {
                serde_json::to_value(self.ost_info(slot, ost))
                    .map_err(|e| DeviceError::Unexpected(e.to_string()))
            })
            .collect()
    }
}
