//! Memory that comes and goes while the VM lives (QMP device_add / device_del of a pc-dimm,
//! through the gateway): ACPI memory hotplug's slots (devices/memory_hotplug.rs) and the
//! device memory region the DIMMs go in (`ipc::MemoryHotplug::region`, outside RAM, the
//! memory map and the PCI window). A DIMM is its memory backend's file mapped into guest
//! memory (`GuestRam::add_hot`), registered with KVM in a memory slot of its own and handed
//! to every vhost-user backend (`Link::add_memory`) before the guest hears of it (insert
//! event, GPE 3); one the guest ejected leaves them in the other order. Whether the VM may
//! change now is the runner's to say. DIMMs given at launch (QEMU's -device pc-dimm: a
//! migration's destination, a live upgrade's new vmm-core) go in the same way, present
//! from the start and without an event; their memory travels in a migration as further
//! windows of guest memory (`dirty_log::windows`), each its own file.

use std::fs::File;
use std::os::fd::OwnedFd;

use kvm_bindings::kvm_userspace_memory_region;

use crate::device_memory::{DimmError, DIMM_KVM_SLOTS};
use crate::devices::memory_hotplug::DimmRange;
use crate::error::kvm_err;
use crate::vm::Vm;

fn kvm_slot(slot: u32) -> u32 {
    DIMM_KVM_SLOTS + slot
}

impl Vm {
    /// The VM's vhost-user links.
    fn links(
        &self,
    ) -> impl Iterator<Item = &std::sync::Arc<parking_lot::Mutex<crate::vhost_user::Link>>> {
        (self.disks.values().map(|d| &d.link)).chain(self.nics.values().map(|n| &n.link))
    }

    /// `VmmRequest::MemoryAttach`: the DIMM mapped, in KVM, in every backend, then the
    /// guest told (`announce`; a launch's DIMM is simply there, as a boot finds it). On an
    /// error nothing of it is left.
    pub fn attach_dimm(
        &mut self,
        dimm: &ipc::DimmLaunch,
        fds: Vec<OwnedFd>,
        announce: bool,
    ) -> Result<(), DimmError> {
        let memory = self.device_memory.as_ref().ok_or(DimmError::NotEnabled)?;
        memory.check(dimm.slot, dimm.addr, dimm.size)?;
        let kvm = kvm_slot(dimm.slot);
        let max =
            u32::try_from(self.vm.check_extension_int(kvm_ioctls::Cap::NrMemslots)).unwrap_or(0);
        if kvm >= max {
            return Err(DimmError::NoKvmSlot);
        }
        if let Some(link) = self.links().find(|l| !l.lock().has_room_for_memory()) {
            return Err(DimmError::NoBackendRoom(link.lock().name().to_string()));
        }
        let file = File::from(fds.into_iter().next().ok_or(DimmError::NoBackend)?);
        let hot = self.ram.add_hot(file, dimm.addr, dimm.size, kvm)?;
        let region = kvm_userspace_memory_region {
            slot: kvm,
            flags: 0,
            guest_phys_addr: dimm.addr,
            memory_size: dimm.size,
            userspace_addr: hot.mapping.as_ptr() as u64,
        };
        // SAFETY: the mapping lives in `self.ram` until `let_go_ejected_dimms` takes the
        // region out of KVM, before it drops it.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            self.ram.remove_hot(dimm.addr);
            return Err(kvm_err("registering a DIMM")(e).into());
        }
        for link in self.links() {
            link.lock().add_memory(&hot);
        }
        let range = DimmRange {
            addr: dimm.addr,
            size: dimm.size,
        };
        let memory = self.device_memory.as_mut().ok_or(DimmError::NotEnabled)?;
        memory.hotplug.lock().plug(dimm.slot, range, announce)?;
        memory.dimms.insert(dimm.slot, range);
        Ok(())
    }

    /// `VmmRequest::MemoryUnplug`: the guest is asked to let go of the DIMM in `slot`; it
    /// goes when the guest ejects it (`let_go_ejected_dimms`).
    pub(crate) fn request_dimm_unplug(&self, slot: u32) -> Result<(), DimmError> {
        let memory = self.device_memory.as_ref().ok_or(DimmError::NotEnabled)?;
        Ok(memory.hotplug.lock().request_unplug(slot)?)
    }

    /// Lets go of the DIMMs the guest ejected: out of every backend, out of KVM, unmapped.
    /// Returns their slots.
    pub(crate) fn let_go_ejected_dimms(&mut self) -> Vec<u32> {
        let Some(memory) = self.device_memory.as_mut() else {
            return Vec::new();
        };
        let ejected = memory.hotplug.lock().take_ejected();
        let gone: Vec<(u32, DimmRange)> = ejected
            .into_iter()
            .filter_map(|slot| Some((slot, memory.dimms.remove(&slot)?)))
            .collect();
        for &(slot, dimm) in &gone {
            for link in self.links() {
                link.lock().remove_memory(dimm.addr);
            }
            let region = kvm_userspace_memory_region {
                slot: kvm_slot(slot),
                flags: 0,
                guest_phys_addr: dimm.addr,
                memory_size: 0,
                userspace_addr: 0,
            };
            // SAFETY: a size of 0 deletes the slot; no memory is handed to KVM.
            if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
                log::error!("taking the DIMM of slot {slot} out of KVM: {e}");
            }
            self.ram.remove_hot(dimm.addr);
        }
        gone.into_iter().map(|(slot, _)| slot).collect()
    }

    /// What the guest's _OST said about each memory slot (none without memory hotplug).
    pub(crate) fn memory_slots_ost(&self) -> Vec<ipc::SlotOst> {
        let Some(memory) = &self.device_memory else {
            return Vec::new();
        };
        let status = memory.hotplug.lock().ospm_status();
        status
            .into_iter()
            .map(|s| ipc::SlotOst {
                source: s.source,
                status: s.status,
            })
            .collect()
    }

    /// Whether the VM has DIMMs.
    #[cfg(test)]
    pub(crate) fn has_dimms(&self) -> bool {
        self.device_memory
            .as_ref()
            .is_some_and(|m| !m.dimms.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::memory_hotplug::{STATUS_OFFSET, ST_EJECT, ST_ENABLED, ST_INSERT};
    use crate::events::VmEvent;
    use crate::hotplug::tests::built_vm_with;
    use crate::layout::ports;

    const MIB: u64 = 1 << 20;
    /// Device memory of the test VM (16 MiB of RAM, 2 slots, maxmem 80 MiB): 4 GiB up.
    const BASE: u64 = 1 << 32;

    fn vm() -> Vm {
        built_vm_with(
            Some(ipc::MemoryHotplug {
                slots: 2,
                max_bytes: 80 * MIB,
            }),
            vec![],
            vec![],
        )
        .unwrap()
    }

    /// A memory backend's fd of `size` bytes.
    fn backend(size: u64) -> Vec<OwnedFd> {
        // SAFETY: memfd_create with a valid name; the fd is checked and ours alone.
        let fd = unsafe { libc::memfd_create(c"dimm".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: as above.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        File::from(fd.try_clone().unwrap()).set_len(size).unwrap();
        vec![fd]
    }

    fn dimm(slot: u32, addr: u64, size: u64) -> ipc::DimmLaunch {
        ipc::DimmLaunch { slot, addr, size }
    }

    /// The flags of memory slot `slot` as the guest reads them.
    fn flags(vm: &Vm, slot: u32) -> u8 {
        let base = u64::from(ports::MEMORY_HOTPLUG);
        assert!(vm.pio.write(base, &slot.to_le_bytes()));
        let mut b = [0u8];
        assert!(vm.pio.read(base + STATUS_OFFSET, &mut b));
        b[0]
    }

    #[test]
    fn a_dimm_joins_guest_memory_and_kvm_and_the_guest_is_told() {
        let mut vm = vm();
        let fds = backend(32 * MIB);
        let file = File::from(fds[0].try_clone().unwrap());
        vm.attach_dimm(&dimm(1, BASE + 32 * MIB, 32 * MIB), fds, true)
            .unwrap();
        assert_eq!(flags(&vm, 1), ST_ENABLED | ST_INSERT);
        assert_eq!(flags(&vm, 0), 0);
        assert!(vm.has_dimms());
        // Guest memory reaches the backend's file (shared), where the DIMM is.
        vm.ram
            .memory()
            .write_obj(0xfeed_u32, GuestAddress(BASE + 32 * MIB + 0x1000))
            .unwrap();
        let mut word = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut word, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xfeed);
        let err = |vm: &mut Vm, d, fds| vm.attach_dimm(&d, fds, true).unwrap_err().to_string();
        assert_eq!(
            err(&mut vm, dimm(1, BASE, 2 * MIB), backend(2 * MIB)),
            "memory slot 1 holds a DIMM already"
        );
        assert_eq!(
            err(&mut vm, dimm(2, BASE, 2 * MIB), backend(2 * MIB)),
            "memory slot 2 does not exist (there are 2)"
        );
        assert_eq!(
            err(&mut vm, dimm(0, BASE + 40 * MIB, 2 * MIB), backend(2 * MIB)),
            "the DIMM [0x102800000+0x200000] overlaps the one in slot 1"
        );
        // 80 MiB - 16 MiB + a GiB per slot.
        let region = 64 * MIB + 2 * (1 << 30);
        assert_eq!(
            err(&mut vm, dimm(0, BASE + region, 2 * MIB), backend(2 * MIB)),
            format!(
                "the DIMM [{:#x}+0x200000] is outside device memory [0x100000000+{region:#x}]",
                BASE + region
            )
        );
        assert_eq!(
            err(&mut vm, dimm(0, BASE - 2 * MIB, 2 * MIB), backend(2 * MIB)),
            "the DIMM [0xffe00000+0x200000] is outside device memory [0x100000000+0x84000000]"
        );
        assert_eq!(
            err(&mut vm, dimm(0, BASE + 1, 2 * MIB), backend(2 * MIB)),
            "a DIMM's address and size must be whole pages (0x100000001+0x200000)"
        );
        assert_eq!(
            err(&mut vm, dimm(0, BASE, 2 * MIB), Vec::new()),
            "no memory backend came with the request"
        );
        assert_eq!(
            err(&mut vm, dimm(0, BASE, 4 * MIB), backend(2 * MIB)),
            "the memory backend holds 2097152 bytes, 4194304 are needed"
        );
        // None of these left anything: slot 0 is free, its range too.
        assert_eq!(flags(&vm, 0), 0);
        vm.attach_dimm(&dimm(0, BASE, 2 * MIB), backend(2 * MIB), true)
            .unwrap();
        // A VM without memory slots takes none.
        let mut plain = built_vm_with(None, vec![], vec![]).unwrap();
        assert_eq!(
            err(&mut plain, dimm(0, BASE, 2 * MIB), backend(2 * MIB)),
            "memory hotplug is not enabled: the VM has no memory slots"
        );
        assert!(plain.memory_slots_ost().is_empty());
    }

    #[test]
    fn an_ejected_dimm_leaves_kvm_and_guest_memory_and_its_slot_serves_again() {
        let mut vm = vm();
        vm.attach_dimm(&dimm(0, BASE, 4 * MIB), backend(4 * MIB), true)
            .unwrap();
        // device_del: a remove event for the guest.
        vm.request_dimm_unplug(0).unwrap();
        assert_eq!(flags(&vm, 0) & !ST_INSERT, ST_ENABLED | 4);
        assert_eq!(
            vm.request_dimm_unplug(1).unwrap_err().to_string(),
            "memory slot 1 holds no DIMM"
        );
        assert!(vm.let_go_ejected_dimms().is_empty(), "asked, not ejected");
        // The guest's _EJ0.
        let base = u64::from(ports::MEMORY_HOTPLUG);
        assert!(vm.pio.write(base, &0u32.to_le_bytes()));
        assert!(vm.pio.write(base + STATUS_OFFSET, &[ST_EJECT]));
        assert!(matches!(
            vm.events_rx.try_recv(),
            Ok(VmEvent::MemoryEjected)
        ));
        assert_eq!(vm.let_go_ejected_dimms(), [0]);
        assert!(!vm.has_dimms());
        assert!(
            vm.ram.memory().read_obj::<u32>(GuestAddress(BASE)).is_err(),
            "out of guest memory"
        );
        // KVM let go of the range too: another slot may map it again.
        vm.attach_dimm(&dimm(1, BASE, 4 * MIB), backend(4 * MIB), true)
            .unwrap();
        vm.attach_dimm(&dimm(0, BASE + 4 * MIB, 2 * MIB), backend(2 * MIB), true)
            .unwrap();
        assert_eq!(vm.memory_slots_ost().len(), 2);
    }
}
