//! The whole state of a stopped VM except guest RAM: every vCPU, the in-kernel
//! interrupt controllers and PIT, the KVM clock, and the devices on both buses. The
//! source's vmm-core writes it (`Vm::save_state`) and the destination's, built with the
//! same shape, takes it (`Vm::restore_state`); nobody in between looks inside. It is
//! versioned, and the shape (memory size, vCPUs, devices) is checked before anything is
//! written, so that a destination built otherwise refuses it with a clear error.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Cap, VmFd};
use serde::{Deserialize, Serialize};

use crate::cpu::state::{StateError, VcpuCaps, VcpuState};
use crate::vm::Vm;

/// Bumped whenever what is saved changes shape; a vmm-core takes only its own version.
/// (2: the most vCPUs, and each vCPU by its index: CPU hotplug. 4: the vCPUs' CPUID.
/// 5: that CPUID as KVM holds it, no longer as it was set.)
pub const STATE_VERSION: u32 = 5;
const KVM_CAP_DEBUGREGS: libc::c_ulong = 50;
/// KVM_CLOCK_TSC_STABLE: a flag KVM_GET_CLOCK reports and KVM_SET_CLOCK refuses.
const CLOCK_FLAGS_SETTABLE: u32 = 0;

#[derive(Serialize, Deserialize)]
struct VmState {
    version: u32,
    memory: u64,
    /// The most vCPUs the VM may have.
    max_vcpus: u32,
    /// The CPUID vCPU 0 has (every vCPU's but for its APIC id): a destination whose
    /// vCPUs would get another one (another host's KVM, or another --cpu) refuses the
    /// state, as the running guest would see its CPU change under it.
    cpuid: Vec<ipc::CpuidLeaf>,
    /// The vCPUs there are, by ascending index (`VcpuState::id`).
    vcpus: Vec<VcpuState>,
    irqchips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
    pio: Vec<(u64, Vec<u8>)>,
    mmio: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Vcpu(#[from] StateError),
    #[error("{what}: {error}")]
    Kvm {
        what: &'static str,
        error: kvm_ioctls::Error,
    },
    #[error("the VM state is malformed: {0}")]
    Malformed(String),
    #[error("the VM state is version {0}; this vmm-core takes version {STATE_VERSION}")]
    Version(u32),
    #[error("the source VM differs from this one: {0}")]
    Shape(String),
    #[error("devices: {0}")]
    Device(String),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |error| SnapshotError::Kvm { what, error }
}

/// What this host's KVM offers for vCPU state.
pub fn vcpu_caps(vm: &VmFd) -> VcpuCaps {
    VcpuCaps {
        xsave: vm.check_extension(Cap::Xsave),
        xcrs: vm.check_extension(Cap::Xcrs),
        debugregs: vm.check_extension_raw(KVM_CAP_DEBUGREGS) > 0,
    }
}

const CHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

/// The first leaf whose registers differ between `there` and `here`, in words.
fn cpuid_difference(there: &[ipc::CpuidLeaf], here: &[ipc::CpuidLeaf]) -> Option<String> {
    let key = |l: &ipc::CpuidLeaf| (l.function, l.index);
    let regs = |l: Option<&ipc::CpuidLeaf>| match l {
        Some(l) => format!("{:#x} {:#x} {:#x} {:#x}", l.eax, l.ebx, l.ecx, l.edx),
        None => "absent".into(),
    };
    let mut leaves: Vec<(u32, u32)> = there.iter().chain(here).map(key).collect();
    leaves.sort_unstable();
    leaves.dedup();
    leaves.into_iter().find_map(|k| {
        let a = there.iter().find(|l| key(l) == k);
        let b = here.iter().find(|l| key(l) == k);
        (a != b).then(|| {
            format!(
                "leaf {:#x}.{} is {} there, {} here",
                k.0,
                k.1,
                regs(a),
                regs(b)
            )
        })
    })
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

impl Vm {
    /// vCPU 0's CPUID as KVM holds it, which the guest reads; the two ends must agree.
    fn vcpu0_cpuid(&self) -> Result<Vec<ipc::CpuidLeaf>, SnapshotError> {
        (self.recipe.cpuid_leaves())
            .ok_or_else(|| SnapshotError::Device("vCPU 0 was never made".into()))
    }

    /// The state of the VM, whose vCPUs must be parked.
    pub fn save_state(&self) -> Result<Vec<u8>, SnapshotError> {
        let caps = vcpu_caps(&self.vm);
        let msrs = &self.readable_msrs;
        let vcpus = self
            .vcpus
            .values()
            .map(|v| {
                let v = v.lock();
                VcpuState::save(v.fd(), v.id as u32, caps, msrs)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut irqchips = Vec::new();
        for chip_id in CHIPS {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.vm
                .get_irqchip(&mut chip)
                .map_err(kvm("reading the irqchip"))?;
            irqchips.push(chip);
        }
        let state = VmState {
            version: STATE_VERSION,
            memory: self.ram.size(),
            max_vcpus: self.max_cpus,
            cpuid: self.vcpu0_cpuid()?,
            vcpus,
            irqchips,
            pit: self.vm.get_pit2().map_err(kvm("reading the PIT"))?,
            clock: self.vm.get_clock().map_err(kvm("reading the KVM clock"))?,
            pio: self.pio.save_states(),
            mmio: self.mmio.save_states(),
        };
        bincode::serde::encode_to_vec(&state, config())
            .map_err(|e| SnapshotError::Malformed(e.to_string()))
    }

    /// xen-load-devices-state: a state saved from a VM of this shape into this one, which
    /// may have run (vCPUs parked, guest RAM left as it is). All or nothing: when a part
    /// is refused (a device that differs) after others went in, the VM's own state from
    /// just before goes back in.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let before = self.save_state()?;
        match self.restore_state(bytes) {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(undo) = self.restore_state(&before) {
                    log::error!("putting the VM's state back after a failed load: {undo}");
                }
                Err(e)
            }
        }
    }

    /// Takes a source's state into this VM (built with the same shape, vCPUs parked,
    /// guest RAM already holding the source's memory: the devices resume their rings
    /// from it).
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        // The version comes first, so an unknown one is named as such rather than as
        // garbage.
        let version: (u32, usize) = bincode::serde::decode_from_slice(bytes, config())
            .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if version.0 != STATE_VERSION {
            return Err(SnapshotError::Version(version.0));
        }
        let (state, used): (VmState, usize) = bincode::serde::decode_from_slice(bytes, config())
            .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if used != bytes.len() {
            return Err(SnapshotError::Malformed("trailing bytes".into()));
        }
        if state.memory != self.ram.size() {
            return Err(SnapshotError::Shape(format!(
                "{} MiB of memory there, {} MiB here",
                state.memory >> 20,
                self.ram.size() >> 20
            )));
        }
        if state.vcpus.len() != self.vcpus.len() {
            return Err(SnapshotError::Shape(format!(
                "{} vCPUs there, {} here",
                state.vcpus.len(),
                self.vcpus.len()
            )));
        }
        if state.max_vcpus != self.max_cpus {
            return Err(SnapshotError::Shape(format!(
                "at most {} vCPUs there, {} here",
                state.max_vcpus, self.max_cpus
            )));
        }
        // A vCPU added there must have been added here too (the same index: its APIC ID).
        let ids = |ids: &mut dyn Iterator<Item = u32>| {
            ids.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        };
        let there = ids(&mut state.vcpus.iter().map(|v| v.id));
        let here = ids(&mut self.vcpus.keys().copied());
        if there != here {
            return Err(SnapshotError::Shape(format!(
                "vCPUs {there} there, {here} here"
            )));
        }
        if let Some(why) = cpuid_difference(&state.cpuid, &self.vcpu0_cpuid()?) {
            return Err(SnapshotError::Shape(format!(
                "the vCPUs' CPUID differs: {why}"
            )));
        }
        let caps = vcpu_caps(&self.vm);
        let mut clock = state.clock;
        clock.flags &= CLOCK_FLAGS_SETTABLE;
        self.vm
            .set_clock(&clock)
            .map_err(kvm("setting the KVM clock"))?;
        for chip in &state.irqchips {
            self.vm
                .set_irqchip(chip)
                .map_err(kvm("setting the irqchip"))?;
        }
        self.vm
            .set_pit2(&state.pit)
            .map_err(kvm("setting the PIT"))?;
        for (vcpu, saved) in self.vcpus.values().zip(&state.vcpus) {
            saved.restore(vcpu.lock().fd(), caps)?;
        }
        // Devices last: a virtio device resumes its rings here, and the interrupts its
        // backend raises from then on must land in the interrupt controllers' restored
        // state, not be overwritten by it. Their MSI routes go to KVM in one table.
        self.router.hold();
        let devices = (self.pio.restore_states(&state.pio))
            .and_then(|()| self.mmio.restore_states(&state.mmio))
            .map_err(SnapshotError::Device);
        let routes = self
            .router
            .release()
            .map_err(|e| SnapshotError::Device(format!("MSI routes: {e}")));
        devices.and(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, edx: u32) -> ipc::CpuidLeaf {
        ipc::CpuidLeaf {
            function,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn a_cpuid_difference_is_named() {
        let here = [leaf(0, 0), leaf(7, 1 << 29)];
        assert_eq!(cpuid_difference(&here, &here), None);
        let there = [leaf(0, 0), leaf(7, 0)];
        assert_eq!(
            cpuid_difference(&there, &here).as_deref(),
            Some("leaf 0x7.0 is 0x0 0x0 0x0 0x0 there, 0x0 0x0 0x0 0x20000000 here")
        );
        assert_eq!(
            cpuid_difference(&here[..1], &here).as_deref(),
            Some("leaf 0x7.0 is absent there, 0x0 0x0 0x0 0x20000000 here")
        );
    }
}
