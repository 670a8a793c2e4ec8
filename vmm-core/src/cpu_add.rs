//! cpu-add (and device_add of a CPU): a vCPU made while the VM lives. It is made as the
//! launch's were (`VcpuRecipe`: CPUID for its index among the possible ones, boot MSRs),
//! put in its power-on state, waiting for the guest's INIT/SIPI, and joins the VM's vCPUs;
//! the runner starts its thread, then `announce_vcpu` tells the guest (ACPI CPU hotplug:
//! present, insert event, GPE 2). From the next reset on, the MADT lists it enabled.
//!
//! Refusals are in QEMU's words for cpu-add (QEMU 7.2 has no cpu-add: those of its older
//! pc_hot_add_cpu, which checked that a CPU exists before the range).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::vcpu::{RecipeError, Vcpu};
use crate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum CpuAddError {
    #[error("Unable to add CPU: {index}, it already exists")]
    Exists { index: u32 },
    #[error("Unable to add CPU: {index}, max allowed: {max_allowed}")]
    TooHigh { index: u32, max_allowed: i64 },
    #[error("vCPU {index}: {error}")]
    Make { index: u32, error: RecipeError },
}

impl Vm {
    /// Makes vCPU `index` and puts it among the VM's vCPUs; its thread is the caller's to
    /// start. KVM cannot take a vCPU back: one made here stays KVM's even if its thread
    /// never starts (`drop_vcpu` only forgets it).
    pub(crate) fn add_vcpu(&mut self, index: u32) -> Result<Arc<Mutex<Vcpu>>, CpuAddError> {
        if self.vcpus.contains_key(&index) {
            return Err(CpuAddError::Exists { index });
        }
        if index >= self.max_cpus {
            return Err(CpuAddError::TooHigh {
                index,
                max_allowed: i64::from(self.max_cpus) - 1,
            });
        }
        let make = |error| CpuAddError::Make { index, error };
        let mut vcpu = self.recipe.make(&self.vm, index).map_err(make)?;
        // As its siblings after a reset: waiting for INIT/SIPI, LINT0 masked.
        vcpu.reset(None).map_err(|e| make(RecipeError::Vcpu(e)))?;
        let vcpu = Arc::new(Mutex::new(vcpu));
        self.vcpus.insert(index, vcpu.clone());
        // Present from now on (a migration's state expects it so), the guest not told yet.
        self.cpu_hotplug.lock().set_present(index);
        Ok(vcpu)
    }

    /// A vCPU whose thread could not be started: no longer the VM's.
    pub(crate) fn drop_vcpu(&mut self, index: u32) {
        self.vcpus.remove(&index);
        self.cpu_hotplug.lock().set_absent(index);
    }

    /// Tells the guest of vCPU `index` (ACPI CPU hotplug: present, insert event, GPE 2).
    pub(crate) fn announce_vcpu(&self, index: u32) {
        self.cpu_hotplug.lock().insert(index);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::path::Path;

    use kvm_bindings::KVM_MP_STATE_UNINITIALIZED;

    use crate::boot::BootImage;
    use crate::devices::bus::BusDevice;
    use crate::devices::serial::Console;
    use crate::{build_vm, Vm, VmConfig, VmError};

    /// A VM of 16 MiB, `cpus` vCPUs at boot plus `added`, at most `max`, built as a
    /// migration's destination (nothing loaded: its vCPUs never run).
    fn vm(cpus: usize, max: usize, added: &[u32]) -> Result<Vm, VmError> {
        let config = VmConfig {
            memory_mib: 16,
            cpus,
            max_cpus: max,
            added_cpus: added.to_vec(),
            start_paused: true,
            incoming: true,
            ram: None,
            memory_hotplug: None,
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
        build_vm(kvm, &config, boot, Console::none(), Vec::new(), Vec::new())
    }

    fn present(vm: &Vm) -> Vec<u32> {
        vm.cpu_layout().present().collect()
    }

    #[test]
    fn a_vcpu_is_added_once_and_within_the_most() {
        let mut vm = vm(1, 4, &[]).unwrap();
        assert_eq!(
            vm.add_vcpu(4)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "Unable to add CPU: 4, max allowed: 3"
        );
        assert_eq!(
            vm.add_vcpu(0)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "Unable to add CPU: 0, it already exists"
        );
        let vcpu = vm.add_vcpu(2).unwrap();
        assert_eq!(present(&vm), [0, 2]);
        assert_eq!(vcpu.lock().id, 2);
        // It waits for the guest's INIT/SIPI.
        let mp = vcpu.lock().fd().get_mp_state().unwrap();
        assert_eq!(mp.mp_state, KVM_MP_STATE_UNINITIALIZED);
        assert_eq!(
            vm.add_vcpu(2)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "Unable to add CPU: 2, it already exists"
        );
        // The guest hears of it: selector 2, flags present and inserting.
        vm.announce_vcpu(2);
        let mut hp = vm.cpu_hotplug.lock();
        hp.write(0, &2u32.to_le_bytes());
        let mut flags = [0u8];
        hp.read(4, &mut flags);
        assert_eq!(flags[0], 0b11);
        drop(hp);
        // A VM without hotplug refuses every index.
        let mut fixed = self::vm(2, 2, &[]).unwrap();
        assert_eq!(
            fixed
                .add_vcpu(2)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "Unable to add CPU: 2, max allowed: 1"
        );
    }

    #[test]
    fn the_launch_checks_the_vcpus_it_is_given() {
        let err = |cpus, max, added: &[u32]| match vm(cpus, max, added) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        assert_eq!(err(2, 1, &[]), "--max-cpus 1 is below --cpus 2");
        assert_eq!(
            err(1, 4, &[4]),
            "vCPU 4 cannot be added to a VM of 1 vCPUs and at most 4 (again, or past the most)"
        );
        assert!(err(1, 4, &[0]).starts_with("vCPU 0 cannot be added"));
        assert!(err(1, 4, &[2, 2]).starts_with("vCPU 2 cannot be added"));
        assert_eq!(err(1, 4, &[3, 2]), "");
        assert_eq!(present(&vm(1, 4, &[3, 2]).unwrap()), [0, 2, 3]);
    }

    #[test]
    fn a_state_goes_only_to_a_vm_with_the_same_vcpus() {
        let mut source = vm(1, 4, &[]).unwrap();
        source.add_vcpu(2).unwrap();
        let state = source.save_state().unwrap();
        let refusal = |mut dest: Vm| match dest.restore_state(&state) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            refusal(vm(1, 4, &[]).unwrap()),
            "the source VM differs from this one: 2 vCPUs there, 1 here"
        );
        assert_eq!(
            refusal(vm(2, 4, &[]).unwrap()),
            "the source VM differs from this one: vCPUs 0, 2 there, 0, 1 here"
        );
        assert_eq!(
            refusal(vm(1, 3, &[2]).unwrap()),
            "the source VM differs from this one: at most 4 vCPUs there, 3 here"
        );
        // Launched with it (a live upgrade), or given it before the state came.
        assert_eq!(refusal(vm(1, 4, &[2]).unwrap()), "");
        let mut dest = vm(1, 4, &[]).unwrap();
        dest.add_vcpu(2).unwrap();
        assert_eq!(refusal(dest), "");
    }
}
