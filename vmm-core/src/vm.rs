//! Assembles a VM from its parts (KVM VM, guest RAM, interrupt controllers, platform
//! devices, vCPUs, boot image) and runs its control loop: power-off, reset and failures
//! all arrive as `VmEvent`s and are handled here.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use parking_lot::Mutex;
use vmm_sys_util::eventfd::EventFd;

use ipc::{
    CpuState, RemoteError, RunState, ShutdownCause, VcpuInfo, VmmEvent, VmmReply, VmmRequest,
};

use crate::boot::{BootError, BootImage, LoadedKernel};
use crate::control::Control;
use crate::cpu::{cpuid, msrs};
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::bus::{Bus, OverlapError};
use crate::devices::i8042::I8042;
use crate::devices::pci::{PciConfigIo, PciEcam, PciError, PciMmioWindow, PciRoot};
use crate::devices::reset_control::ResetControl;
use crate::devices::serial::{Console, SerialDevice};
use crate::devices::virtio_pci::{self, VirtioPci};
use crate::devices::IrqLine;
use crate::events::{EventSender, VmEvent};
use crate::interrupts::MsiRouter;
use crate::layout::{
    ports, KVM_IDENTITY_MAP, KVM_TSS, PCI_ECAM, PCI_ECAM_SIZE, PCI_MMIO_END, PCI_MMIO_START,
};
use crate::memory::{GuestRam, MemoryError};
use crate::vcpu::{self, Request, Vcpu, VcpuControl, VcpuError, VcpuThread};
use crate::vhost_user::{
    Blk, ConfigChangeHandle, Handover, LinkHandle, Net, Reconnect, VhostUserDevice,
};

/// The most vCPUs our MADT can describe with xAPIC ids (0xff is broadcast).
pub const MAX_XAPIC_CPUS: usize = 255;

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub memory_mib: u64,
    pub cpus: usize,
    /// Keep the vCPUs stopped until a `Cont` request (run state "prelaunch").
    pub start_paused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("--cpus 0: a VM needs at least one vCPU")]
    NoVcpus,
    #[error("--cpus {requested}: KVM on this host allows at most {max} vCPUs per VM")]
    TooManyVcpus { requested: usize, max: usize },
    #[error("--cpus {0}: at most {MAX_XAPIC_CPUS} vCPUs can have xAPIC ids")]
    TooManyXapicIds(usize),
    #[error("{what}: {error}")]
    Kvm {
        what: &'static str,
        error: kvm_ioctls::Error,
    },
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
    #[error("starting a thread: {0}")]
    Thread(std::io::Error),
    #[error("building the boot MSR list: {0}")]
    Msrs(String),
    #[error("vCPU {vcpu}: {reason}")]
    VcpuFailed { vcpu: usize, reason: String },
    #[error(transparent)]
    Pci(#[from] PciError),
    #[error("{0}")]
    Disk(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |error| VmError::Kvm { what, error }
}

/// Presses the fixed-feature ACPI power button (what QMP system_powerdown does).
#[derive(Clone)]
pub struct PowerButton(Arc<Mutex<AcpiPm>>);

impl PowerButton {
    pub fn press(&self) {
        self.0.lock().press_power_button();
    }
}

/// A disk served by a vhost-user backend, over an already connected socket.
pub struct DiskConnection {
    pub stream: std::os::unix::net::UnixStream,
    /// Most queues the guest gets (the backend may offer fewer).
    pub max_queues: usize,
    /// The backend's socket, to connect to again if it hangs up (vmm-core on its own);
    /// None under the gateway, which hands over a new connection instead.
    pub path: Option<std::path::PathBuf>,
}

/// A virtio-net NIC served by a vhost-user backend.
pub struct NicConnection {
    pub conn: DiskConnection,
    pub mac: [u8; 6],
    pub queue_pairs: u16,
}

/// A disk as the VM's control loop sees it.
struct DiskHandle {
    config: ConfigChangeHandle,
    /// Connections the gateway hands over after restarting the disk's daemon.
    reconnect: Option<Handover>,
}

/// A NIC as the VM's control loop sees it.
struct NicHandle {
    link: LinkHandle,
    reconnect: Option<Handover>,
}

/// Gives a device's link thread the connection the gateway sent.
fn hand_over(
    to: Option<&Handover>,
    fds: Vec<std::os::fd::OwnedFd>,
    what: &str,
) -> Result<VmmReply, RemoteError> {
    match (to, fds.into_iter().next()) {
        (Some(tx), Some(fd)) => {
            tx.hand_over(std::os::unix::net::UnixStream::from(fd));
            Ok(VmmReply::Done)
        }
        (None, _) => Err(RemoteError::generic(format!(
            "{what} does not take connections from the gateway"
        ))),
        (_, None) => Err(RemoteError::generic("no connection came with the request")),
    }
}

/// How a VM run ended, when it ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    PowerOff,
    Signal(i32),
    /// The gateway asked vmm-core to quit.
    Quit,
    /// The gateway hung up.
    ControlClosed,
}

/// A level-triggered ISA/GSI line driven through KVM_IRQ_LINE.
struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
}

impl IrqLine for KvmIrqLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, high) {
            log::error!("setting GSI {} to {high}: {e}", self.gsi);
        }
    }
}

/// The in-kernel interrupt controllers and PIT as created, restored on reset.
struct PowerOnChips {
    irqchips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
}

pub struct Vm {
    vm: Arc<VmFd>,
    ram: GuestRam,
    boot: BootImage,
    loaded: LoadedKernel,
    vcpus: Vec<Arc<Mutex<Vcpu>>>,
    chips: PowerOnChips,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    pm: Arc<Mutex<AcpiPm>>,
    events: EventSender,
    events_rx: Receiver<VmEvent>,
    console: Option<(Console, Arc<Mutex<SerialDevice>>)>,
    start_paused: bool,
    /// Per disk, in launch order.
    disks: Vec<DiskHandle>,
    /// Per NIC, in launch order.
    nics: Vec<NicHandle>,
}

impl Vm {
    /// Builds the VM around an opened /dev/kvm, an already read boot image and an opened
    /// console (the caller, the command line or the gateway, opened whatever paths they
    /// name).
    pub fn new(
        kvm: Kvm,
        config: &VmConfig,
        boot: BootImage,
        console: Console,
        disks: Vec<DiskConnection>,
        nics: Vec<NicConnection>,
    ) -> Result<Vm, VmError> {
        if config.cpus == 0 {
            return Err(VmError::NoVcpus);
        }
        let max = kvm.get_max_vcpus();
        if config.cpus > max {
            return Err(VmError::TooManyVcpus {
                requested: config.cpus,
                max,
            });
        }
        if config.cpus > MAX_XAPIC_CPUS {
            return Err(VmError::TooManyXapicIds(config.cpus));
        }
        if config.cpus > kvm.get_nr_vcpus() {
            log::warn!(
                "{} vCPUs is more than the {} KVM recommends on this host; they will share host CPUs",
                config.cpus,
                kvm.get_nr_vcpus()
            );
        }
        let ram = GuestRam::new(config.memory_mib)?;

        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("creating the VM"))?);
        vm.set_tss_address(KVM_TSS as usize)
            .map_err(kvm_err("setting the TSS address"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP)
            .map_err(kvm_err("setting the identity map address"))?;
        register_ram(&vm, &ram)?;
        vm.create_irq_chip()
            .map_err(kvm_err("creating the in-kernel irqchip"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("creating the in-kernel PIT"))?;
        let chips = capture_chips(&vm)?;

        let (events, events_rx) = EventSender::channel();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::Serial)?;
        vm.register_irqfd(&serial_irq, ports::COM1_IRQ)
            .map_err(kvm_err("registering the serial irqfd"))?;
        let serial = Arc::new(Mutex::new(
            SerialDevice::new(serial_irq, console.out.clone()).map_err(VmError::Serial)?,
        ));
        let pm = Arc::new(Mutex::new(AcpiPm::new(
            Box::new(KvmIrqLine {
                vm: vm.clone(),
                gsi: ports::SCI_IRQ,
            }),
            events.clone(),
        )));
        let mut pio = Bus::default();
        pio.insert(u64::from(ports::COM1), 8, serial.clone())?;
        pio.insert(
            u64::from(ports::PM_BASE),
            u64::from(ports::PM_BLOCK_LEN),
            pm.clone(),
        )?;
        // PCI: configuration ports (which also hold the reset control register), ECAM,
        // and the window BARs are assigned from; then a virtio-pci device per disk.
        let pci = Arc::new(Mutex::new(PciRoot::default()));
        let reset_control = Arc::new(Mutex::new(ResetControl::new(events.clone())));
        pio.insert(
            u64::from(ports::PCI_CONFIG_ADDRESS),
            u64::from(ports::PCI_CONFIG_LEN),
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone(), reset_control))),
        )?;
        let mut mmio = Bus::default();
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
        let router = MsiRouter::new(vm.clone());
        let mut disk_handles = Vec::new();
        for (i, disk) in disks.into_iter().enumerate() {
            let (reconnect, handed) = Reconnect::new(disk.path);
            let blk = VhostUserDevice::new(
                format!("disk {i}"),
                Blk::new(disk.max_queues),
                disk.stream,
                reconnect,
                &ram,
            )
            .map_err(|e| VmError::Disk(format!("disk {i}: {e}")))?;
            disk_handles.push(DiskHandle {
                config: blk.config_change_handle(),
                reconnect: handed,
            });
            let bar = pci.lock().allocate_bar(virtio_pci::BAR_SIZE)?;
            let device = VirtioPci::new(Box::new(blk), bar.addr, vm.clone(), router.clone())
                .map_err(|e| VmError::Disk(format!("disk {i}: {e}")))?;
            pci.lock().add(Arc::new(Mutex::new(device)))?;
        }
        let mut nic_handles = Vec::new();
        for (i, nic) in nics.into_iter().enumerate() {
            let (reconnect, handed) = Reconnect::new(nic.conn.path);
            let net = Net::new(nic.mac, nic.queue_pairs);
            let link_up = net.link_up();
            let dev =
                VhostUserDevice::new(format!("nic {i}"), net, nic.conn.stream, reconnect, &ram)
                    .map_err(|e| VmError::Disk(format!("nic {i}: {e}")))?;
            nic_handles.push(NicHandle {
                link: LinkHandle::new(link_up, dev.config_change_handle()),
                reconnect: handed,
            });
            let bar = pci.lock().allocate_bar(virtio_pci::BAR_SIZE)?;
            let device = VirtioPci::new(Box::new(dev), bar.addr, vm.clone(), router.clone())
                .map_err(|e| VmError::Disk(format!("nic {i}: {e}")))?;
            pci.lock().add(Arc::new(Mutex::new(device)))?;
        }
        pio.insert(
            u64::from(ports::I8042_DATA),
            1,
            Arc::new(Mutex::new(I8042::new(events.clone(), false))),
        )?;
        pio.insert(
            u64::from(ports::I8042_COMMAND),
            1,
            Arc::new(Mutex::new(I8042::new(events.clone(), true))),
        )?;

        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("reading supported CPUID"))?;
        let msr_list = kvm
            .get_msr_index_list()
            .map_err(kvm_err("reading the MSR index list"))?;
        let mut vcpus = Vec::with_capacity(config.cpus);
        for id in 0..config.cpus {
            let cpuid = cpuid::for_vcpu(&supported_cpuid, id as u32, config.cpus as u32);
            let boot_msrs =
                msrs::boot_msrs(msr_list.as_slice()).map_err(|e| VmError::Msrs(e.to_string()))?;
            vcpus.push(Arc::new(Mutex::new(Vcpu::new(&vm, id, &cpuid, boot_msrs)?)));
        }

        let loaded = boot.load(&ram, config.cpus)?;
        let vm = Vm {
            vm,
            ram,
            boot,
            loaded,
            vcpus,
            chips,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            pm,
            events,
            events_rx,
            console: Some((console, serial)),
            start_paused: config.start_paused,
            disks: disk_handles,
            nics: nic_handles,
        };
        vm.reset_vcpus()?;
        Ok(vm)
    }

    /// For callers that feed events from outside (signals, later the control channel).
    pub fn event_sender(&self) -> EventSender {
        self.events.clone()
    }

    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    pub fn loaded_kernel(&self) -> &LoadedKernel {
        &self.loaded
    }

    /// A handle that presses the ACPI power button while the VM runs.
    pub fn power_button(&self) -> PowerButton {
        PowerButton(self.pm.clone())
    }

    fn reset_vcpus(&self) -> Result<(), VmError> {
        for (i, vcpu) in self.vcpus.iter().enumerate() {
            let entry = (i == 0).then_some(&self.loaded.entry);
            vcpu.lock().reset(entry)?;
        }
        Ok(())
    }

    /// Platform reset with every vCPU parked: memory back to what the loader wrote,
    /// interrupt controllers, PIT and devices to power-on state, vCPUs to boot state.
    fn reset(&mut self) -> Result<(), VmError> {
        self.ram.clear()?;
        self.loaded = self.boot.load(&self.ram, self.vcpus.len())?;
        for chip in &self.chips.irqchips {
            self.vm
                .set_irqchip(chip)
                .map_err(kvm_err("restoring the irqchip"))?;
        }
        self.vm
            .set_pit2(&self.chips.pit)
            .map_err(kvm_err("restoring the PIT"))?;
        self.pio.reset();
        self.mmio.reset();
        self.reset_vcpus()
    }

    /// Runs the guest until it powers off, a signal arrives, the gateway says quit or
    /// hangs up, or (without a gateway) something fails. With a gateway (`control`), the
    /// launch request `launch_id` is answered once the vCPU threads exist, and a failed
    /// vCPU leaves the VM stopped in "internal-error" for the gateway to reset or quit.
    pub fn run(mut self, control: Option<(&Control, u64)>) -> Result<VmExit, VmError> {
        vcpu::install_kick_handler().map_err(VmError::Thread)?;
        if let Some((console, serial)) = self.console.take() {
            console.start_input(serial).map_err(VmError::Serial)?;
        }
        let vcpus = Arc::new(VcpuControl::new(self.vcpus.len()));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut thread_ids = Vec::new();
        for vcpu in &self.vcpus {
            let id = vcpu.lock().id;
            let thread_id = Arc::new(AtomicI32::new(0));
            thread_ids.push(thread_id.clone());
            let thread = VcpuThread {
                vcpu: vcpu.clone(),
                thread_id,
                control: vcpus.clone(),
                pio: self.pio.clone(),
                mmio: self.mmio.clone(),
                events: self.events.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || thread.run())
                .map_err(VmError::Thread)?;
            vcpus.register_thread(std::os::unix::thread::JoinHandleExt::as_pthread_t(&handle));
            threads.push(handle);
        }
        // Every thread has published its id once it parked for this request.
        let generation = vcpus.request(Request::Pause);
        vcpus.wait_parked(generation);
        let mut runner = Runner {
            vm: self,
            control: control.map(|(c, _)| c),
            vcpus: vcpus.clone(),
            thread_ids: thread_ids
                .iter()
                .map(|t| t.load(Ordering::Acquire))
                .collect(),
            state: RunState::Prelaunch,
        };
        // Started before the launch reply, so the gateway knows the run state by the time
        // it has that reply (the RunState event travels first on the same channel).
        if !runner.vm.start_paused {
            runner.cont_vcpus();
        }
        if let Some((control, launch_id)) = control {
            control
                .start_reader(runner.vm.events.clone())
                .map_err(VmError::Thread)?;
            let vcpus = runner
                .thread_ids
                .iter()
                .enumerate()
                .map(|(index, &thread_id)| VcpuInfo {
                    index: index as u32,
                    thread_id,
                })
                .collect();
            control.reply(launch_id, Ok(VmmReply::Launched { vcpus }));
        }
        let result = runner.event_loop();
        let generation = vcpus.request(Request::Exit);
        vcpus.wait_parked(generation);
        for t in threads {
            let _ = t.join();
        }
        result
    }
}

/// The control loop's state while the VM runs.
struct Runner<'a> {
    vm: Vm,
    control: Option<&'a Control>,
    vcpus: Arc<VcpuControl>,
    thread_ids: Vec<i32>,
    state: RunState,
}

impl Runner<'_> {
    fn notify(&self, event: VmmEvent) {
        match self.control {
            Some(c) => c.event(event),
            None => log::debug!("{event:?}"),
        }
    }

    fn set_state(&mut self, state: RunState) {
        if self.state != state {
            self.state = state;
            self.notify(VmmEvent::RunState(state));
        }
    }

    fn pause_vcpus(&self) {
        let generation = self.vcpus.request(Request::Pause);
        self.vcpus.wait_parked(generation);
    }

    fn cont_vcpus(&mut self) {
        self.vcpus.request(Request::Run);
        self.set_state(RunState::Running);
    }

    fn stop(&mut self) {
        if self.state == RunState::Running {
            self.pause_vcpus();
            self.set_state(RunState::Paused);
        }
    }

    fn cont(&mut self) -> Result<(), RemoteError> {
        match self.state {
            RunState::Running => Ok(()),
            RunState::Paused | RunState::Prelaunch => {
                self.cont_vcpus();
                Ok(())
            }
            RunState::InternalError | RunState::Shutdown => Err(RemoteError::generic(
                "Resetting the Virtual Machine is required",
            )),
        }
    }

    /// A platform reset; the VM keeps its run state, except that a VM that cannot run
    /// (failed, shut down) comes back ready to start, as QEMU's does.
    fn reset(&mut self, cause: ShutdownCause) -> Result<(), VmError> {
        self.pause_vcpus();
        self.vm.reset()?;
        // Reset requests raised by the old boot (a second write to the reset register,
        // say) are stale; anything else still matters.
        let pending: Vec<VmEvent> = self.vm.events_rx.try_iter().collect();
        pending
            .into_iter()
            .filter(|e| !matches!(e, VmEvent::Reset(_)))
            .for_each(|e| self.vm.events.send(e));
        self.notify(VmmEvent::Reset(cause));
        match self.state {
            RunState::Running => {
                self.vcpus.request(Request::Run);
            }
            RunState::InternalError | RunState::Shutdown => self.set_state(RunState::Prelaunch),
            RunState::Paused | RunState::Prelaunch => {}
        }
        Ok(())
    }

    fn query_cpus(&self) -> Result<Vec<CpuState>, RemoteError> {
        let running = self.state == RunState::Running;
        if running {
            self.pause_vcpus();
        }
        let sampled: Result<Vec<CpuState>, VcpuError> = self
            .vm
            .vcpus
            .iter()
            .zip(&self.thread_ids)
            .map(|(vcpu, &thread_id)| {
                let vcpu = vcpu.lock();
                vcpu.sample().map(|(pc, halted)| CpuState {
                    index: vcpu.id as u32,
                    thread_id,
                    pc,
                    halted,
                })
            })
            .collect();
        if running {
            self.vcpus.request(Request::Run);
        }
        sampled.map_err(|e| RemoteError::generic(e.to_string()))
    }

    /// An NMI to every vCPU (KVM_NMI needs each vCPU out of KVM_RUN for a moment).
    fn inject_nmi(&self) -> Result<(), RemoteError> {
        let running = self.state == RunState::Running;
        if running {
            self.pause_vcpus();
        }
        let result = self
            .vm
            .vcpus
            .iter()
            .try_for_each(|v| v.lock().nmi())
            .map_err(|e| RemoteError::generic(e.to_string()));
        if running {
            self.vcpus.request(Request::Run);
        }
        result
    }

    fn handle_request(
        &mut self,
        request: VmmRequest,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<Result<VmmReply, RemoteError>, VmError> {
        Ok(match request {
            VmmRequest::Launch(_) => Err(RemoteError::generic("the VM is already launched")),
            VmmRequest::Stop => {
                self.stop();
                Ok(VmmReply::Done)
            }
            VmmRequest::Cont => self.cont().map(|()| VmmReply::Done),
            VmmRequest::SystemReset => {
                self.reset(ShutdownCause::HostQmpSystemReset)?;
                Ok(VmmReply::Done)
            }
            VmmRequest::SystemPowerdown => {
                self.vm.pm.lock().press_power_button();
                self.notify(VmmEvent::Powerdown);
                Ok(VmmReply::Done)
            }
            VmmRequest::QueryCpus => self.query_cpus().map(VmmReply::Cpus),
            VmmRequest::InjectNmi => self.inject_nmi().map(|()| VmmReply::Done),
            VmmRequest::DiskConfigChanged { disk } => match self.vm.disks.get(disk as usize) {
                Some(d) => {
                    d.config.raise();
                    Ok(VmmReply::Done)
                }
                None => Err(RemoteError::generic(format!("no disk {disk}"))),
            },
            VmmRequest::NicSetLink { nic, up } => {
                match self.vm.nics.get(nic as usize).map(|n| &n.link) {
                    Some(l) => {
                        l.set(up);
                        Ok(VmmReply::Done)
                    }
                    None => Err(RemoteError::generic(format!("no NIC {nic}"))),
                }
            }
            VmmRequest::DiskReconnect { disk } => {
                let handed = self
                    .vm
                    .disks
                    .get(disk as usize)
                    .and_then(|d| d.reconnect.as_ref());
                hand_over(handed, fds, &format!("disk {disk}"))
            }
            VmmRequest::NicReconnect { nic } => {
                let handed = self
                    .vm
                    .nics
                    .get(nic as usize)
                    .and_then(|n| n.reconnect.as_ref());
                hand_over(handed, fds, &format!("NIC {nic}"))
            }
            // Quit is answered by the event loop, which then ends.
            VmmRequest::Quit(_) => Ok(VmmReply::Done),
        })
    }

    fn event_loop(&mut self) -> Result<VmExit, VmError> {
        loop {
            // The sender half lives in `self.vm`, so recv only fails if that is gone.
            let Ok(event) = self.vm.events_rx.recv() else {
                return Ok(VmExit::PowerOff);
            };
            match event {
                VmEvent::PowerOff => {
                    self.notify(VmmEvent::Shutdown(ShutdownCause::GuestShutdown));
                    return Ok(VmExit::PowerOff);
                }
                VmEvent::Signal(sig) => {
                    self.notify(VmmEvent::Shutdown(ShutdownCause::HostSignal));
                    return Ok(VmExit::Signal(sig));
                }
                VmEvent::VcpuFailed { vcpu, reason } => {
                    if self.control.is_none() {
                        return Err(VmError::VcpuFailed { vcpu, reason });
                    }
                    log::error!("vCPU {vcpu}: {reason}");
                    self.pause_vcpus();
                    self.set_state(RunState::InternalError);
                    self.notify(VmmEvent::VcpuFailed {
                        vcpu: vcpu as u32,
                        reason,
                    });
                }
                VmEvent::Reset(source) => {
                    log::info!("guest reset ({source})");
                    self.reset(ShutdownCause::GuestReset)?;
                }
                VmEvent::Control { id, request, fds } => {
                    let quit = matches!(request, VmmRequest::Quit(_));
                    if let VmmRequest::Quit(cause) = request {
                        self.notify(VmmEvent::Shutdown(cause));
                    }
                    let result = self.handle_request(request, fds)?;
                    if let Some(c) = self.control {
                        c.reply(id, result);
                    }
                    if quit {
                        return Ok(VmExit::Quit);
                    }
                }
                VmEvent::ControlClosed => return Ok(VmExit::ControlClosed),
            }
        }
    }
}

fn register_ram(vm: &VmFd, ram: &GuestRam) -> Result<(), VmError> {
    for (slot, region) in ram.regions().iter().enumerate() {
        let host = ram.host_addr(region).ok_or_else(|| {
            VmError::Memory(MemoryError::Mmap(format!(
                "no host mapping for {:#x}",
                region.guest_addr
            )))
        })?;
        let mr = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.guest_addr,
            memory_size: region.size,
            userspace_addr: host,
        };
        // SAFETY: the mapping behind `host` lives as long as `ram`, which the Vm owns
        // for as long as the KVM VM exists.
        unsafe { vm.set_user_memory_region(mr) }.map_err(kvm_err("registering guest RAM"))?;
    }
    Ok(())
}

fn capture_chips(vm: &VmFd) -> Result<PowerOnChips, VmError> {
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
