//! The VM's vCPUs beyond the ones it booted with: cpu-add (the spec's, with QEMU 4.x's
//! words: QEMU 7.2 has no cpu-add) and device_add of a CPU (QEMU 7.2's checks,
//! devices/cpu.rs), both vmm-core's `CpuAdd`; what a live upgrade's vmm-core is launched
//! with (LaunchConfig.added_cpus) and what a migration's destination must have (the
//! shape's vCPU count) follow each add; query-hotpluggable-cpus' list. vCPUs are not
//! removed (device_del of a CPU is refused).

use ipc::{VmmReply, VmmRequest};
use serde_json::{json, Value};

use crate::children::cpuid_probe::ProbeError;
use crate::children::link::LinkError;
use crate::cpuid_features::{Feature, GuestCpuid};
use crate::devices::cpu::{CpuProps, CPU_TYPE};
use crate::devices::spec::{DeviceSpec, Model};
use crate::devices::DeviceError;
use crate::gateway::Gateway;
use crate::upgrade::CHANGING;

/// Why cpu-add refused.
#[derive(Debug, thiserror::Error)]
pub enum CpuAddError {
    #[error("Invalid CPU id: {0}")]
    InvalidId(i64),
    #[error("Unable to add CPU: {id}, max allowed: {max_allowed}")]
    TooHigh { id: i64, max_allowed: i64 },
    #[error("cpu-add not allowed while migrating")]
    Migrating,
    /// vmm-core's refusal (its words are QEMU's) or the link's failure.
    #[error(transparent)]
    Link(#[from] LinkError),
}

impl Gateway {
    /// The most vCPUs the VM may have, and the indexes of those it has.
    fn cpu_limits(&self) -> (u32, Vec<u32>) {
        let max = (self.vmm_child.launch.lock().as_ref()).map_or(1, |vm| vm.config.max_cpus);
        let present = self.vcpus().iter().map(|v| v.index).collect();
        (max, present)
    }

    /// cpu-add: vCPU `id` (QEMU 4.x's pc_hot_add_cpu words; vmm-core checks the rest).
    pub fn cpu_add(&self, id: i64) -> Result<(), CpuAddError> {
        if id < 0 {
            return Err(CpuAddError::InvalidId(id));
        }
        if self.migrator.in_progress() {
            return Err(CpuAddError::Migrating);
        }
        let _one = CHANGING.lock();
        let index = match u32::try_from(id) {
            Ok(index) => index,
            Err(_) => {
                let (max, _) = self.cpu_limits();
                return Err(CpuAddError::TooHigh {
                    id,
                    max_allowed: i64::from(max) - 1,
                });
            }
        };
        self.add_vcpu(index, None)?;
        Ok(())
    }

    /// device_add of a CPU, after its options (id, driver, bus) and the migration check:
    /// its id taken, its properties read, QEMU's checks, then vmm-core.
    pub fn cpu_device_add(&self, spec: &DeviceSpec) -> Result<(), DeviceError> {
        let Model::Cpu(typename) = spec.model else {
            return Err(DeviceError::UnknownDriver(spec.model.typename().into()));
        };
        let _one = CHANGING.lock();
        let ticket = self
            .devices
            .lock()
            .reserve(spec.model, spec.id.as_deref())?;
        let added = CpuProps::read(typename, spec.options()).and_then(|props| {
            let (max, present) = self.cpu_limits();
            let index = props.resolve(typename, max, |i| present.contains(&i))?;
            Ok(self.add_vcpu(index, Some(ticket.qom_path.clone()))?)
        });
        match &added {
            Ok(()) => self.devices.lock().added_without_backend(&ticket),
            Err(_) => self.devices.lock().abandon(&ticket),
        }
        added
    }

    /// vmm-core makes vCPU `index` and its thread, and tells the guest; it joins the
    /// vCPUs query-cpus-fast lists, the launch a new vmm-core gets and the migration's
    /// shape.
    fn add_vcpu(&self, index: u32, qom_path: Option<String>) -> Result<(), LinkError> {
        let info = match self.vmm.request(VmmRequest::CpuAdd { index }, &[])? {
            VmmReply::VcpuAdded(info) => info,
            other => {
                return Err(LinkError::Remote(ipc::RemoteError::generic(format!(
                    "vmm-core answered cpu-add with {other:?}"
                ))))
            }
        };
        self.push_vcpu(info, qom_path);
        if let Some(vm) = self.vmm_child.launch.lock().as_mut() {
            vm.config.added_cpus.push(index);
            self.migrator.set_shape(vm.shape());
        }
        log::info!("vCPU {index} added");
        Ok(())
    }

    /// vCPU `index`'s place, as QEMU 7.2's pc gives its props: one socket of cores, one
    /// thread each; with memory slots also node 0 (QEMU makes the machine a NUMA node then,
    /// auto_enable_numa_with_memhp).
    pub fn cpu_props(&self, index: u32) -> Value {
        let numa = (self.vmm_child.launch.lock().as_ref())
            .is_some_and(|vm| vm.config.memory_hotplug.is_some());
        let mut props = json!({"socket-id": 0, "core-id": index, "thread-id": 0});
        if numa {
            props["node-id"] = json!(0);
        }
        props
    }

    /// The CPUID a vCPU would get where there is no VM to ask (--machine none: a
    /// vmm-core started for it alone, children/cpuid_probe.rs).
    pub fn set_guest_cpuid(&self, cpuid: GuestCpuid) {
        let _ = self.cpuid.set(cpuid);
    }

    /// The CPUID of the VM's CPU model (--cpu) with the features `off` turned off too,
    /// as KVM holds it for such a vCPU (cpuid_probes.rs).
    pub fn cpuid_without(&self, off: &[&'static Feature]) -> Result<GuestCpuid, ProbeError> {
        let mut model = self.cpu_model().clone();
        model.off.extend(off.iter().map(|f| f.bits()));
        let binary = self.vmm_child.binary.lock().clone();
        (self.cpuid_probes).cpuid(&binary, self.sandbox_mode(), model)
    }

    /// The CPUID every vCPU gets (its APIC id aside), asked of vmm-core the first time.
    pub fn guest_cpuid(&self) -> Result<GuestCpuid, LinkError> {
        if let Some(cpuid) = self.cpuid.get() {
            return Ok(cpuid.clone());
        }
        let leaves = match self.vmm.request(VmmRequest::QueryCpuid, &[])? {
            VmmReply::Cpuid(leaves) => leaves,
            other => {
                return Err(LinkError::Remote(ipc::RemoteError::generic(format!(
                    "vmm-core answered its CPUID with {other:?}"
                ))))
            }
        };
        Ok(self.cpuid.get_or_init(|| GuestCpuid(leaves)).clone())
    }

    /// Whether vCPU `index` is there, and whether it was added after the launch.
    pub fn vcpu_added(&self, index: u32) -> Option<bool> {
        let launched = (self.vmm_child.launch.lock().as_ref()).map_or(1, |vm| vm.config.cpus);
        (self.vcpus().iter())
            .any(|v| v.index == index)
            .then_some(index >= launched)
    }

    /// query-hotpluggable-cpus as QEMU 7.2's pc machine answers it: every possible vCPU,
    /// the highest index first, with the QOM path of those there.
    pub fn hotpluggable_cpus(&self) -> Value {
        let (max, present) = self.cpu_limits();
        (0..max)
            .rev()
            .map(|index| {
                let mut cpu = json!({
                    "props": self.cpu_props(index),
                    "vcpus-count": 1,
                    "type": CPU_TYPE,
                });
                if present.contains(&index) {
                    cpu["qom-path"] = json!(self.vcpu_qom_path(index));
                }
                cpu
            })
            .collect()
    }
}
