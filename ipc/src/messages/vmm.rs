//! gateway <-> vmm-core: the launch request with the fds the gateway opened, run-state
//! control, and the VM's events.

use serde::{Deserialize, Serialize};

use crate::userfault::MappedRange;

use super::{Call, Message, Upcall};

/// Where the guest's serial console goes. `File` and `UnixListener` come with one fd (an
/// open file, a listening socket) that the gateway opened; `Chardev` with a connected
/// stream socket whose other end is the gateway's chardev (output and input both ways).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SerialSink {
    Stdout,
    None,
    File,
    UnixListener,
    Chardev,
}

/// Everything vmm-core needs to build the VM. The frame carries the kernel's fd, then
/// the initrd's if there is one, then the serial console's if its sink has one. The paths
/// only name the files in error messages: the gateway opened them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub memory_mib: u64,
    /// The vCPUs the VM boots with: 0 to cpus - 1.
    pub cpus: u32,
    /// The most vCPUs it may have (CPU hotplug; at least `cpus`): what the ACPI tables and
    /// the CPUID topology describe.
    pub max_cpus: u32,
    /// vCPUs added since the VM first booted (`CpuAdd`), which a live upgrade's vmm-core
    /// has too, in the order they were added.
    pub added_cpus: Vec<u32>,
    pub cmdline: String,
    pub kernel_path: String,
    pub initrd_path: Option<String>,
    pub serial: SerialSink,
    /// Leave the vCPUs stopped until `Cont` (QMP's -S, run state "prelaunch").
    pub start_paused: bool,
    /// When the guest powers off, stop the vCPUs (run state "shutdown", after the
    /// SHUTDOWN event) instead of exiting: QEMU's -no-shutdown. A reset makes the VM
    /// ready to run again.
    pub no_shutdown: bool,
    /// virtio-blk disks, each with a connected socket to its vhost-user backend.
    pub disks: Vec<DiskLaunch>,
    /// virtio-net NICs, each with a connected socket to its vhost-user backend (after
    /// the disks' fds).
    pub nics: Vec<NicLaunch>,
    /// The VM arrives by migration: memory and device state come from the source
    /// (`IncomingMemory`, `RestoreState`); nothing is loaded and nothing runs until
    /// then (run state "inmigrate").
    pub incoming: bool,
    /// A live upgrade: this vmm-core takes over a running VM from another one. Guest
    /// RAM is the other's memfd (in the frame after the console's), the devices are
    /// shaped as the other's links were (disks then NICs, in launch order), and their
    /// backend connections wait until `RestoreState`. Implies `incoming`.
    pub upgrade: Option<Vec<LinkShape>>,
    /// A virtio-balloon device, served by vmm-core itself (no fd), on bus 0 after the
    /// disks and NICs.
    pub balloon: Option<BalloonLaunch>,
    /// ACPI memory hotplug's slots and device memory (QEMU's -m SIZE,slots=N,maxmem=MAX);
    /// None: no DIMM can be added.
    pub memory_hotplug: Option<MemoryHotplug>,
    /// DIMMs there from the start (QEMU's -device pc-dimm: present at boot, no insert
    /// event), which a migration's destination and a live upgrade's vmm-core have too;
    /// each one's memory backend fd in the frame, after the NICs', in this order.
    pub dimms: Vec<DimmLaunch>,
    /// The vCPUs' model (-cpu host with features turned off).
    pub cpu: CpuModel,
}

/// The shape of ACPI memory hotplug: `slots` DIMM slots (1 to 256), and at most
/// `max_bytes` of memory with the DIMMs (maxmem, at least the RAM).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryHotplug {
    pub slots: u32,
    pub max_bytes: u64,
}

/// Where RAM above 4 GiB starts in vmm-core's layout: RAM past 3 GiB goes above 4 GiB.
const LOW_RAM_MAX: u64 = 0xc000_0000;
const GIB: u64 = 1 << 30;

impl MemoryHotplug {
    /// The device memory region DIMMs go in, for a VM of `ram_bytes` of RAM, as QEMU's pc
    /// machine lays it out: from 4 GiB, past the RAM there rounded up to a GiB, sized
    /// maxmem - RAM plus a GiB per slot (QEMU's room for each DIMM's alignment). (base,
    /// size); None if it does not fit the 64-bit address space.
    pub fn region(&self, ram_bytes: u64) -> Option<(u64, u64)> {
        let high = ram_bytes.saturating_sub(LOW_RAM_MAX);
        let base = (4 * GIB).checked_add(high)?.checked_next_multiple_of(GIB)?;
        let size = self
            .max_bytes
            .checked_sub(ram_bytes)?
            .checked_add(GIB.checked_mul(u64::from(self.slots))?)?;
        base.checked_add(size)?;
        Some((base, size))
    }
}

/// A DIMM (device_add of a pc-dimm): `size` bytes of its memory backend, the fd in the
/// frame, from offset 0, at guest address `addr`, in memory slot `slot`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DimmLaunch {
    pub slot: u32,
    pub addr: u64,
    pub size: u64,
}

/// An ACPI hotplug slot the guest reports on with _OST (QMP's ACPIOSTInfo slot-type and
/// slot): a memory slot, or a possible vCPU by index.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiSlot {
    Dimm(u32),
    Cpu(u32),
}

/// What the guest's _OST last said about an ACPI hotplug slot (QMP's ACPIOSTInfo source
/// and status; 0 and 0 until it says something).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOst {
    pub source: u32,
    pub status: u32,
}

/// The virtio-balloon device (`--device virtio-balloon-pci`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BalloonLaunch {
    /// Its slot on bus 0; None for the lowest free one once the disks and NICs have
    /// theirs.
    pub slot: Option<u8>,
    /// The guest device's qdev id (its id=, "" without one), as query-pci reports it.
    pub qdev_id: String,
}

/// What a vhost-user device had settled with its backend, so that another vmm-core can
/// present the same device to the guest before it talks to the backend itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LinkShape {
    pub backend_features: u64,
    pub protocol_features: u64,
    pub num_queues: u32,
    /// The configuration space as the driver last read it.
    pub config: Vec<u8>,
}

/// One window of guest memory: its guest physical address, size, and offset in file
/// `file` of the frame's memory files (0: guest RAM's memfd; then each DIMM's memory
/// backend, by memory slot).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamWindow {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
    pub file: u32,
}

/// How many memory files a frame carries for `windows`: one past the highest named
/// (at least guest RAM's).
pub fn memory_files(windows: &[RamWindow]) -> usize {
    windows
        .iter()
        .map(|w| w.file as usize + 1)
        .max()
        .unwrap_or(1)
}

/// A NIC as vmm-core sees it: a vhost-user-net frontend on a socket the gateway
/// connected to the NIC's net daemon (one fd in the launch frame).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NicLaunch {
    /// The NIC's number in every later request about it (`NicReconnect`, `NicSetLink`):
    /// the gateway's, never reused while the VM lives (a hot-removed NIC leaves a gap).
    pub index: u32,
    /// Its slot on bus 0; None for the lowest free one (launch only).
    pub slot: Option<u8>,
    pub id: String,
    /// The guest device's qdev id (its id=, "" without one), as query-pci reports it.
    pub qdev_id: String,
    pub mac: [u8; 6],
    pub queue_pairs: u32,
}

/// A disk as vmm-core sees it: a vhost-user-blk frontend on a socket the gateway
/// connected to the disk's block daemon (one fd in the launch frame).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DiskLaunch {
    /// The disk's number in every later request about it (`DiskReconnect`,
    /// `DiskConfigChanged`): the gateway's, never reused while the VM lives.
    pub index: u32,
    /// Its slot on bus 0; None for the lowest free one (launch only).
    pub slot: Option<u8>,
    pub id: String,
    /// The guest device's qdev id (its id=, "" without one), as query-pci reports it.
    pub qdev_id: String,
    pub max_queues: u32,
}

impl LaunchConfig {
    /// /dev/kvm, the kernel, the initrd, the console, guest RAM (an upgrade), the
    /// disks' and the NICs' sockets, the DIMMs' memory.
    pub fn fd_count(&self) -> usize {
        2 + usize::from(self.initrd_path.is_some())
            + usize::from(self.upgrade.is_some())
            + usize::from(matches!(
                self.serial,
                SerialSink::File | SerialSink::UnixListener | SerialSink::Chardev
            ))
            + self.disks.len()
            + self.nics.len()
            + self.dimms.len()
    }
}

// Launch (with its DIMMs) goes once per vmm-core: its size costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum VmmRequest {
    Launch(LaunchConfig),
    Stop,
    Cont,
    SystemReset,
    SystemPowerdown,
    QueryCpus,
    /// An NMI to every vCPU.
    InjectNmi,
    /// Disk `disk` (its index in the launch request) has a new configuration (its image
    /// was resized): the guest must re-read it.
    DiskConfigChanged {
        disk: u32,
    },
    /// Disk `disk`'s daemon is back (restarted): here is vmm-core's new connection to it
    /// (one fd).
    DiskReconnect {
        disk: u32,
    },
    /// NIC `nic`'s link goes up or down (QMP set_link): the guest sees the change.
    NicSetLink {
        nic: u32,
        up: bool,
    },
    /// NIC `nic`'s daemon is back: vmm-core's new connection to it (one fd).
    NicReconnect {
        nic: u32,
    },
    /// Stop the VM and exit; the cause goes into the SHUTDOWN event.
    Quit(ShutdownCause),
    /// A migration starts on the source: dirty logging on (KVM's, and the vhost-user
    /// backends' into the same bitmap); the answer brings guest RAM's memfd and the
    /// dirty bitmap's.
    MigrationStart,
    /// Gathers what was dirtied since the last sync into the shared bitmap.
    DirtyLogSync,
    /// The migration is over (done, failed or cancelled): dirty logging off.
    MigrationEnd,
    /// auto-converge: each vCPU spends `percent` of its time stopped (0: none).
    Throttle {
        percent: u8,
    },
    /// The stop-and-copy: the vCPUs stop (run state "finish-migrate").
    MigrationStop,
    /// The whole device state of the stopped VM (vCPUs, interrupt controllers, clock,
    /// devices), opaque to everyone but vmm-core.
    SaveState,
    /// The destination has the VM: the source stays stopped ("postmigrate").
    MigrationCompleted,
    /// On the destination: guest RAM's memfd, to receive memory into.
    IncomingMemory,
    /// On the destination: the source's `SaveState` (after all of memory arrived).
    RestoreState(Vec<u8>),
    /// xen-load-devices-state: a `SaveState` of this VM's shape into this stopped VM,
    /// whose guest RAM stays as it is. All or nothing: a state that does not fit leaves
    /// the VM as it was. Refused while the VM runs or migrates.
    LoadState(Vec<u8>),
    /// On the destination: the migration is complete; the VM runs if `run`, otherwise
    /// it waits in "paused".
    IncomingCompleted {
        run: bool,
    },
    /// Before a live upgrade: the devices' shapes, and guest RAM's memfd.
    UpgradeInfo,
    /// A live upgrade's successor has the VM: exit quietly (no SHUTDOWN: the VM lives).
    Retire,
    /// On the destination of a postcopy migration, after the pages the source may still
    /// change were punched out of guest RAM and before `RestoreState`: vmm-core registers
    /// its own mapping of guest RAM with a userfaultfd, and has each vhost-user backend
    /// open one (POSTCOPY_ADVISE, POSTCOPY_LISTEN), so that a touch of a page not here
    /// yet waits for it. The frame carries /dev/userfaultfd (`crate::userfault`).
    /// Answered with `Postcopy`; each backend's mapping follows as
    /// `VmmEvent::PostcopyRanges` when it maps guest RAM. A backend that cannot
    /// (no VHOST_USER_PROTOCOL_F_PAGEFAULT) makes it fail, nothing registered.
    PostcopyListen,
    /// Every page is here: the userfaultfds go (vmm-core's unregistered, POSTCOPY_END to
    /// the backends); backends that connected meanwhile are set up now.
    PostcopyEnd,
    /// Every PCI function as its configuration space reads now (QMP query-pci),
    /// answered with `Pci`.
    QueryPci,
    /// device_add of a virtio-blk-pci: the disk goes into bus 0's `disk.slot` (which
    /// must be given and free) while the VM runs or not, and the guest learns of it by
    /// ACPI hotplug. The frame carries vmm-core's connection to its block daemon.
    /// Answered `Done` once the function is on the bus.
    DiskAttach(DiskLaunch),
    /// device_add of a virtio-net-pci, as `DiskAttach`.
    NicAttach(NicLaunch),
    /// device_del: asks the guest to release the function in bus 0's `slot` (ACPI
    /// hotplug). Answered `Done` once asked; `VmmEvent::DeviceEjected` follows when (if
    /// ever) the guest ejects it.
    RequestUnplug {
        slot: u8,
    },
    /// QMP balloon: the balloon should hold `pages` 4 KiB pages (num_pages); the guest
    /// is told by a configuration change. Answered `Done` (refused without a balloon).
    BalloonTarget {
        pages: u32,
    },
    /// QMP query-balloon: answered with `Balloon`.
    QueryBalloon,
    /// device_add of a pc-dimm: the DIMM is mapped, registered with KVM and handed to
    /// every vhost-user backend, then the guest learns of it by ACPI memory hotplug
    /// (insert event, GPE 3). The frame carries its memory backend's fd. Answered `Done`;
    /// refused without memory hotplug, for a slot that is taken or a range that is not
    /// free, and while the VM migrates. Running, paused or prelaunch.
    MemoryAttach(DimmLaunch),
    /// device_del of a pc-dimm: the guest is asked to let go of the DIMM in `slot` (remove
    /// event, GPE 3). Answered `Done` once asked; `VmmEvent::MemoryEjected` follows when
    /// (if ever) the guest ejects it.
    MemoryUnplug {
        slot: u32,
    },
    /// query-acpi-ospm-status: the last _OST of each ACPI hotplug slot, answered with
    /// `AcpiSlots`.
    QueryAcpiSlots,
    /// send-key / input-send-event: steps for the PS/2 keyboard and mouse, played in
    /// order after those already waiting (at most `input::MAX_PENDING_STEPS` wait; the
    /// rest are dropped, as QEMU drops them). Answered `Done` at once, as QEMU answers
    /// before its hold times pass.
    Input(Vec<crate::input::InputStep>),
    /// cpu-add / device_add of a CPU: vCPU `index` (its APIC ID too) is created, its
    /// thread waits for the guest's INIT/SIPI, and the guest learns of it by ACPI CPU
    /// hotplug (insert event, GPE 2). Answered with `VcpuAdded` once the thread runs;
    /// refused (QEMU's words) for an index beyond the most vCPUs or one already there, and
    /// while the VM migrates.
    CpuAdd {
        index: u32,
    },
    /// memsave / pmemsave: `size` bytes of guest memory from `addr` written to the file
    /// the frame carries (opened by the gateway). With `vcpu`, `addr` is a virtual
    /// address of that vCPU (its page tables are walked); without, a physical one (what
    /// is not RAM reads as zeroes, as in QEMU). Answered `Done`; the gateway bounds `size`.
    MemorySave {
        addr: u64,
        size: u64,
        vcpu: Option<u32>,
    },
    /// dump-guest-memory into the file (or pipe) the frame carries: the vCPUs are paused
    /// and their registers read, then a thread writes the core and resumes them (as QEMU
    /// does). Answered `Done` once the writing started; `VmmEvent::DumpCompleted` follows.
    /// Refused (QEMU's words) while another dump runs or the VM is arriving.
    DumpGuestMemory(DumpRequest),
    /// query-dump: answered with `Dump`.
    QueryDump,
    /// The CPUID vCPU 0 got, as KVM holds it (read back when it was made: what the guest
    /// reads, kvm-pvm's kept host bits included): every vCPU's but for its APIC id in the
    /// topology leaves, and the same for vCPUs added later. Answered with `Cpuid`.
    QueryCpuid,
    /// The first and only request of a vmm-core started for the CPUID alone (no VM: QEMU's
    /// none machine, which libvirt probes): the CPUID vCPU 0 of a VM of one vCPU with this
    /// model would get, from the /dev/kvm the frame carries. Answered with `Cpuid`; then
    /// vmm-core exits.
    ProbeCpuid(CpuModel),
    /// HMP `info registers`: vCPU `index`'s registers, read with its thread parked (a
    /// running VM is paused for that moment). Answered with `Registers`.
    QueryRegisters {
        index: u32,
    },
    /// HMP `info mem` / `info tlb`: vCPU `index`'s page-table leaves. Answered with
    /// `PageTables`.
    QueryPageTables {
        index: u32,
    },
}

impl Message for VmmRequest {
    fn fd_count(&self) -> usize {
        match self {
            VmmRequest::Launch(config) => config.fd_count(),
            VmmRequest::DiskReconnect { .. } | VmmRequest::NicReconnect { .. } => 1,
            VmmRequest::DiskAttach(_) | VmmRequest::NicAttach(_) => 1,
            VmmRequest::MemoryAttach(_) => 1,
            VmmRequest::PostcopyListen => 1,
            VmmRequest::ProbeCpuid(_) => 1,
            VmmRequest::MemorySave { .. } | VmmRequest::DumpGuestMemory(_) => 1,
            _ => 0,
        }
    }
}

pub type ToVmm = Call<VmmRequest>;

/// What dump-guest-memory asked for (its checks done by the gateway, the ones needing
/// guest memory by vmm-core).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpRequest {
    /// Segments by virtual address, from vCPUs' page tables (QMP `paging`).
    pub paging: bool,
    /// Only the physical range `begin`, `length` (QMP's begin/length, as given).
    pub filter: Option<DumpFilter>,
    /// The file's format (QMP `format`; the gateway refuses paging and a filter with
    /// any but elf, as QEMU does).
    pub format: DumpFormat,
}

/// QMP's DumpGuestMemoryFormat (its QMP names in kebab case).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DumpFormat {
    Elf,
    KdumpZlib,
    KdumpLzo,
    KdumpSnappy,
    WinDmp,
}

impl DumpFormat {
    /// Every format, in QEMU's order (query-dump-guest-memory-capability's).
    pub const ALL: [DumpFormat; 5] = [
        DumpFormat::Elf,
        DumpFormat::KdumpZlib,
        DumpFormat::KdumpLzo,
        DumpFormat::KdumpSnappy,
        DumpFormat::WinDmp,
    ];

    pub fn qmp_name(self) -> &'static str {
        match self {
            DumpFormat::Elf => "elf",
            DumpFormat::KdumpZlib => "kdump-zlib",
            DumpFormat::KdumpLzo => "kdump-lzo",
            DumpFormat::KdumpSnappy => "kdump-snappy",
            DumpFormat::WinDmp => "win-dmp",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpFilter {
    pub begin: i64,
    pub length: i64,
}

/// QMP's DumpStatus.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpStatus {
    None,
    Active,
    Completed,
    Failed,
}

impl DumpStatus {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            DumpStatus::None => "none",
            DumpStatus::Active => "active",
            DumpStatus::Completed => "completed",
            DumpStatus::Failed => "failed",
        }
    }
}

/// QMP's DumpQueryResult: bytes of guest memory written of those to write.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpProgress {
    pub status: DumpStatus,
    pub completed: u64,
    pub total: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuInfo {
    pub index: u32,
    /// The host thread id of the vCPU thread.
    pub thread_id: i32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuState {
    pub index: u32,
    pub thread_id: i32,
    pub pc: u64,
    pub halted: bool,
}

/// One PCI function as the guest sees it now (`VmmRequest::QueryPci`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PciFunctionInfo {
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
    pub vendor: u16,
    pub device: u16,
    /// (subsystem vendor, subsystem id); None for a header type without them (a bridge).
    pub subsystem: Option<(u16, u16)>,
    /// Base class, subclass and programming interface (the 24-bit class code).
    pub class_code: u32,
    pub revision: u8,
    /// The interrupt line register, as the guest last wrote it.
    pub interrupt_line: u8,
    /// The interrupt pin register: 0 for none (MSI-X only), 1-4 for INTA-INTD.
    pub interrupt_pin: u8,
    /// The device's qdev id ("" without one).
    pub qdev_id: String,
    /// The implemented BARs, by index.
    pub bars: Vec<PciBarInfo>,
}

/// One base address register as the guest has programmed it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBarInfo {
    pub index: u8,
    pub kind: PciBarKind,
    /// Where the BAR decodes now; None while it decodes nothing (its decoding is off in
    /// the command register, it is at 0, or it wraps past the end of its address space):
    /// what QEMU calls unmapped.
    pub address: Option<u64>,
    /// Its size, from the bits its mask keeps.
    pub size: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciBarKind {
    Io,
    Memory { is_64: bool, prefetchable: bool },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum VmmReply {
    Done,
    Launched {
        vcpus: Vec<VcpuInfo>,
    },
    Cpus(Vec<CpuState>),
    /// Guest memory's layout; the frame carries its files (`memory_files`: RAM's memfd,
    /// then each DIMM's), then the dirty bitmap's (one bit per 4 KiB page by guest
    /// physical address, `bitmap_len` bytes, covering the DIMMs too).
    Migration {
        windows: Vec<RamWindow>,
        bitmap_len: u64,
    },
    /// Pages marked in the bitmap after a sync.
    Dirty {
        pages: u64,
    },
    State(Vec<u8>),
    /// Guest memory's layout; the frame carries its files (`memory_files`).
    Memory {
        windows: Vec<RamWindow>,
    },
    /// The devices' shapes (disks then NICs); the frame carries guest RAM's memfd.
    Upgrade {
        links: Vec<LinkShape>,
    },
    /// `PostcopyListen` done: vmm-core's mapping of guest RAM (`ranges`), then one
    /// userfaultfd per backend, in the order of `backends` (their names, e.g. "disk0");
    /// the frame carries vmm-core's userfaultfd first, then the backends'.
    Postcopy {
        ranges: Vec<MappedRange>,
        backends: Vec<String>,
    },
    /// `QueryPci`: every function, in bus, slot and function order.
    Pci(Vec<PciFunctionInfo>),
    /// `QueryBalloon`: guest RAM less the pages the guest says are in the balloon.
    Balloon {
        actual_bytes: u64,
    },
    /// `QueryAcpiSlots`: each memory slot's last _OST, by slot (none without memory
    /// hotplug), and each possible vCPU's, by index (none until the guest left QEMU pc's
    /// legacy CPU hotplug mode, as QEMU lists them).
    AcpiSlots {
        dimms: Vec<SlotOst>,
        cpus: Vec<SlotOst>,
    },
    /// `CpuAdd` done: the new vCPU and its thread.
    VcpuAdded(VcpuInfo),
    /// `QueryDump`: the last dump's progress (status none before any).
    Dump(DumpProgress),
    /// `QueryCpuid`, `ProbeCpuid`: every leaf and subleaf, as KVM_GET_CPUID2 reads them.
    Cpuid(Vec<CpuidLeaf>),
    Registers(Box<crate::registers::CpuRegisters>),
    PageTables(crate::registers::PageTables),
}

/// One CPUID leaf (`function`) and subleaf (`index`) and the four registers it returns.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidLeaf {
    pub function: u32,
    pub index: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// A CPUID register.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidReg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl std::fmt::Display for CpuidReg {
    /// As Intel's SDM and QEMU's messages name it: `EAX`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuidReg::Eax => "EAX",
            CpuidReg::Ebx => "EBX",
            CpuidReg::Ecx => "ECX",
            CpuidReg::Edx => "EDX",
        })
    }
}

/// Bits (`mask`) of one register of a CPUID leaf and subleaf.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidBits {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: CpuidReg,
    pub mask: u32,
}

/// The vCPUs' CPU model: the host's (KVM's supported CPUID, QEMU's -cpu host) with the
/// features of `off` turned off (-cpu host,FEATURE=off): cleared in every vCPU's CPUID,
/// and an MSR that belongs to such a feature is not the vCPUs' either.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuModel {
    pub off: Vec<CpuidBits>,
}

/// The VM's run states (QMP's RunState, the subset that applies).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Prelaunch,
    Running,
    Paused,
    InternalError,
    Shutdown,
    /// A destination waiting for its migration.
    InMigrate,
    /// A source in its stop-and-copy.
    FinishMigrate,
    /// A source whose VM now runs on the destination.
    PostMigrate,
}

impl RunState {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::InternalError => "internal-error",
            RunState::Shutdown => "shutdown",
            RunState::InMigrate => "inmigrate",
            RunState::FinishMigrate => "finish-migrate",
            RunState::PostMigrate => "postmigrate",
        }
    }
}

/// Why the VM shut down or reset (QMP's ShutdownCause, the subset that applies).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownCause {
    HostError,
    HostQmpQuit,
    HostQmpSystemReset,
    HostSignal,
    GuestShutdown,
    GuestReset,
}

impl ShutdownCause {
    pub fn qmp_name(&self) -> &'static str {
        match self {
            ShutdownCause::HostError => "host-error",
            ShutdownCause::HostQmpQuit => "host-qmp-quit",
            ShutdownCause::HostQmpSystemReset => "host-qmp-system-reset",
            ShutdownCause::HostSignal => "host-signal",
            ShutdownCause::GuestShutdown => "guest-shutdown",
            ShutdownCause::GuestReset => "guest-reset",
        }
    }

    pub fn is_guest(&self) -> bool {
        matches!(
            self,
            ShutdownCause::GuestShutdown | ShutdownCause::GuestReset
        )
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum VmmEvent {
    /// The run state changed.
    RunState(RunState),
    Reset(ShutdownCause),
    Shutdown(ShutdownCause),
    /// The ACPI power button was pressed.
    Powerdown,
    /// A vCPU stopped in a way the guest cannot continue from.
    VcpuFailed {
        vcpu: u32,
        reason: String,
    },
    /// Postcopy: backend `backend` (an index into `VmmReply::Postcopy`'s backends) mapped
    /// guest RAM at these addresses of its own (its SET_MEM_TABLE answer); raised before
    /// vmm-core lets it run its rings.
    PostcopyRanges {
        backend: u32,
        ranges: Vec<MappedRange>,
    },
    /// The guest ejected the PCI function in bus 0's `slot` (ACPI hotplug): it is off
    /// the bus and vmm-core let go of it (its vhost-user connection is closed, its
    /// doorbells out of KVM); its daemon is the gateway's to stop.
    DeviceEjected {
        slot: u8,
    },
    /// The guest wrote another `actual` into the balloon's configuration: guest RAM less
    /// the pages it now says are in the balloon (QMP's BALLOON_CHANGE, which the gateway
    /// rate-limits).
    BalloonChanged {
        actual_bytes: u64,
    },
    /// The guest's _OST about `slot` (QMP's ACPI_DEVICE_OST).
    AcpiOst {
        slot: AcpiSlot,
        ost: SlotOst,
    },
    /// The guest ejected the DIMM in memory slot `slot` and vmm-core let go of its memory
    /// (out of KVM and every backend): its backend object is free again.
    MemoryEjected {
        slot: u32,
    },
    /// A dump ended (QMP's DUMP_COMPLETED), with its error if it failed.
    DumpCompleted {
        progress: DumpProgress,
        error: Option<String>,
    },
}

impl Message for VmmReply {
    fn fd_count(&self) -> usize {
        match self {
            VmmReply::Migration { windows, .. } => memory_files(windows) + 1,
            VmmReply::Memory { windows } => memory_files(windows),
            VmmReply::Upgrade { .. } => 1,
            VmmReply::Postcopy { backends, .. } => 1 + backends.len(),
            _ => 0,
        }
    }
}

pub type FromVmm = Upcall<VmmReply, VmmEvent>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_memory_is_placed_as_qemu_pc_places_it() {
        let mib = 1 << 20;
        let hp = MemoryHotplug {
            slots: 4,
            max_bytes: 1 << 30,
        };
        // QEMU 7.2 pc, -m 128,slots=4,maxmem=1G: [0x100000000, +0x138000000).
        assert_eq!(hp.region(128 * mib), Some((1 << 32, 0x1_3800_0000)));
        // RAM above 4 GiB pushes it up to the next GiB past it.
        let big = MemoryHotplug {
            slots: 1,
            max_bytes: 8 << 30,
        };
        assert_eq!(
            big.region((3 << 30) + 1),
            Some((5 << 30, (5 << 30) - 1 + (1 << 30)))
        );
        // maxmem below RAM, or past the address space.
        assert_eq!(hp.region(2 << 30), None);
        let huge = MemoryHotplug {
            slots: 256,
            max_bytes: u64::MAX,
        };
        assert_eq!(huge.region(128 * mib), None);
    }

    #[test]
    fn launch_declares_its_fds() {
        let mut c = LaunchConfig {
            memory_mib: 128,
            cpus: 1,
            max_cpus: 1,
            added_cpus: vec![],
            cmdline: String::new(),
            kernel_path: "k".into(),
            initrd_path: None,
            serial: SerialSink::Stdout,
            start_paused: false,
            no_shutdown: false,
            disks: vec![],
            nics: vec![],
            incoming: false,
            upgrade: None,
            balloon: Some(BalloonLaunch {
                slot: None,
                qdev_id: "b".into(),
            }),
            memory_hotplug: None,
            dimms: vec![],
            cpu: Default::default(),
        };
        // The balloon is vmm-core's own: no fd.
        assert_eq!(c.fd_count(), 2);
        c.initrd_path = Some("i".into());
        c.serial = SerialSink::UnixListener;
        assert_eq!(c.fd_count(), 4);
        let m = ToVmm {
            id: 1,
            request: VmmRequest::Launch(c),
        };
        assert_eq!(m.fd_count(), 4);
        assert_eq!(
            ToVmm {
                id: 2,
                request: VmmRequest::Stop
            }
            .fd_count(),
            0
        );
    }
}
