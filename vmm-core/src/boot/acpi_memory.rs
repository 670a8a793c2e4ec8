//! The DSDT's part of ACPI memory hotplug, as QEMU's build_memory_hotplug_aml writes it for
//! its pc machine (same names, so that Linux's acpi_memhotplug and the test guest take it as
//! they take QEMU's): `\_SB.PCI0.MHPD` owns the register block (devices/memory_hotplug.rs)
//! as OperationRegion HPMR; `\_SB.MHPC` has the slot count MDNR, the registers' fields, the
//! lock MLCK, the per-slot methods (MRST: _STA, MCRS: _CRS, MPXM: _PXM, MOST: _OST, MEJ0:
//! _EJ0), a memory device (PNP0C80) per slot, MTFY (Notify a slot's device) and MSCN, which
//! `\_GPE._E03` runs: each slot with an insert event gets "device check", one with a remove
//! event "eject request", each event cleared. The DSDT's integers are 64 bits (revision 2),
//! so MCRS builds one QWordMemory where QEMU also juggles 32-bit halves.

use acpi_tables::aml::{
    self, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, OpRegionSpace,
};
use acpi_tables::Aml;

use crate::devices::gpe;
use crate::devices::memory_hotplug::{STATUS_OFFSET, ST_EJECT, ST_ENABLED, ST_INSERT, ST_REMOVE};
use crate::layout::ports;

/// The scan method and the container's path.
const CONTAINER: &str = "\\_SB_.MHPC";
const REGION: &str = "\\_SB_.PCI0.MHPD.HPMR";
/// Notify values: device check (an insertion), eject request.
const DEVICE_CHECK: u8 = 1;
const EJECT_REQUEST: u8 = 3;

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// A memory device's name, QEMU's: MP and its slot in hex ("MP0A").
fn slot_name(slot: u32) -> String {
    format!("MP{slot:02X}")
}

/// `MSEL = ToInteger (Arg0)`, with the lock taken first: what every per-slot method starts
/// with. (A target of Zero is AML's NullName: no store.)
struct Select;

impl Aml for Select {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        aml::Acquire::new("MLCK".into(), 0xffff).to_aml_bytes(sink);
        let slot = aml::ToInteger::new(&aml::ZERO, &aml::Arg(0));
        aml::Store::new(&aml::Path::new("MSEL"), &slot).to_aml_bytes(sink);
    }
}

/// The register block's owner: `\_SB.PCI0.MHPD`, its ports in _CRS and the region.
fn resources() -> Vec<u8> {
    let base = u32::from(ports::MEMORY_HOTPLUG);
    let len = u32::from(ports::MEMORY_HOTPLUG_LEN);
    let io = aml::IO::new(
        ports::MEMORY_HOTPLUG,
        ports::MEMORY_HOTPLUG,
        0,
        ports::MEMORY_HOTPLUG_LEN as u8,
    );
    bytes(&aml::Device::new(
        "\\_SB_.PCI0.MHPD".into(),
        vec![
            &aml::Name::new("_HID".into(), &"PNP0A06"),
            &aml::Name::new("_UID".into(), &"Memory hotplug resources"),
            &aml::Name::new("_CRS".into(), &aml::ResourceTemplate::new(vec![&io])),
            &aml::OpRegion::new("HPMR".into(), OpRegionSpace::SystemIO, &base, &len),
        ],
    ))
}

/// The fields over HPMR, QEMU's three Field definitions.
fn fields() -> Vec<u8> {
    let mut out = Vec::new();
    let dwords = |names: &[[u8; 4]]| names.iter().map(|n| FieldEntry::Named(*n, 32)).collect();
    aml::Field::new(
        REGION.into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        dwords(&[*b"MRBL", *b"MRBH", *b"MRLL", *b"MRLH", *b"MPX_"]),
    )
    .to_aml_bytes(&mut out);
    // The flags byte: one bit each, in the order of the status bits.
    debug_assert_eq!([ST_ENABLED, ST_INSERT, ST_REMOVE, ST_EJECT], [1, 2, 4, 8]);
    aml::Field::new(
        REGION.into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Reserved(8 * STATUS_OFFSET as usize),
            FieldEntry::Named(*b"MES_", 1),
            FieldEntry::Named(*b"MINS", 1),
            FieldEntry::Named(*b"MRMV", 1),
            FieldEntry::Named(*b"MEJ_", 1),
        ],
    )
    .to_aml_bytes(&mut out);
    aml::Field::new(
        REGION.into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        dwords(&[*b"MSEL", *b"MOEV", *b"MOSC"]),
    )
    .to_aml_bytes(&mut out);
    out
}

/// MSCN: every slot with an event, notified and the event cleared (under the lock).
fn scan_method() -> Vec<u8> {
    let one = aml::ONE;
    let index = aml::Local(0);
    let slots = aml::Path::new("MDNR");
    let mins = aml::Path::new("MINS");
    let mrmv = aml::Path::new("MRMV");
    let msel = aml::Path::new("MSEL");
    let select = aml::Store::new(&msel, &index);
    let check = aml::MethodCall::new("MTFY".into(), vec![&index, &DEVICE_CHECK]);
    let eject = aml::MethodCall::new("MTFY".into(), vec![&index, &EJECT_REQUEST]);
    let clear_insert = aml::Store::new(&mins, &one);
    let clear_remove = aml::Store::new(&mrmv, &one);
    let inserted = aml::Equal::new(&mins, &one);
    let removed = aml::Equal::new(&mrmv, &one);
    let on_remove = aml::If::new(&removed, vec![&eject, &clear_remove]);
    let on_insert = aml::If::new(&inserted, vec![&check, &clear_insert]);
    let otherwise = aml::Else::new(vec![&on_remove]);
    let next = aml::Add::new(&index, &index, &one);
    let more = aml::LessThan::new(&index, &slots);
    let walk = aml::While::new(&more, vec![&select, &on_insert, &otherwise, &next]);
    bytes(&aml::Method::new(
        "MSCN".into(),
        0,
        false,
        vec![
            &aml::Store::new(&index, &aml::ZERO),
            &aml::Acquire::new("MLCK".into(), 0xffff),
            &walk,
            &aml::Release::new("MLCK".into()),
            &aml::Return::new(&one),
        ],
    ))
}

/// MCRS(slot): the slot's range as a QWordMemory resource.
fn crs_method() -> Vec<u8> {
    let template = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::Cacheable,
        true,
        0u64,
        0xffff_ffff_ffff_fffeu64,
        None,
    );
    let mr64 = aml::Path::new("MR64");
    let (min, max, len) = (
        aml::Path::new("MINV"),
        aml::Path::new("MAXV"),
        aml::Path::new("LENV"),
    );
    // Offsets in a QWord Address Space Descriptor: minimum 14, maximum 22, length 38.
    let (min_at, max_at, len_at) = (14u8, 22u8, 38u8);
    let join = |hi: &str, lo: &str| -> Vec<u8> {
        let hi = aml::Path::new(hi);
        let shifted = aml::ShiftLeft::new(&aml::ZERO, &hi, &32u8);
        let lo = aml::Path::new(lo);
        bytes(&aml::Or::new(&aml::ZERO, &shifted, &lo))
    };
    let base = Raw(join("MRBH", "MRBL"));
    let length = Raw(join("MRLH", "MRLL"));
    let end = aml::Add::new(&aml::ZERO, &min, &len);
    let last = aml::Subtract::new(&aml::ZERO, &end, &aml::ONE);
    bytes(&aml::Method::new(
        "MCRS".into(),
        1,
        true,
        vec![
            &Select,
            &aml::Name::new("MR64".into(), &aml::ResourceTemplate::new(vec![&template])),
            &aml::CreateQWordField::new(&min, &mr64, &min_at),
            &aml::CreateQWordField::new(&max, &mr64, &max_at),
            &aml::CreateQWordField::new(&len, &mr64, &len_at),
            &aml::Store::new(&min, &base),
            &aml::Store::new(&len, &length),
            &aml::Store::new(&max, &last),
            &aml::Release::new("MLCK".into()),
            &aml::Return::new(&mr64),
        ],
    ))
}

/// AML already serialised, as a child of another object.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// MRST, MPXM, MOST and MEJ0: a slot's _STA, _PXM, _OST and _EJ0 through the registers.
fn slot_methods() -> Vec<u8> {
    let mut out = Vec::new();
    let release = aml::Release::new("MLCK".into());
    let result = aml::Local(0);
    let mes = aml::Path::new("MES_");
    let present = aml::Equal::new(&mes, &aml::ONE);
    let enabled = aml::Store::new(&result, &0x0fu8);
    aml::Method::new(
        "MRST".into(),
        1,
        false,
        vec![
            &aml::Store::new(&result, &aml::ZERO),
            &Select,
            &aml::If::new(&present, vec![&enabled]),
            &release,
            &aml::Return::new(&result),
        ],
    )
    .to_aml_bytes(&mut out);
    aml::Method::new(
        "MPXM".into(),
        1,
        false,
        vec![
            &Select,
            &aml::Store::new(&result, &aml::Path::new("MPX_")),
            &release,
            &aml::Return::new(&result),
        ],
    )
    .to_aml_bytes(&mut out);
    aml::Method::new(
        "MOST".into(),
        4,
        false,
        vec![
            &Select,
            &aml::Store::new(&aml::Path::new("MOEV"), &aml::Arg(1)),
            &aml::Store::new(&aml::Path::new("MOSC"), &aml::Arg(2)),
            &release,
        ],
    )
    .to_aml_bytes(&mut out);
    aml::Method::new(
        "MEJ0".into(),
        2,
        false,
        vec![
            &Select,
            &aml::Store::new(&aml::Path::new("MEJ_"), &aml::ONE),
            &release,
        ],
    )
    .to_aml_bytes(&mut out);
    out
}

/// Slot `slot`'s memory device: its _UID and methods that call the container's.
fn slot_device(slot: u32) -> Vec<u8> {
    let uid = aml::Path::new("_UID");
    let crs = aml::MethodCall::new("MCRS".into(), vec![&uid]);
    let sta = aml::MethodCall::new("MRST".into(), vec![&uid]);
    let pxm = aml::MethodCall::new("MPXM".into(), vec![&uid]);
    let ost = aml::MethodCall::new(
        "MOST".into(),
        vec![&uid, &aml::Arg(0), &aml::Arg(1), &aml::Arg(2)],
    );
    let ej0 = aml::MethodCall::new("MEJ0".into(), vec![&uid, &aml::Arg(0)]);
    let (ret_crs, ret_sta, ret_pxm) = (
        aml::Return::new(&crs),
        aml::Return::new(&sta),
        aml::Return::new(&pxm),
    );
    bytes(&aml::Device::new(
        slot_name(slot).as_str().into(),
        vec![
            &aml::Name::new("_UID".into(), &format!("0x{slot:02X}")),
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C80")),
            &aml::Method::new("_CRS".into(), 0, false, vec![&ret_crs]),
            &aml::Method::new("_STA".into(), 0, false, vec![&ret_sta]),
            &aml::Method::new("_PXM".into(), 0, false, vec![&ret_pxm]),
            &aml::Method::new("_OST".into(), 3, false, vec![&ost]),
            &aml::Method::new("_EJ0".into(), 1, false, vec![&ej0]),
        ],
    ))
}

/// MTFY(slot, event): Notify the slot's device.
fn notify_method(slots: u32) -> Vec<u8> {
    let names: Vec<(u32, aml::Path)> = (0..slots)
        .map(|s| (s, aml::Path::new(&slot_name(s))))
        .collect();
    let notifies: Vec<(aml::Equal, aml::Notify)> = names
        .iter()
        .map(|(s, name)| {
            (
                aml::Equal::new(&aml::Arg(0), s),
                aml::Notify::new(name, &aml::Arg(1)),
            )
        })
        .collect();
    let ifs: Vec<aml::If> = notifies
        .iter()
        .map(|(is, notify)| aml::If::new(is, vec![notify]))
        .collect();
    bytes(&aml::Method::new(
        "MTFY".into(),
        2,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    ))
}

/// The whole of memory hotplug for `slots` slots (1 to 256): the devices and the GPE method,
/// to go at the DSDT's top level after `\_SB.PCI0`.
pub fn memory_hotplug_aml(slots: u32) -> Vec<u8> {
    let mut container = Vec::new();
    for part in [
        bytes(&aml::Name::new("_HID".into(), &"PNP0A06")),
        bytes(&aml::Name::new("_UID".into(), &"DIMM devices")),
        bytes(&aml::Name::new("MDNR".into(), &slots)),
        fields(),
        bytes(&aml::Method::new(
            "_STA".into(),
            0,
            false,
            vec![&aml::Return::new(&0x0bu8)],
        )),
        bytes(&aml::Mutex::new("MLCK".into(), 0)),
        scan_method(),
        slot_methods(),
        crs_method(),
    ] {
        container.extend(part);
    }
    for slot in 0..slots {
        container.extend(slot_device(slot));
    }
    container.extend(notify_method(slots));
    let mut out = resources();
    out.extend(bytes(&aml::Device::new(
        CONTAINER.into(),
        vec![&Raw(container)],
    )));
    let gpe_method = format!("\\_GPE._E{:02X}", gpe::MEMORY_HOTPLUG);
    let scan = aml::MethodCall::new(format!("{CONTAINER}.MSCN").as_str().into(), vec![]);
    out.extend(bytes(&aml::Method::new(
        gpe_method.as_str().into(),
        0,
        false,
        vec![&scan],
    )));
    out
}
