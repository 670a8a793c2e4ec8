//! What device_add and device_del refuse, in QEMU 7.2's words where QEMU has them (the
//! tests compare them with a live QEMU); qmp/errors.rs gives each its QMP class.

use crate::block::BlockError;
use crate::children::link::LinkError;
use crate::net::NetError;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    // device_add's options, as QEMU's QemuOpts and qdev read them.
    #[error("Parameter 'driver' is missing")]
    NoDriver,
    #[error("Parameter 'id' expects an identifier")]
    BadId,
    #[error("'{0}' is not a valid device model name")]
    UnknownDriver(String),
    #[error("Parameter 'driver' expects a non-abstract device type")]
    AbstractDriver,
    #[error("Bus '{0}' not found")]
    NoBus(String),
    /// A bus path whose device is not there (QMP's DeviceNotFound).
    #[error("Device '{0}' not found")]
    NoBusDevice(String),
    #[error("device_add not allowed while migrating")]
    AddMigrating,
    #[error("Duplicate device ID '{0}'")]
    DuplicateId(String),
    #[error("Property '{owner}.{property}' not found")]
    NoProperty {
        owner: &'static str,
        property: String,
    },
    #[error("Property '{owner}.{property}' doesn't take value '{value}'")]
    BadValue {
        owner: &'static str,
        property: &'static str,
        value: String,
    },
    #[error("Parameter '{0}' expects integer")]
    NotInteger(&'static str),
    #[error("Parameter '{property}' expects {ty}")]
    OutOfRange {
        property: &'static str,
        ty: &'static str,
    },
    #[error("Parameter '{0}' expects 'on' or 'off'")]
    NotOnOff(&'static str),
    #[error("PCI: slot {slot} function {function} not available for {driver}, in use by {by},id={by_id}")]
    SlotInUse {
        slot: u8,
        function: u8,
        driver: &'static str,
        by: &'static str,
        /// "(null)" for a device without an id, as QEMU prints it.
        by_id: String,
    },
    #[error("PCI: no slot/function available for {0}, all in use or reserved")]
    NoFreeSlot(&'static str),
    #[error("drive property not set")]
    DriveNotSet,
    #[error("The bootindex {0} has already been used")]
    BootIndexUsed(i32),
    #[error("num-queues property must be larger than 0")]
    NoQueues,
    /// A CPU's checks (devices/cpu.rs).
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// device_del of a CPU: vCPUs are not removed here (QEMU's words for a machine whose
    /// ACPI does not take the request).
    #[error("acpi: device unplug request for not supported device type: {0}")]
    CpuUnplug(&'static str),
    /// iothread= names no object (QMP's DeviceNotFound, as QEMU's link lookup says).
    #[error("Device '{0}' not found")]
    NoIothread(String),
    #[error("Invalid parameter type for 'iothread', expected: iothread")]
    NotAnIothread,

    // A pc-dimm's, as QEMU 7.2's qdev, pc_dimm_pre_plug, memory_device_pre_plug and
    // pc_dimm_realize say them.
    #[error("Device '{driver}' can't go on {bus} bus")]
    CannotGoOnBus {
        driver: &'static str,
        bus: &'static str,
    },
    #[error("Property '{owner}.{property}' is not writable")]
    NotWritable {
        owner: &'static str,
        property: &'static str,
    },
    /// memdev= names no object (QMP's DeviceNotFound).
    #[error("Device '{0}' not found")]
    NoMemdev(String),
    #[error("Invalid parameter type for 'memdev', expected: memory-backend")]
    NotAMemdev,
    /// `last` is the slot count less one, as QEMU computes it unsigned.
    #[error("invalid slot number {slot}, valid range is [0-{last}]")]
    BadMemorySlot { slot: i64, last: u64 },
    #[error("no slots where allocated, please specify the 'slots' option")]
    NoMemorySlots,
    #[error("slot {0} is busy")]
    MemorySlotBusy(i64),
    #[error("no free slots available")]
    NoFreeMemorySlot,
    #[error("'memdev' property must be set")]
    MemdevNotSet,
    #[error(
        "not enough space, currently {used:#x} in use of total space for memory devices {total:#x}"
    )]
    NotEnoughSpace { used: u64, total: u64 },
    #[error("address must be aligned to {0:#x} bytes")]
    AddrAlignment(u64),
    #[error("backend memory size must be multiple of {0:#x}")]
    SizeAlignment(u64),
    #[error(
        "can't add memory device [{addr:#x}:{size:#x}], usable range for memory devices \
         [{base:#x}:{region:#x}]"
    )]
    OutsideDeviceMemory {
        addr: u64,
        size: u64,
        base: u64,
        region: u64,
    },
    #[error("can't add memory device, device too big")]
    DimmTooBig,
    #[error("address range conflicts with memory device id='{0}'")]
    DimmConflict(String),
    #[error(
        "could not find position in guest address space for memory device - memory \
         fragmented due to alignments"
    )]
    Fragmented,
    #[error("can't use already busy memdev: {0}")]
    MemdevBusy(String),
    #[error("'DIMM property node has value {0}' which exceeds the number of numa nodes: 1")]
    NoNumaNode(u64),

    // Ours: what QEMU takes and Flotilla does not.
    #[error(
        "PCI: slot {slot} function {function}: only function 0 of a slot can be hot-plugged \
         here (no multifunction devices)"
    )]
    NotFunctionZero { slot: u8, function: u8 },
    #[error("num-queues property must be at most {0} here")]
    TooManyQueues(u32),
    #[error("virtio-net-pci needs netdev=: a NIC without a host backend is not supported here")]
    NoNetdev,

    // device_del.
    /// QMP's DeviceNotFound.
    #[error("Device '{0}' not found")]
    NotFound(String),
    #[error("{0} is not a hotpluggable device")]
    NotHotpluggable(String),
    #[error("Bus '{0}' does not support hotplugging")]
    BusNoHotplug(&'static str),
    #[error("Device {0} is already in the process of unplug")]
    UnplugPending(String),
    #[error("device_del not allowed while migrating")]
    DelMigrating,

    // The layers and vmm-core.
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("vmm-core answered {0}")]
    Unexpected(String),
}

/// Why a CPU cannot be added (devices/cpu.rs): QEMU 7.2's pc_cpu_pre_plug and
/// numa_cpu_pre_plug words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// The VM's CPU type is devices/cpu.rs's CPU_TYPE.
    #[error("Invalid CPU type, expected cpu type: 'host-x86_64-cpu'")]
    InvalidType,
    #[error("CPU {0} is not set")]
    NotSet(&'static str),
    #[error("Invalid CPU {name}: {value} must be in range 0:{max}")]
    OutOfRange {
        name: &'static str,
        value: u32,
        max: u32,
    },
    #[error(
        "Invalid CPU [socket: {socket}, die: 0, core: {core}, thread: 0] with APIC ID {apic_id}, \
         valid index range 0:{last}"
    )]
    NoSuchApicId {
        socket: u32,
        core: u32,
        apic_id: u32,
        last: u32,
    },
    #[error("CPU[{index}] with APIC ID {index} exists")]
    Exists { index: u32 },
    #[error("property {name}: {value} doesn't match set apic-id: {apic_id:#x} ({name}: {topo})")]
    Mismatch {
        name: &'static str,
        value: u32,
        apic_id: u32,
        topo: u32,
    },
    #[error("invalid node-id, must be 0")]
    NodeId,
}
