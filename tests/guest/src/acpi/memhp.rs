//! ACPI memory hotplug through QEMU's register interface (QEMU's docs/specs/
//! acpi_mem_hotplug.rst: `-M pc` with `-m ...,slots=N,maxmem=M`, which Flotilla's vmm-core
//! follows), found the way the AML reaches it: the Field units of QEMU's
//! build_memory_hotplug_aml (`\_SB.MHPC`) in a SystemIO region (QEMU 7.2 pc: HPMR, 0x0a00,
//! 24 bytes), looked up as pcihp.rs looks up PCI hotplug's.
//!
//! | field | where | what |
//! |-------|-------|------|
//! | MSEL  | dword +0 (write) | selects a slot; the other registers are the selected slot's |
//! | MRBL, MRBH | dwords +0, +4 (read) | its base address, low and high half |
//! | MRLL, MRLH | dwords +8, +0xc (read) | its length |
//! | MES   | bit 0 of byte +0x14 | a DIMM is there and usable |
//! | MINS  | bit 1 | insert event; writing 1 clears it |
//! | MRMV  | bit 2 | remove event; writing 1 clears it |
//! | MEJ   | bit 3 (write) | ejects the slot's DIMM |
//! | MOEV, MOSC | dwords +4, +8 (write) | _OST's event and status codes (the status write reports both) |
//!
//! The number of slots is the integer of `Name (MDNR, ...)`; the GPE to enable is the one
//! whose `_Exx` method runs the scan method MSCN (QEMU's `\_GPE._E03`).

use super::aml_fields::{edge_gpe_methods_calling, find_integer_name, NameSeg};
use super::gpe::GpeSet;
use super::pcihp::{required_field as field, tables, IoField, Table};
use super::Acpi;
use crate::arch::user;
use crate::console;

/// The scan method the memory hotplug GPE runs.
const SCAN_METHOD: NameSeg = *b"MSCN";
/// The name holding the number of slots.
const SLOT_COUNT: NameSeg = *b"MDNR";
/// QEMU's ACPI_MAX_RAM_SLOTS: more is not a memory hotplug block of QEMU's kind.
pub const MAX_SLOTS: u32 = 256;

/// The registers, as field units.
#[derive(Clone, Copy)]
pub struct Registers {
    pub select: IoField,
    base_lo: IoField,
    base_hi: IoField,
    len_lo: IoField,
    len_hi: IoField,
    enabled: IoField,
    insert: IoField,
    remove: IoField,
    eject: IoField,
    ost_event: IoField,
    ost_status: IoField,
}

/// The selected slot's flags.
#[derive(Clone, Copy)]
pub struct Status {
    pub enabled: bool,
    pub insert: bool,
    pub remove: bool,
}

impl Registers {
    /// Selects `slot`.
    pub fn select(&self, slot: u32) {
        self.select.write(slot);
    }

    /// The selected slot's flags (one read of the status byte each, as the AML reads them).
    /// The events first, then MES, as the AML's MSCN reads MINS before _STA reads MES: a
    /// DIMM plugged between two reads (device_add while a scan for another slot's event
    /// walks this one) then shows its event with MES set, which the VMM sets with or
    /// before the event. MES first saw it clear and the event set, on QEMU 7.2 once.
    pub fn status(&self) -> Status {
        let insert = self.insert.read() != 0;
        let remove = self.remove.read() != 0;
        Status {
            enabled: self.enabled.read() != 0,
            insert,
            remove,
        }
    }

    /// The selected slot's DIMM: (base address, length).
    pub fn range(&self) -> (u64, u64) {
        let join = |lo: &IoField, hi: &IoField| u64::from(hi.read()) << 32 | u64::from(lo.read());
        (
            join(&self.base_lo, &self.base_hi),
            join(&self.len_lo, &self.len_hi),
        )
    }

    pub fn clear_insert(&self) {
        self.insert.write(1);
    }

    pub fn clear_remove(&self) {
        self.remove.write(1);
    }

    /// Ejects the selected slot's DIMM (what its _EJ0 does).
    pub fn eject(&self) {
        self.eject.write(1);
    }

    /// What the selected slot's _OST(event, status) writes.
    pub fn ost(&self, event: u32, status: u32) {
        self.ost_event.write(event);
        self.ost_status.write(status);
    }
}

/// What [`find`] found.
#[derive(Clone, Copy)]
pub struct MemHotplug {
    pub registers: Registers,
    pub slots: u32,
    /// The GPEs whose `_Exx` method runs MSCN.
    pub gpes: GpeSet,
}

/// MDNR's value, from the first table that has it; None after an error line.
fn slot_count(tables: &[Table]) -> Option<u32> {
    for table in tables {
        let search = find_integer_name(table.bytes, SLOT_COUNT);
        if let (Some(value), None) = (search.found, search.conflict) {
            return match u32::try_from(value) {
                Ok(slots) if slots <= MAX_SLOTS => Some(slots),
                _ => {
                    console::error("hotplug: MDNR=")
                        .dec(value)
                        .s(" in ")
                        .s(table.name)
                        .s(" is more than ")
                        .dec(u64::from(MAX_SLOTS))
                        .s(" memory slots")
                        .end();
                    None
                }
            };
        }
        if let Some(at) = search.conflict {
            console::error("hotplug: MDNR is defined differently at ")
                .s(table.name)
                .s("+")
                .hex(at as u64)
                .end();
            return None;
        }
    }
    console::error(
        "hotplug: no Name (MDNR, <integer>) (the number of memory slots) in the DSDT or SSDTs",
    )
    .end();
    None
}

fn find_in(acpi: &Acpi) -> Option<MemHotplug> {
    let (tables, count) = tables(acpi)?;
    let tables = &tables[..count];
    // Every field is looked for (and a missing one named) before giving up.
    let select = field(tables, *b"MSEL", false);
    let base_lo = field(tables, *b"MRBL", false);
    let base_hi = field(tables, *b"MRBH", false);
    let len_lo = field(tables, *b"MRLL", false);
    let len_hi = field(tables, *b"MRLH", false);
    let enabled = field(tables, *b"MES_", true);
    let insert = field(tables, *b"MINS", true);
    let remove = field(tables, *b"MRMV", true);
    let eject = field(tables, *b"MEJ_", true);
    let ost_event = field(tables, *b"MOEV", false);
    let ost_status = field(tables, *b"MOSC", false);
    let slots = slot_count(tables);
    let mut gpes: GpeSet = [0; 4];
    for table in tables {
        edge_gpe_methods_calling(table.bytes, SCAN_METHOD, &mut gpes);
    }
    if gpes == [0; 4] {
        console::error(
            "hotplug: no _Exx method (edge-triggered GPE) calls MSCN in the DSDT or SSDTs",
        )
        .end();
        return None;
    }
    Some(MemHotplug {
        registers: Registers {
            select: select?,
            base_lo: base_lo?,
            base_hi: base_hi?,
            len_lo: len_lo?,
            len_hi: len_hi?,
            enabled: enabled?,
            insert: insert?,
            remove: remove?,
            eject: eject?,
            ost_event: ost_event?,
            ost_status: ost_status?,
        },
        slots: slots?,
        gpes,
    })
}

/// Finds the memory hotplug registers, the number of slots and their GPE in the DSDT and
/// SSDTs (the scans run in ring 3). None after `GUEST ERROR hotplug: ...` lines saying what
/// is missing or wrong.
pub fn find(acpi: &Acpi) -> Option<MemHotplug> {
    let mut found = None;
    let mut scan = || {
        found = find_in(acpi);
        0
    };
    user::call_reported("hotplug", "the AML scan", &mut scan)?;
    found
}
