//! Where DIMMs go and which are there (ACPI memory hotplug, dimms.rs): the memory hotplug
//! register block, the device memory region (`ipc::MemoryHotplug::region`) and the DIMMs
//! by memory slot, with the checks a new DIMM passes before anything of it is made.

use std::collections::BTreeMap;

use crate::devices::memory_hotplug::{DimmRange, MemorySlotError, SharedMemoryHotplug};
use crate::error::KvmError;
use crate::memory::MemoryError;

/// DIMM slot N is KVM memory slot DIMM_KVM_SLOTS + N (RAM takes at most two before it).
pub(crate) const DIMM_KVM_SLOTS: u32 = 8;
pub(crate) const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DimmError {
    #[error("memory hotplug is not enabled: the VM has no memory slots")]
    NotEnabled,
    #[error(transparent)]
    Slot(#[from] MemorySlotError),
    #[error("a DIMM's address and size must be whole pages ({addr:#x}+{size:#x})")]
    NotPages { addr: u64, size: u64 },
    #[error("the DIMM [{addr:#x}+{size:#x}] is outside device memory [{base:#x}+{region:#x}]")]
    Outside {
        addr: u64,
        size: u64,
        base: u64,
        region: u64,
    },
    #[error("the DIMM [{addr:#x}+{size:#x}] overlaps the one in slot {slot}")]
    Overlap { addr: u64, size: u64, slot: u32 },
    #[error("no memory backend came with the request")]
    NoBackend,
    /// QEMU's words.
    #[error("hypervisor has no free memory slots left")]
    NoKvmSlot,
    /// QEMU's words, and which device.
    #[error("a used vhost backend has no free memory slots left ({0})")]
    NoBackendRoom(String),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
}

/// Where DIMMs go and which are there.
pub struct DeviceMemory {
    pub hotplug: SharedMemoryHotplug,
    pub base: u64,
    pub size: u64,
    /// The DIMMs by slot.
    pub(crate) dimms: BTreeMap<u32, DimmRange>,
}

impl DeviceMemory {
    pub fn new(hotplug: SharedMemoryHotplug, base: u64, size: u64) -> DeviceMemory {
        DeviceMemory {
            hotplug,
            base,
            size,
            dimms: BTreeMap::new(),
        }
    }

    /// Whether a DIMM may go into `slot` at [addr, addr + size).
    pub(crate) fn check(&self, slot: u32, addr: u64, size: u64) -> Result<(), DimmError> {
        self.hotplug.lock().check_free(slot)?;
        if size == 0 || !addr.is_multiple_of(PAGE) || !size.is_multiple_of(PAGE) {
            return Err(DimmError::NotPages { addr, size });
        }
        let end = addr.checked_add(size);
        if addr < self.base || end.is_none_or(|end| end > self.base + self.size) {
            return Err(DimmError::Outside {
                addr,
                size,
                base: self.base,
                region: self.size,
            });
        }
        let end = addr + size;
        if let Some((&slot, _)) = self
            .dimms
            .iter()
            .find(|(_, d)| addr < d.addr + d.size && d.addr < end)
        {
            return Err(DimmError::Overlap { addr, size, slot });
        }
        Ok(())
    }
}
