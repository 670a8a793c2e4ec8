//! A pc-dimm's properties and place, as QEMU 7.2 reads and chooses them (no Gateway here:
//! the registry keeps these, dimm.rs runs device_add and device_del): pc_dimm_pre_plug's
//! slot (`slot=`, or the first free one), memory_device_pre_plug's place in the device
//! memory region (the space maxmem leaves, `addr=` or the first free range, aligned as the
//! backend's memory is), each refusal in QEMU's words.

use ipc::{DimmLaunch, MemoryHotplug};

use super::spec::{no_property, DeviceSpec, Model};
use super::DeviceError;

pub const MIB: u64 = 1 << 20;
pub const PAGE: u64 = 4096;
/// QEMU's alignment of a memory-backend-ram's memory (and so of its DIMM).
pub const RAM_ALIGN: u64 = 2 * MIB;
/// QEMU's "no slot asked for".
const UNASSIGNED_SLOT: i64 = -1;

/// What vmm-core and the registry keep of a DIMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimm {
    /// Its memory backend object's id.
    pub memdev: String,
    pub launch: DimmLaunch,
    /// Added by device_add (false: given on the command line), as
    /// query-memory-devices says.
    pub hotplugged: bool,
}

/// pc-dimm's properties, as set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DimmProps {
    pub memdev: Option<String>,
    pub slot: Option<i64>,
    pub addr: Option<u64>,
    pub node: Option<u64>,
}

/// A keyval integer as qemu_strtoi64 / qemu_strtou64 read it (base 0: 0x hex, 0 octal; a
/// minus sign wraps an unsigned one), checked against [min, max] with QEMU's words.
fn integer(
    v: &str,
    property: &'static str,
    ty: &'static str,
    min: i128,
    max: i128,
) -> Result<i128, DeviceError> {
    let (digits, negative) = match v.strip_prefix('-') {
        Some(rest) => (rest, true),
        None => (v.strip_prefix('+').unwrap_or(v), false),
    };
    let parsed = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16)
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8)
    } else {
        digits.parse::<u64>()
    };
    let n = i128::from(parsed.map_err(|_| DeviceError::NotInteger(property))?);
    let n = match (negative, min < 0) {
        (false, _) => n,
        (true, true) => -n,
        // strtoull's way.
        (true, false) => i128::from(u64::MAX) + 1 - n,
    };
    if n < min || n > max {
        return Err(DeviceError::OutOfRange { property, ty });
    }
    Ok(n)
}

impl DimmProps {
    /// pc-dimm's properties from device_add's options, each by its parser.
    pub fn read(spec: &DeviceSpec) -> Result<DimmProps, DeviceError> {
        let mut p = DimmProps::default();
        for (k, v) in spec.options() {
            match k.as_str() {
                // A link: "" is none.
                "memdev" => p.memdev = Some(v.clone()).filter(|m| !m.is_empty()),
                "slot" => {
                    let n = integer(v, "slot", "int32_t", i32::MIN.into(), i32::MAX.into())?;
                    p.slot = Some(n as i64);
                }
                "addr" => p.addr = Some(integer(v, "addr", "uint64_t", 0, u64::MAX.into())? as u64),
                "node" => p.node = Some(integer(v, "node", "uint32_t", 0, u32::MAX.into())? as u64),
                "size" => {
                    return Err(DeviceError::NotWritable {
                        owner: Model::Dimm.typename(),
                        property: "size",
                    })
                }
                _ => return Err(no_property(Model::Dimm, k)),
            }
        }
        Ok(p)
    }
}

/// Where DIMMs may go: memory hotplug's shape and the device memory region.
#[derive(Debug, Clone, Copy)]
pub struct DeviceMemory {
    pub slots: u64,
    pub ram: u64,
    pub max_bytes: u64,
    pub base: u64,
    pub size: u64,
}

impl DeviceMemory {
    /// For a VM of `ram` bytes with `hotplug` (None: no slots, no region).
    pub fn of(ram: u64, hotplug: Option<MemoryHotplug>) -> DeviceMemory {
        let region = hotplug.and_then(|hp| hp.region(ram)).unwrap_or((0, 0));
        DeviceMemory {
            slots: hotplug.map_or(0, |hp| u64::from(hp.slots)),
            ram,
            max_bytes: hotplug.map_or(ram, |hp| hp.max_bytes),
            base: region.0,
            size: region.1,
        }
    }
}

/// A DIMM already there, as placement sees it.
#[derive(Debug, Clone)]
pub struct Placed {
    pub id: Option<String>,
    pub slot: u32,
    pub addr: u64,
    pub size: u64,
}

/// pc_dimm_pre_plug's slot: the one asked for, or the first free one.
pub fn choose_slot(
    memory: &DeviceMemory,
    asked: Option<i64>,
    dimms: &[Placed],
) -> Result<u32, DeviceError> {
    let slots = memory.slots;
    let asked = asked.filter(|&s| s != UNASSIGNED_SLOT);
    if let Some(s) = asked {
        if s < 0 || s as u64 >= slots {
            return Err(DeviceError::BadMemorySlot {
                slot: s,
                last: slots.wrapping_sub(1),
            });
        }
    }
    if slots == 0 {
        return Err(DeviceError::NoMemorySlots);
    }
    let busy = |s: u64| dimms.iter().any(|d| u64::from(d.slot) == s);
    match asked {
        Some(s) if busy(s as u64) => Err(DeviceError::MemorySlotBusy(s)),
        Some(s) => Ok(s as u32),
        None => (0..slots)
            .find(|&s| !busy(s))
            .map(|s| s as u32)
            .ok_or(DeviceError::NoFreeMemorySlot),
    }
}

/// memory_device_get_free_addr: where a DIMM of `size` bytes aligned to `align` goes
/// (`hint`: addr=, 0 being none), among `dimms`.
pub fn choose_addr(
    memory: &DeviceMemory,
    hint: Option<u64>,
    size: u64,
    align: u64,
    dimms: &[Placed],
) -> Result<u64, DeviceError> {
    let used: u64 = dimms.iter().map(|d| d.size).sum();
    let total = memory.max_bytes.saturating_sub(memory.ram);
    if used.checked_add(size).is_none_or(|u| u > total) {
        return Err(DeviceError::NotEnoughSpace { used, total });
    }
    let hint = hint.filter(|&a| a != 0);
    if hint.is_some_and(|a| !a.is_multiple_of(align)) {
        return Err(DeviceError::AddrAlignment(align));
    }
    if !size.is_multiple_of(align) {
        return Err(DeviceError::SizeAlignment(align));
    }
    let region_end = memory.base + memory.size;
    let inside = |start: u64| {
        start
            .checked_add(size)
            .is_some_and(|end| start >= memory.base && end <= region_end)
    };
    let mut start = match hint {
        Some(a) => {
            if !inside(a) {
                return Err(DeviceError::OutsideDeviceMemory {
                    addr: a,
                    size,
                    base: memory.base,
                    region: memory.size,
                });
            }
            a
        }
        None => memory
            .base
            .checked_next_multiple_of(align)
            .filter(|s| s.checked_add(size).is_some())
            .ok_or(DeviceError::DimmTooBig)?,
    };
    let mut sorted: Vec<&Placed> = dimms.iter().collect();
    sorted.sort_by_key(|d| d.addr);
    for d in sorted {
        let end = start + size;
        if d.addr < end && start < d.addr + d.size {
            if hint.is_some() {
                return Err(DeviceError::DimmConflict(
                    d.id.clone().unwrap_or_else(|| "(unnamed)".into()),
                ));
            }
            match (d.addr + d.size).checked_next_multiple_of(align) {
                Some(next) if next.checked_add(size).is_some() => start = next,
                _ => return Err(DeviceError::Fragmented),
            }
        } else if d.addr >= end {
            break;
        }
    }
    if !inside(start) {
        return Err(DeviceError::Fragmented);
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const GIB: u64 = 1 << 30;

    /// QEMU 7.2 pc, -m 128,slots=4,maxmem=1G.
    fn memory() -> DeviceMemory {
        DeviceMemory::of(
            128 * MIB,
            Some(MemoryHotplug {
                slots: 4,
                max_bytes: GIB,
            }),
        )
    }

    fn placed(id: &str, slot: u32, addr: u64, size: u64) -> Placed {
        Placed {
            id: Some(id.into()),
            slot,
            addr,
            size,
        }
    }

    #[test]
    fn slots_are_chosen_as_pc_dimm_pre_plug_chooses_them() {
        let m = memory();
        let dimms = [
            placed("d1", 0, 4 * GIB, 128 * MIB),
            placed("d3", 3, 4 * GIB + 256 * MIB, 64 * MIB),
        ];
        let err = |asked| choose_slot(&m, asked, &dimms).unwrap_err().to_string();
        assert_eq!(choose_slot(&m, None, &dimms).unwrap(), 1);
        assert_eq!(choose_slot(&m, Some(-1), &dimms).unwrap(), 1);
        assert_eq!(choose_slot(&m, Some(2), &dimms).unwrap(), 2);
        assert_eq!(err(Some(3)), "slot 3 is busy");
        assert_eq!(err(Some(4)), "invalid slot number 4, valid range is [0-3]");
        assert_eq!(
            err(Some(-2)),
            "invalid slot number -2, valid range is [0-3]"
        );
        let full = [
            placed("a", 0, 0, 0),
            placed("b", 1, 0, 0),
            placed("c", 2, 0, 0),
            placed("d", 3, 0, 0),
        ];
        assert_eq!(
            choose_slot(&m, None, &full).unwrap_err().to_string(),
            "no free slots available"
        );
        // Without slots (QEMU -m 128): its words, its unsigned wrap included.
        let none = DeviceMemory::of(128 * MIB, None);
        assert_eq!(
            choose_slot(&none, None, &[]).unwrap_err().to_string(),
            "no slots where allocated, please specify the 'slots' option"
        );
        assert_eq!(
            choose_slot(&none, Some(0), &[]).unwrap_err().to_string(),
            "invalid slot number 0, valid range is [0-18446744073709551615]"
        );
    }

    #[test]
    fn addresses_are_chosen_as_memory_device_pre_plug_chooses_them() {
        let m = memory();
        assert_eq!((m.base, m.size), (4 * GIB, 0x1_3800_0000));
        let d1 = placed("d1", 0, 4 * GIB, 128 * MIB);
        let odd = placed("odd", 1, 4 * GIB + 128 * MIB, MIB + PAGE);
        let dimms = [d1.clone(), odd.clone()];
        // First fit, aligned: past the odd one to the next 2 MiB for RAM, the next page
        // for a memfd.
        assert_eq!(
            choose_addr(&m, None, 64 * MIB, RAM_ALIGN, &dimms).unwrap(),
            4 * GIB + 128 * MIB + 2 * MIB
        );
        assert_eq!(
            choose_addr(&m, None, 64 * MIB, PAGE, &dimms).unwrap(),
            4 * GIB + 128 * MIB + MIB + PAGE
        );
        // A hole that fits first, addr=0 is no hint.
        let gap = [placed("a", 0, 4 * GIB + 64 * MIB, 64 * MIB)];
        assert_eq!(
            choose_addr(&m, Some(0), 64 * MIB, RAM_ALIGN, &gap).unwrap(),
            4 * GIB
        );
        let err = |hint, size, align| {
            choose_addr(&m, hint, size, align, &dimms)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(Some(4 * GIB + 1), 64 * MIB, RAM_ALIGN),
            "address must be aligned to 0x200000 bytes"
        );
        assert_eq!(
            err(None, MIB + PAGE, RAM_ALIGN),
            "backend memory size must be multiple of 0x200000"
        );
        assert_eq!(
            err(Some(64 * GIB), 64 * MIB, RAM_ALIGN),
            "can't add memory device [0x1000000000:0x4000000], usable range for memory \
             devices [0x100000000:0x138000000]"
        );
        assert_eq!(
            err(Some(4 * GIB + 64 * MIB), 64 * MIB, RAM_ALIGN),
            "address range conflicts with memory device id='d1'"
        );
        assert_eq!(
            err(None, GIB, RAM_ALIGN),
            "not enough space, currently 0x8101000 in use of total space for memory \
             devices 0x38000000"
        );
        // What is left once the region is fragmented.
        let tight = DeviceMemory {
            size: 192 * MIB,
            ..m
        };
        let spread = [placed("x", 0, 4 * GIB + 64 * MIB, 64 * MIB)];
        assert_eq!(
            choose_addr(&tight, None, 96 * MIB, RAM_ALIGN, &spread)
                .unwrap_err()
                .to_string(),
            "could not find position in guest address space for memory device - memory \
             fragmented due to alignments"
        );
    }

    #[test]
    fn properties_read_as_qemu_sets_them() {
        let spec = |v: Value| {
            let Value::Object(m) = v else { panic!() };
            DeviceSpec::read(&m).map_err(|e| e.to_string())
        };
        let props = |v: Value| DimmProps::read(&spec(v)?).map_err(|e| e.to_string());
        assert_eq!(
            props(
                json!({"driver": "pc-dimm", "memdev": "m1", "slot": "0x3", "addr": 4294967296u64, "node": 0})
            ),
            Ok(DimmProps {
                memdev: Some("m1".into()),
                slot: Some(3),
                addr: Some(1 << 32),
                node: Some(0),
            })
        );
        assert_eq!(
            props(json!({"driver": "pc-dimm", "memdev": ""})),
            Ok(DimmProps::default())
        );
        for (args, err) in [
            (
                json!({"driver": "pc-dimm", "foo": 1}),
                "Property 'pc-dimm.foo' not found",
            ),
            (
                json!({"driver": "pc-dimm", "size": 5}),
                "Property 'pc-dimm.size' is not writable",
            ),
            (
                json!({"driver": "pc-dimm", "slot": "x"}),
                "Parameter 'slot' expects integer",
            ),
            (
                json!({"driver": "pc-dimm", "slot": 4294967296u64}),
                "Parameter 'slot' expects int32_t",
            ),
            (
                json!({"driver": "pc-dimm", "addr": "x"}),
                "Parameter 'addr' expects integer",
            ),
            (
                json!({"driver": "pc-dimm", "node": -1}),
                "Parameter 'node' expects uint32_t",
            ),
            (
                json!({"driver": "pc-dimm", "bus": "pci.0"}),
                "Device 'pc-dimm' can't go on PCI bus",
            ),
            (
                json!({"driver": "pc-dimm", "bus": "nope"}),
                "Bus 'nope' not found",
            ),
        ] {
            assert_eq!(
                props(args.clone()).map(drop),
                Err(err.to_string()),
                "{args}"
            );
        }
    }
}
