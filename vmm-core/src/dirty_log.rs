//! Dirty-page logging for a migration: KVM logs the vCPUs' writes per memory slot
//! (KVM_MEM_LOG_DIRTY_PAGES, read with KVM_GET_DIRTY_LOG, which only this process can
//! do), the vhost-user backends log their writes into a shared `PageLog`, and each sync
//! ORs KVM's log into that same `PageLog`, which the migration agent reads and clears.

use std::fs::File;

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

/// Registers guest RAM with KVM, with dirty logging on or off.
pub fn register_ram(vm: &VmFd, ram: &GuestRam, log_dirty: bool) -> Result<(), KvmError> {
    for (slot, region) in ram.regions().iter().enumerate() {
        let mr = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: if log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: region.guest_addr,
            memory_size: region.size,
            // A region without a host address was refused when RAM was mapped.
            userspace_addr: ram.host_addr(region).unwrap_or(0),
        };
        // SAFETY: the mapping behind `userspace_addr` lives as long as `ram`, which the
        // Vm owns for as long as the KVM VM exists.
        unsafe { vm.set_user_memory_region(mr) }.map_err(kvm_err("registering guest RAM"))?;
    }
    Ok(())
}

/// Guest RAM's windows as the migration agent needs them.
pub fn windows(ram: &GuestRam) -> Vec<RamWindow> {
    ram.regions()
        .iter()
        .map(|r| RamWindow {
            guest_addr: r.guest_addr,
            size: r.size,
            file_offset: r.file_offset,
        })
        .collect()
}

pub struct DirtyLog {
    log: PageLog,
}

impl DirtyLog {
    /// Turns logging on: KVM's, and a clear shared log covering all of guest RAM.
    pub fn start(vm: &VmFd, ram: &GuestRam) -> Result<DirtyLog, DirtyLogError> {
        let end = ram.regions().iter().map(|r| r.end()).max().unwrap_or(0);
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
        for (slot, region) in ram.regions().iter().enumerate() {
            let bits = vm
                .get_dirty_log(slot as u32, region.size as usize)
                .map_err(kvm_err("reading the dirty log"))?;
            self.log
                .or_bits(region.guest_addr / ipc::page_log::PAGE_SIZE, &bits)
                .map_err(DirtyLogError::Log)?;
        }
        Ok(self.log.count())
    }

    /// Turns KVM's logging off (the shared log goes with self).
    pub fn stop(self, vm: &VmFd, ram: &GuestRam) -> Result<(), DirtyLogError> {
        Ok(register_ram(vm, ram, false)?)
    }
}
