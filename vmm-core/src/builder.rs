//! Assembles a VM from its parts, as Firecracker's builder does: guest memory and the KVM
//! VM, the platform devices on the port bus, the PCI root with a virtio-pci transport per
//! vhost-user device, the vCPUs, and the boot image loaded into memory. Each part is
//! attached by a function of its own, in the order the parts depend on one another; the
//! result is a `Vm` (vm.rs), which the runner runs. The builder imports the VM, never the
//! reverse.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use parking_lot::Mutex;
use vmm_sys_util::eventfd::EventFd;

use crate::attach::{AttachError, DiskConnection, NicConnection, Plug, Transports};
use crate::boot::acpi::MAX_XAPIC_CPUS;
use crate::boot::BootImage;
use crate::cpu::layout::CpuLayout;
use crate::device_memory::DeviceMemory;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::bus::Bus;
use crate::devices::cpu_hotplug::{CpuHotplug, SharedCpuHotplug};
use crate::devices::gpe::{Gpe0, SharedGpe};
use crate::devices::i8042::{I8042Port, I8042};
use crate::devices::memory_hotplug::{MemoryHotplug, MAX_SLOTS};
use crate::devices::pci::hotplug::PciHotplugIo;
use crate::devices::pci::{PciConfigIo, PciEcam, PciMmioWindow, PciRoot};
use crate::devices::reset_control::ResetControl;
use crate::devices::sci::SharedLine;
use crate::devices::serial::{Console, SerialDevice};
use crate::devices::virtio_balloon::Balloon;
use crate::devices::virtio_pci::{self, VirtioPci};
use crate::error::{kvm_err, VmError};
use crate::events::EventSender;
use crate::input::InputPlayer;
use crate::interrupts::{KvmIrqLine, MsiRouter};
use crate::layout::{
    ports, KVM_IDENTITY_MAP, KVM_TSS, PCI_ECAM, PCI_ECAM_SIZE, PCI_MMIO_END, PCI_MMIO_START,
};
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::{RecipeError, Vcpu, VcpuRecipe};
use crate::vhost_user::deadline::FIRST_CONNECTION;
use crate::vm::{DiskHandle, NicHandle, PowerOnChips, Vm};

#[derive(Debug)]
pub struct VmConfig {
    pub memory_mib: u64,
    /// vCPUs 0 to cpus - 1 are there at boot.
    pub cpus: usize,
    /// The most vCPUs the VM may have (CPU hotplug); at least `cpus`.
    pub max_cpus: usize,
    /// vCPUs added since the VM first booted (a live upgrade recreates them).
    pub added_cpus: Vec<u32>,
    /// Keep the vCPUs stopped until a `Cont` request (run state "prelaunch").
    pub start_paused: bool,
    /// Memory and state come by migration: nothing is loaded into RAM.
    pub incoming: bool,
    /// Guest RAM another vmm-core made (a live upgrade; implies `incoming`).
    pub ram: Option<std::fs::File>,
    /// ACPI memory hotplug's slots and maximum (None: no DIMM can be added).
    pub memory_hotplug: Option<ipc::MemoryHotplug>,
    /// The vCPUs' CPU model.
    pub cpu: ipc::CpuModel,
}

/// Builds the VM around an opened /dev/kvm, an already read boot image, an opened
/// console and connected backends (the caller, the command line or the gateway, opened
/// whatever paths they name). The vCPUs are ready to run; nothing runs yet.
pub fn build_vm(
    kvm: Kvm,
    config: &VmConfig,
    mut boot: BootImage,
    console: Console,
    disks: Vec<DiskConnection>,
    nics: Vec<NicConnection>,
) -> Result<Vm, VmError> {
    let cpus = cpu_layout(&kvm, config)?;
    let memory_plan = device_memory_plan(config)?;
    let ram = match &config.ram {
        Some(memfd) => GuestRam::from_memfd(
            memfd.try_clone().map_err(MemoryError::Memfd)?,
            config.memory_mib,
        )?,
        None => GuestRam::new(config.memory_mib)?,
    };
    let incoming = config.incoming || config.ram.is_some();
    let vm = create_kvm_vm(&kvm, &ram)?;
    let chips = PowerOnChips::capture(&vm)?;
    let (events, events_rx) = EventSender::channel();
    let mut pio = Bus::default();
    let mut mmio = Bus::default();
    let platform = attach_platform_devices(&vm, &events, &console, &cpus, &mut pio)?;
    let pci = attach_pci_root(&events, platform.gpe.clone(), &mut pio, &mut mmio)?;
    let device_memory =
        attach_memory_hotplug(memory_plan, &events, platform.gpe.clone(), &mut pio)?;
    boot.set_memory_slots(memory_plan.map_or(0, |p| p.slots));
    let router = MsiRouter::new(vm.clone());
    let transports = Transports {
        pci: &pci,
        vm: &vm,
        router: router.clone(),
        ram: &ram,
        within: FIRST_CONNECTION,
    };
    let (disks, nics) = attach_devices(&transports, disks, nics)?;
    let recipe = VcpuRecipe::new(&kvm, cpus.max(), &config.cpu).map_err(recipe_error)?;
    let vcpus = create_vcpus(&recipe, &vm, &cpus)?;
    let readable_msrs = match vcpus.values().next() {
        Some(v) => {
            let v = v.lock();
            crate::cpu::state::readable_msrs(v.fd(), v.id as u32, recipe.msr_list())
                .map_err(|e| VmError::Msrs(e.to_string()))?
        }
        None => Vec::new(),
    };
    // An incoming VM's RAM is the source's (or, upgraded, already the guest's): nothing
    // is loaded; a later reset loads the kernel.
    let loaded = match incoming {
        true => None,
        false => Some(boot.load(&ram, &cpus)?),
    };
    let vm = Vm {
        vm,
        ram,
        boot,
        loaded,
        vcpus,
        max_cpus: cpus.max(),
        recipe,
        cpu_hotplug: platform.cpu_hotplug,
        chips,
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        router,
        readable_msrs,
        pm: platform.pm,
        events,
        events_rx,
        console: Some((console, platform.serial)),
        pci,
        start_paused: config.start_paused,
        no_shutdown: false,
        incoming,
        disks,
        nics,
        balloon: None,
        device_memory,
        input: InputPlayer::start(platform.i8042).map_err(VmError::Thread)?,
    };
    if !incoming {
        vm.reset_vcpus()?;
    }
    Ok(vm)
}

/// Where device memory must end: 40 address bits, what every x86-64 CPU of a host (and
/// QEMU's TCG default) offers a guest.
const DEVICE_MEMORY_LIMIT: u64 = 1 << 40;

/// Memory hotplug's shape: its slots and the device memory region DIMMs go in.
#[derive(Clone, Copy)]
struct MemoryPlan {
    slots: u32,
    base: u64,
    size: u64,
}

/// The device memory region for the launch's memory hotplug (none without slots),
/// checked: at most QEMU's 256 slots, above RAM and within what 4-level paging and KVM
/// reach (1 << 46).
fn device_memory_plan(config: &VmConfig) -> Result<Option<MemoryPlan>, VmError> {
    let Some(hp) = config.memory_hotplug.filter(|hp| hp.slots > 0) else {
        return Ok(None);
    };
    let bad = |why: String| VmError::MemoryHotplug(why);
    if hp.slots > MAX_SLOTS {
        return Err(bad(format!(
            "{} memory slots (at most {MAX_SLOTS})",
            hp.slots
        )));
    }
    let ram = config.memory_mib << 20;
    let (base, size) = hp.region(ram).ok_or_else(|| {
        bad(format!(
            "maxmem {:#x} does not fit with {ram:#x} bytes of RAM and {} slots",
            hp.max_bytes, hp.slots
        ))
    })?;
    if base + size > DEVICE_MEMORY_LIMIT {
        return Err(bad(format!(
            "device memory [{base:#x}+{size:#x}] ends beyond {DEVICE_MEMORY_LIMIT:#x}"
        )));
    }
    Ok(Some(MemoryPlan {
        slots: hp.slots,
        base,
        size,
    }))
}

/// ACPI memory hotplug's register block (raising `gpe`), for a plan.
fn attach_memory_hotplug(
    plan: Option<MemoryPlan>,
    events: &EventSender,
    gpe: SharedGpe,
    pio: &mut Bus,
) -> Result<Option<DeviceMemory>, VmError> {
    let Some(plan) = plan else {
        return Ok(None);
    };
    let block = Arc::new(Mutex::new(MemoryHotplug::new(
        plan.slots,
        gpe,
        events.clone(),
    )));
    pio.insert(
        u64::from(ports::MEMORY_HOTPLUG),
        u64::from(ports::MEMORY_HOTPLUG_LEN),
        block.clone(),
    )?;
    Ok(Some(DeviceMemory::new(block, plan.base, plan.size)))
}

/// The vCPUs the VM has and may have, checked against what KVM and the xAPIC allow.
fn cpu_layout(kvm: &Kvm, config: &VmConfig) -> Result<CpuLayout, VmError> {
    let (cpus, max) = (config.cpus, config.max_cpus);
    if cpus == 0 {
        return Err(VmError::NoVcpus);
    }
    if max < cpus {
        return Err(VmError::MaxBelowCpus { max, cpus });
    }
    let kvm_max = kvm.get_max_vcpus();
    if cpus > kvm_max {
        return Err(VmError::TooManyVcpus {
            requested: cpus,
            max: kvm_max,
        });
    }
    if max > kvm_max {
        return Err(VmError::TooManyMaxVcpus {
            requested: max,
            max: kvm_max,
        });
    }
    if max > MAX_XAPIC_CPUS {
        return Err(VmError::TooManyXapicIds(max));
    }
    let mut present: BTreeSet<u32> = (0..cpus as u32).collect();
    for &index in &config.added_cpus {
        if index as usize >= max || !present.insert(index) {
            return Err(VmError::BadAddedCpu { index, cpus, max });
        }
    }
    if max > kvm.get_nr_vcpus() {
        log::warn!(
            "{max} vCPUs is more than the {} KVM recommends on this host; they will share host CPUs",
            kvm.get_nr_vcpus()
        );
    }
    Ok(CpuLayout::new(max as u32, present))
}

fn recipe_error(e: RecipeError) -> VmError {
    match e {
        RecipeError::Vcpu(e) => VmError::Vcpu(e),
        RecipeError::Msrs(e) => VmError::Msrs(e),
        RecipeError::Kvm { what, error } => VmError::Kvm(crate::error::KvmError { what, error }),
        e @ RecipeError::FeatureKept { vcpu, .. } => VmError::VcpuFailed {
            vcpu: vcpu as usize,
            reason: e.to_string(),
        },
    }
}

/// The KVM VM with guest RAM registered, the in-kernel irqchip and PIT.
fn create_kvm_vm(kvm: &Kvm, ram: &GuestRam) -> Result<Arc<VmFd>, VmError> {
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("creating the VM"))?);
    vm.set_tss_address(KVM_TSS as usize)
        .map_err(kvm_err("setting the TSS address"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP)
        .map_err(kvm_err("setting the identity map address"))?;
    ram.regions()
        .iter()
        .try_for_each(|r| match ram.host_addr(r) {
            Some(_) => Ok(()),
            None => Err(MemoryError::Mmap(format!(
                "no host mapping for {:#x}",
                r.guest_addr
            ))),
        })?;
    crate::dirty_log::register_ram(&vm, ram, false)?;
    vm.create_irq_chip()
        .map_err(kvm_err("creating the in-kernel irqchip"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(kvm_err("creating the in-kernel PIT"))?;
    Ok(vm)
}

/// The platform devices the control loop reaches again later.
struct Platform {
    serial: Arc<Mutex<SerialDevice>>,
    pm: Arc<Mutex<AcpiPm>>,
    gpe: SharedGpe,
    cpu_hotplug: SharedCpuHotplug,
    i8042: Arc<Mutex<I8042>>,
}

/// COM1 (its interrupt an irqfd), the ACPI PM and GPE blocks (sharing the SCI, a KVM IRQ
/// line), the CPU hotplug registers (raising GPE 2) and the i8042 keyboard controller
/// (IRQ 1 and 12, KVM IRQ lines), on the port bus.
fn attach_platform_devices(
    vm: &Arc<VmFd>,
    events: &EventSender,
    console: &Console,
    cpus: &CpuLayout,
    pio: &mut Bus,
) -> Result<Platform, VmError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Serial)?;
    vm.register_irqfd(&serial_irq, ports::COM1_IRQ)
        .map_err(kvm_err("registering the serial irqfd"))?;
    let serial = Arc::new(Mutex::new(
        SerialDevice::new(serial_irq, console.out.clone()).map_err(VmError::Serial)?,
    ));
    let sci = SharedLine::new(Box::new(KvmIrqLine::new(vm.clone(), ports::SCI_IRQ)));
    let pm = Arc::new(Mutex::new(AcpiPm::new(sci.source(), events.clone())));
    let gpe = Arc::new(Mutex::new(Gpe0::new(sci.source())));
    pio.insert(u64::from(ports::COM1), 8, serial.clone())?;
    pio.insert(
        u64::from(ports::PM_BASE),
        u64::from(ports::PM_BLOCK_LEN),
        pm.clone(),
    )?;
    pio.insert(
        u64::from(ports::GPE0_BLK),
        u64::from(ports::GPE0_BLK_LEN),
        gpe.clone(),
    )?;
    let cpu_hotplug = Arc::new(Mutex::new(CpuHotplug::new(
        cpus.max(),
        cpus.present(),
        Some(gpe.clone()),
        events.clone(),
    )));
    pio.insert(
        u64::from(ports::CPU_HOTPLUG),
        u64::from(ports::CPU_HOTPLUG_LEN),
        cpu_hotplug.clone(),
    )?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        events.clone(),
        Box::new(KvmIrqLine::new(vm.clone(), ports::I8042_KBD_IRQ)),
        Box::new(KvmIrqLine::new(vm.clone(), ports::I8042_AUX_IRQ)),
    )));
    let (data_port, command_port) = I8042Port::pair(i8042.clone());
    pio.insert(
        u64::from(ports::I8042_DATA),
        1,
        Arc::new(Mutex::new(data_port)),
    )?;
    pio.insert(
        u64::from(ports::I8042_COMMAND),
        1,
        Arc::new(Mutex::new(command_port)),
    )?;
    Ok(Platform {
        i8042,
        serial,
        pm,
        gpe,
        cpu_hotplug,
    })
}

/// PCI bus 0: the configuration ports (which also hold the reset control register), ECAM,
/// the window BARs are assigned from, and the ACPI hotplug controller (raising `gpe`).
fn attach_pci_root(
    events: &EventSender,
    gpe: SharedGpe,
    pio: &mut Bus,
    mmio: &mut Bus,
) -> Result<Arc<Mutex<PciRoot>>, VmError> {
    let pci = Arc::new(Mutex::new(PciRoot::default()));
    pci.lock().connect_hotplug(gpe, events.clone());
    pio.insert(
        u64::from(ports::PCI_HOTPLUG),
        u64::from(ports::PCI_HOTPLUG_LEN),
        Arc::new(Mutex::new(PciHotplugIo::new(pci.clone()))),
    )?;
    let reset_control = Arc::new(Mutex::new(ResetControl::new(events.clone())));
    pio.insert(
        u64::from(ports::PCI_CONFIG_ADDRESS),
        u64::from(ports::PCI_CONFIG_LEN),
        Arc::new(Mutex::new(PciConfigIo::new(pci.clone(), reset_control))),
    )?;
    mmio.insert(
        PCI_ECAM,
        PCI_ECAM_SIZE,
        Arc::new(Mutex::new(PciEcam::new(pci.clone()))),
    )?;
    mmio.insert(
        PCI_MMIO_START,
        PCI_MMIO_END - PCI_MMIO_START,
        Arc::new(Mutex::new(PciMmioWindow::new(pci.clone()))),
    )?;
    Ok(pci)
}

/// The VM's disks and NICs, each by its index.
type Devices = (BTreeMap<u32, DiskHandle>, BTreeMap<u32, NicHandle>);

/// The disks and NICs in their slots (`PciRoot::plan_slots`, disks then NICs in
/// their order: without slots asked for, slots 1, 2, 3, ... as they come).
fn attach_devices(
    transports: &Transports,
    disks: Vec<DiskConnection>,
    nics: Vec<NicConnection>,
) -> Result<Devices, VmError> {
    once_each("disk", disks.iter().map(|d| d.index))?;
    once_each("NIC", nics.iter().map(|n| n.index))?;
    let wanted: Vec<Option<u8>> = (disks.iter().map(|d| d.slot))
        .chain(nics.iter().map(|n| n.slot))
        .collect();
    let slots = transports
        .pci
        .lock()
        .plan_slots(&wanted)
        .map_err(VmError::Slots)?;
    let (disk_slots, nic_slots) = slots.split_at(disks.len());
    let mut disk_handles = BTreeMap::new();
    for (disk, &slot) in disks.into_iter().zip(disk_slots) {
        let index = disk.index;
        disk_handles.insert(index, transports.attach_disk(disk, Plug::AtBoot(slot))?);
    }
    let mut nic_handles = BTreeMap::new();
    for (nic, &slot) in nics.into_iter().zip(nic_slots) {
        let index = nic.index;
        nic_handles.insert(index, transports.attach_nic(nic, Plug::AtBoot(slot))?);
    }
    Ok((disk_handles, nic_handles))
}

/// Refuses an index given twice (requests name the devices by it).
fn once_each(kind: &'static str, indexes: impl Iterator<Item = u32>) -> Result<(), VmError> {
    let mut seen = BTreeSet::new();
    for index in indexes {
        if !seen.insert(index) {
            return Err(VmError::IndexTwice { kind, index });
        }
    }
    Ok(())
}

/// The virtio-balloon device (served by vmm-core itself: devices/virtio_balloon/) on bus
/// 0, in the slot `launch` asks for or the lowest free one, after the devices the VM was
/// built with, before it runs.
pub fn attach_balloon(vm: &mut Vm, launch: &ipc::BalloonLaunch) -> Result<(), VmError> {
    let transport = |error: String| {
        VmError::Attach(AttachError::Transport {
            name: "balloon".into(),
            error,
        })
    };
    let balloon = Balloon::new(&vm.ram, vm.events.clone()).map_err(|e| transport(e.to_string()))?;
    let handle = balloon.handle();
    let bar = vm.pci.lock().allocate_bar(virtio_pci::BAR_SIZE)?;
    let function = VirtioPci::new(
        Box::new(balloon),
        bar.addr,
        vm.vm.clone(),
        vm.router.clone(),
    )
    .map_err(transport)?
    .with_qdev_id(launch.qdev_id.clone());
    let mut pci = vm.pci.lock();
    let slot = pci.plan_slots(&[launch.slot])?[0];
    pci.add(Arc::new(Mutex::new(function)), slot)?;
    drop(pci);
    vm.balloon = Some(handle);
    Ok(())
}

/// The vCPUs there are, by id, each with its CPUID (topology) and boot MSRs.
fn create_vcpus(
    recipe: &VcpuRecipe,
    vm: &VmFd,
    cpus: &CpuLayout,
) -> Result<BTreeMap<u32, Arc<Mutex<Vcpu>>>, VmError> {
    let mut vcpus = BTreeMap::new();
    for id in cpus.present() {
        let vcpu = recipe.make(vm, id).map_err(recipe_error)?;
        vcpus.insert(id, Arc::new(Mutex::new(vcpu)));
    }
    Ok(vcpus)
}
