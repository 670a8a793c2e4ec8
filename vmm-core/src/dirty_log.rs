//! Dirty-page logging for a migration: KVM logs the vCPUs' writes per memory slot
//! (KVM_MEM_LOG_DIRTY_PAGES, read with KVM_GET_DIRTY_LOG, which only this process can
//! do), the vhost-user backends log their writes into a shared `PageLog`, and each sync
//! ORs KVM's log into that same `PageLog`, which the migration agent reads and clears.
//! Guest memory is RAM's memory slots and each DIMM's (memory.rs's hot regions): the log
//! covers them all, and each is a window of its own file for the agent.

use std::fs::File;
use std::os::fd::OwnedFd;

use ipc::{PageLog, RamWindow};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;

use crate::error::{kvm_err, KvmError};
use crate::memory::GuestRam;

#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("creating the dirty log: {0}")]
    Create(std::io::Error),
    #[error("dirty log: {0}")]
    Log(String),
    #[error("no migration is in progress")]
    NotStarted,
}

/// One KVM memory slot of guest memory.
struct Slot {
    slot: u32,
    guest_addr: u64,
    size: u64,
    host_addr: u64,
}

/// Every KVM memory slot of guest memory: RAM's, then the DIMMs'.
fn slots(ram: &GuestRam) -> Vec<Slot> {
    let ram_slots = (0u32..).zip(ram.regions()).map(|(slot, r)| Slot {
        slot,
        guest_addr: r.guest_addr,
        size: r.size,
        // A region without a host address was refused when RAM was mapped.
        host_addr: ram.host_addr(r).unwrap_or(0),
    });
    let dimms = ram.hot_regions().iter().map(|h| Slot {
        slot: h.kvm_slot,
        guest_addr: h.guest_addr,
        size: h.size,
        host_addr: h.mapping.as_ptr() as u64,
    });
    ram_slots.chain(dimms).collect()
}

/// Registers guest memory (RAM and the DIMMs) with KVM, with dirty logging on or off.
pub fn register_ram(vm: &VmFd, ram: &GuestRam, log_dirty: bool) -> Result<(), KvmError> {
    for s in slots(ram) {
        let mr = kvm_userspace_memory_region {
            slot: s.slot,
            flags: if log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: s.guest_addr,
            memory_size: s.size,
            userspace_addr: s.host_addr,
        };
        // SAFETY: the mapping behind `userspace_addr` lives as long as `ram` holds it
        // (RAM for the VM's life, a DIMM until it is taken out of KVM first).
        unsafe { vm.set_user_memory_region(mr) }.map_err(kvm_err("registering guest RAM"))?;
    }
    Ok(())
}

/// Guest memory's windows as the migration agent needs them: RAM's in its memfd (file
/// 0), then each DIMM's in its own file (1, 2, ... in the order of `memory_files`).
pub fn windows(ram: &GuestRam) -> Vec<RamWindow> {
    let ram_windows = ram.regions().iter().map(|r| RamWindow {
        guest_addr: r.guest_addr,
        size: r.size,
        file_offset: r.file_offset,
        file: 0,
    });
    let dimms = (1u32..).zip(ram.hot_regions()).map(|(file, h)| RamWindow {
        guest_addr: h.guest_addr,
        size: h.size,
        file_offset: 0,
        file,
    });
    ram_windows.chain(dimms).collect()
}

/// Guest memory's files, in the order `windows` names them: RAM's memfd, then each
/// DIMM's.
pub fn memory_files(ram: &GuestRam) -> std::io::Result<Vec<OwnedFd>> {
    let dimms = ram.hot_regions().iter().map(|h| h.file.try_clone());
    (std::iter::once(ram.memfd().try_clone()).chain(dimms))
        .map(|f| f.map(OwnedFd::from))
        .collect()
}

pub struct DirtyLog {
    log: PageLog,
}

impl DirtyLog {
    /// Turns logging on: KVM's, and a clear shared log covering all of guest memory
    /// (no DIMM comes or goes while it is on: the runner refuses it).
    pub fn start(vm: &VmFd, ram: &GuestRam) -> Result<DirtyLog, DirtyLogError> {
        let end = slots(ram)
            .iter()
            .map(|s| s.guest_addr + s.size)
            .max()
            .unwrap_or(0);
        let log = PageLog::create(end).map_err(DirtyLogError::Create)?;
        register_ram(vm, ram, true)?;
        Ok(DirtyLog { log })
    }

    pub fn log(&self) -> &PageLog {
        &self.log
    }

    /// A handle on the log's memfd, for the agent and the backends.
    pub fn file(&self) -> std::io::Result<File> {
        Ok(File::from(self.log.fd().try_clone_to_owned()?))
    }

    /// Moves what KVM logged since the last sync into the shared log; returns how many
    /// pages the shared log holds now.
    pub fn sync(&self, vm: &VmFd, ram: &GuestRam) -> Result<u64, DirtyLogError> {
        for s in slots(ram) {
            let bits = vm
                .get_dirty_log(s.slot, s.size as usize)
                .map_err(kvm_err("reading the dirty log"))?;
            self.log
                .or_bits(s.guest_addr / ipc::page_log::PAGE_SIZE, &bits)
                .map_err(DirtyLogError::Log)?;
        }
        Ok(self.log.count())
    }

    /// Turns KVM's logging off (the shared log goes with self).
    pub fn stop(self, vm: &VmFd, ram: &GuestRam) -> Result<(), DirtyLogError> {
        Ok(register_ram(vm, ram, false)?)
    }
}
