//! A VM as the builder assembled it: the KVM VM, guest RAM, the boot image and where it
//! was loaded, the vCPUs, the buses with the platform devices, the power-on state of the
//! in-kernel interrupt controllers, and the handles through which the control loop
//! reaches the vhost-user devices. A VM resets itself to power-on state; running it (the
//! vCPU threads and the control loop) is the runner's (`Vm::run`, runner.rs).

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use kvm_bindings::{
    kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use parking_lot::Mutex;

use crate::boot::{BootImage, LoadedKernel};
use crate::cpu::layout::CpuLayout;
use crate::device_memory::DeviceMemory;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::bus::Bus;
use crate::devices::cpu_hotplug::SharedCpuHotplug;
use crate::devices::pci::PciRoot;
use crate::devices::serial::{Console, SerialDevice};
use crate::devices::virtio_balloon::BalloonHandle;
use crate::dirty_log::DirtyLog;
use crate::error::{kvm_err, KvmError, VmError};
use crate::events::{EventSender, VmEvent};
use crate::interrupts::MsiRouter;
use crate::memory::GuestRam;
use crate::vcpu::{Vcpu, VcpuError, VcpuRecipe};
use crate::vhost_user::{ConfigChangeHandle, Handover, Link, LinkHandle};

/// Presses the fixed-feature ACPI power button (what QMP system_powerdown does).
#[derive(Clone)]
pub struct PowerButton(Arc<Mutex<AcpiPm>>);

impl PowerButton {
    pub fn press(&self) {
        self.0.lock().press_power_button();
    }
}

/// A disk as the VM's control loop sees it.
pub struct DiskHandle {
    /// Its slot on bus 0 (an eject names the slot).
    pub slot: u8,
    pub config: ConfigChangeHandle,
    /// Connections the gateway hands over after restarting the disk's daemon.
    pub handover: Option<Handover>,
    pub link: Arc<Mutex<Link>>,
    /// A live upgrade's connection to the backend, handed to the link once the VM's
    /// state is in (the previous vmm-core has let go of the backend by then).
    pub pending: Option<UnixStream>,
}

/// A NIC as the VM's control loop sees it.
pub struct NicHandle {
    pub slot: u8,
    /// The NIC's link status (QMP set_link).
    pub link_state: LinkHandle,
    pub handover: Option<Handover>,
    pub link: Arc<Mutex<Link>>,
    pub pending: Option<UnixStream>,
}

/// The in-kernel interrupt controllers and PIT as created, restored on reset.
pub struct PowerOnChips {
    irqchips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
}

impl PowerOnChips {
    pub fn capture(vm: &VmFd) -> Result<PowerOnChips, KvmError> {
        let mut irqchips = Vec::new();
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip)
                .map_err(kvm_err("reading the irqchip"))?;
            irqchips.push(chip);
        }
        let pit = vm.get_pit2().map_err(kvm_err("reading the PIT"))?;
        Ok(PowerOnChips { irqchips, pit })
    }

    fn restore(&self, vm: &VmFd) -> Result<(), KvmError> {
        for chip in &self.irqchips {
            vm.set_irqchip(chip)
                .map_err(kvm_err("restoring the irqchip"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm_err("restoring the PIT"))
    }
}

/// The parts of a built VM; the builder fills them in, the runner drives them.
pub struct Vm {
    pub(crate) vm: Arc<VmFd>,
    pub(crate) ram: GuestRam,
    pub(crate) boot: BootImage,
    /// Where the loader put the kernel; None for a VM that arrived with its memory
    /// (a migration, an upgrade) until a reset loads it.
    pub(crate) loaded: Option<LoadedKernel>,
    /// The vCPUs there are, by index (0 is the boot vCPU; hot-added ones may leave gaps).
    pub(crate) vcpus: BTreeMap<u32, Arc<Mutex<Vcpu>>>,
    /// The most vCPUs it may have (indexes 0 to max_cpus - 1).
    pub(crate) max_cpus: u32,
    /// How a vCPU added later is made.
    pub(crate) recipe: VcpuRecipe,
    /// ACPI CPU hotplug's registers, which tell the guest of an added vCPU.
    pub(crate) cpu_hotplug: SharedCpuHotplug,

    pub(crate) chips: PowerOnChips,
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    /// The MSI routes of the devices' vectors (batched while a state is restored).
    pub(crate) router: Arc<MsiRouter>,
    /// The MSRs a migration reads from each vCPU: those of KVM_GET_MSR_INDEX_LIST this
    /// KVM lets us read, found when the VM was built (a vCPU's state can only be read
    /// while it is out of KVM_RUN).
    pub(crate) readable_msrs: Vec<u32>,
    pub(crate) pm: Arc<Mutex<AcpiPm>>,
    pub(crate) events: EventSender,
    pub(crate) events_rx: Receiver<VmEvent>,
    /// Taken when the VM starts, which starts the console's input.
    pub(crate) console: Option<(Console, Arc<Mutex<SerialDevice>>)>,
    /// PCI bus 0 (what query-pci describes).
    pub(crate) pci: Arc<Mutex<PciRoot>>,
    pub(crate) start_paused: bool,
    /// A guest power-off stops the VM (run state "shutdown") rather than ending it, when
    /// a gateway is there to reset or quit it: QEMU's -no-shutdown.
    pub no_shutdown: bool,
    /// Memory and state come by migration: nothing was loaded (run state "inmigrate").
    pub(crate) incoming: bool,
    /// The disks by index (the gateway's number for each, which requests name; a
    /// removed disk leaves a gap).
    pub(crate) disks: BTreeMap<u32, DiskHandle>,
    /// The NICs by index.
    pub(crate) nics: BTreeMap<u32, NicHandle>,
    /// The virtio-balloon device, if the VM has one (`builder::attach_balloon`).
    pub(crate) balloon: Option<BalloonHandle>,
    /// Plays send-key's and input-send-event's steps into the i8042.
    pub(crate) input: crate::input::InputPlayer,
    /// ACPI memory hotplug and the DIMMs, if the VM has memory slots (dimms.rs).
    pub(crate) device_memory: Option<DeviceMemory>,
}

impl Vm {
    /// For callers that feed events from outside (signals, later the control channel).
    pub fn event_sender(&self) -> EventSender {
        self.events.clone()
    }

    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    pub fn loaded_kernel(&self) -> Option<&LoadedKernel> {
        self.loaded.as_ref()
    }

    /// A handle that presses the ACPI power button while the VM runs.
    pub fn power_button(&self) -> PowerButton {
        PowerButton(self.pm.clone())
    }

    /// Every vhost-user backend logs its writes into `log` from now on (a migration
    /// starts), or stops logging (`None`). On an error, none logs.
    pub(crate) fn set_backends_dirty_log(&self, log: Option<&DirtyLog>) -> Result<(), String> {
        let links =
            (self.disks.values().map(|d| &d.link)).chain(self.nics.values().map(|n| &n.link));
        for link in links.clone() {
            let handed = match log {
                Some(log) => match log.file() {
                    Ok(f) => Some((f, log.log().len())),
                    Err(e) => return Err(format!("the dirty log for a backend: {e}")),
                },
                None => None,
            };
            let mut link = link.lock();
            if let Err(e) = link.set_dirty_log(handed) {
                let name = link.name().to_string();
                drop(link);
                if log.is_some() {
                    let _ = self.set_backends_dirty_log(None);
                }
                return Err(format!("{name}: {e}"));
            }
        }
        Ok(())
    }

    /// The devices' shapes, for the vmm-core that takes over in a live upgrade: the
    /// disks then the NICs, each by ascending index (`migration::upgrade_shapes`).
    pub(crate) fn link_shapes(&self) -> Vec<ipc::LinkShape> {
        (self.disks.values().map(|d| &d.link))
            .chain(self.nics.values().map(|n| &n.link))
            .map(|l| l.lock().shape())
            .collect()
    }

    /// A live upgrade's backend connections go to their links (after the state is in).
    pub(crate) fn connect_pending_backends(&mut self) {
        let pending = (self
            .disks
            .values_mut()
            .map(|d| (&d.handover, d.pending.take())))
        .chain(
            self.nics
                .values_mut()
                .map(|n| (&n.handover, n.pending.take())),
        );
        for (handover, stream) in pending {
            if let (Some(h), Some(s)) = (handover, stream) {
                h.hand_over(s);
            }
        }
    }

    /// Which vCPUs the VM may have and has.
    pub(crate) fn cpu_layout(&self) -> CpuLayout {
        CpuLayout::new(self.max_cpus, self.vcpus.keys().copied())
    }

    /// Every vCPU to its power-on state, the boot vCPU (0) at the kernel's entry.
    pub(crate) fn reset_vcpus(&self) -> Result<(), VcpuError> {
        for (&id, vcpu) in &self.vcpus {
            let entry = self.loaded.as_ref().filter(|_| id == 0).map(|l| &l.entry);
            vcpu.lock().reset(entry)?;
        }
        Ok(())
    }

    /// Platform reset with every vCPU parked: memory back to what the loader wrote,
    /// interrupt controllers, PIT and devices to power-on state, vCPUs to boot state.
    pub(crate) fn reset(&mut self) -> Result<(), VmError> {
        self.ram.clear()?;
        // Added vCPUs are there from now on: enabled in the MADT.
        self.loaded = Some(self.boot.load(&self.ram, &self.cpu_layout())?);
        self.chips.restore(&self.vm)?;
        self.pio.reset();
        self.mmio.reset();
        Ok(self.reset_vcpus()?)
    }
}
