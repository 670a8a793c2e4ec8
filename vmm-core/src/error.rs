//! What building or running a VM fails with, in the words vmm-core's error line reports.

use crate::boot::acpi::MAX_XAPIC_CPUS;
use crate::boot::BootError;
use crate::devices::bus::OverlapError;
use crate::devices::pci::PciError;
use crate::memory::MemoryError;
use crate::vcpu::VcpuError;
use crate::vhost_user::VhostUserError;

/// A KVM call on the VM failed; `what` says which.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {error}")]
pub struct KvmError {
    pub what: &'static str,
    pub error: kvm_ioctls::Error,
}

/// Names a failing KVM call: `.map_err(kvm_err("creating the VM"))`.
pub fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |error| KvmError { what, error }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("--cpus 0: a VM needs at least one vCPU")]
    NoVcpus,
    #[error("--cpus {requested}: KVM on this host allows at most {max} vCPUs per VM")]
    TooManyVcpus { requested: usize, max: usize },
    #[error("--max-cpus {requested}: KVM on this host allows at most {max} vCPUs per VM")]
    TooManyMaxVcpus { requested: usize, max: usize },
    #[error("--max-cpus {max} is below --cpus {cpus}")]
    MaxBelowCpus { max: usize, cpus: usize },
    #[error(
        "vCPU {index} cannot be added to a VM of {cpus} vCPUs and at most {max} (again, or past the most)"
    )]
    BadAddedCpu { index: u32, cpus: usize, max: usize },
    #[error("{0} vCPUs: at most {MAX_XAPIC_CPUS} can have xAPIC ids (--cpus, --max-cpus)")]
    TooManyXapicIds(usize),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("serial console: {0}")]
    Serial(std::io::Error),
    #[error(transparent)]
    Bus(#[from] OverlapError),
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error("starting a thread: {0}")]
    Thread(std::io::Error),
    #[error("building the boot MSR list: {0}")]
    Msrs(String),
    #[error("vCPU {vcpu}: {reason}")]
    VcpuFailed { vcpu: usize, reason: String },
    /// A disk or NIC could not be attached.
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("two {kind}s have index {index}")]
    IndexTwice { kind: &'static str, index: u32 },
    #[error("placing the devices on PCI bus 0: {0}")]
    Slots(PciError),
    #[error("memory hotplug: {0}")]
    MemoryHotplug(String),
}

/// A disk or NIC that could not be attached (attach.rs), at launch or hot-plugged.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The vhost-user device (`name`: "disk 0", "nic 1") could not be set up.
    #[error("{name}: {error}")]
    Frontend { name: String, error: VhostUserError },
    /// Its virtio-pci transport could not be set up.
    #[error("{name}: {error}")]
    Transport { name: String, error: String },
    /// It found no place on the bus.
    #[error("{name}: {error}")]
    Pci { name: String, error: PciError },
}
