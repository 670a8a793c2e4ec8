//! ACPI CPU hotplug through QEMU's "modern" register interface (QEMU's
//! docs/specs/acpi_cpu_hotplug.txt; the one `-M pc` has and Flotilla's vmm-core follows), found
//! the way the AML reaches it: the Field units of QEMU's build_cpus_aml in a SystemIO region
//! (QEMU 7.2 pc: PRST, 0xaf00, 12 bytes), looked up as pcihp.rs looks up PCI hotplug's.
//!
//! | field | where | what |
//! |-------|-------|------|
//! | CSEL  | dword +0 | the selected CPU (write); writing 0 there first also takes QEMU pc's block out of its legacy mode (a bitmap of present CPUs), as QEMU's AML does |
//! | CPEN  | bit 0 of byte +4 | the selected CPU is present (read) |
//! | CINS  | bit 1 of byte +4 | it has an insert event (read); writing 1 clears it |
//! | CRMV  | bit 2 of byte +4 | it has a remove event (read); writing 1 clears it |
//! | CCMD  | byte +5 | command: 0 selects the next CPU with an event (from the selected one on, wrapping; none: the selector stays), 1 / 2 make CDAT writes the _OST event / status, 3 makes CDAT read the selected CPU's APIC ID |
//! | CDAT  | dword +8 | after command 0 the selector, after command 3 the APIC ID (read); the _OST event or status after command 1 or 2 (write) |
//!
//! The GPE to enable is the one whose `_Exx` method runs the scan method CSCN (QEMU's
//! `\_GPE._E02` calls `\_SB.CPUS.CSCN`).

use super::aml_fields::{edge_gpe_methods_calling, NameSeg};
use super::gpe::GpeSet;
use super::pcihp::{required_field as field, tables, IoField};
use super::Acpi;
use crate::arch::user;
use crate::console;

/// Commands written to CCMD.
const CMD_NEXT_WITH_EVENT: u32 = 0;
const CMD_OST_EVENT: u32 = 1;
const CMD_OST_STATUS: u32 = 2;
const CMD_GET_APIC_ID: u32 = 3;
/// The scan method the CPU hotplug GPE runs.
const SCAN_METHOD: NameSeg = *b"CSCN";

/// The registers, as field units.
#[derive(Clone, Copy)]
pub struct Registers {
    pub select: IoField,
    command: IoField,
    data: IoField,
    enabled: IoField,
    insert: IoField,
    remove: IoField,
}

/// The selected CPU's flags.
#[derive(Clone, Copy)]
pub struct Flags {
    pub enabled: bool,
    pub insert: bool,
    pub remove: bool,
}

impl Registers {
    /// Selects CPU `selector` (0 also leaves QEMU's legacy mode).
    pub fn select(&self, selector: u32) {
        self.select.write(selector);
    }

    /// Command 0: selects the next CPU with an event, from the selected one on; returns
    /// the selector (unchanged when no CPU has one) and that CPU's flags.
    pub fn next_with_event(&self) -> (u32, Flags) {
        self.command.write(CMD_NEXT_WITH_EVENT);
        let selector = self.data.read();
        let flags = Flags {
            enabled: self.enabled.read() != 0,
            insert: self.insert.read() != 0,
            remove: self.remove.read() != 0,
        };
        (selector, flags)
    }

    /// Command 3: the selected CPU's APIC ID.
    pub fn apic_id(&self) -> u32 {
        self.command.write(CMD_GET_APIC_ID);
        self.data.read()
    }

    /// _OST of CPU `selector`: `event` (the notification it answers) and `status`, as QEMU's
    /// COST method writes them.
    pub fn ost(&self, selector: u32, event: u32, status: u32) {
        self.select(selector);
        self.command.write(CMD_OST_EVENT);
        self.data.write(event);
        self.command.write(CMD_OST_STATUS);
        self.data.write(status);
    }

    /// Clears the selected CPU's insert event.
    pub fn clear_insert(&self) {
        self.insert.write(1);
    }

    /// Clears the selected CPU's remove event.
    pub fn clear_remove(&self) {
        self.remove.write(1);
    }
}

/// What [`find`] found.
#[derive(Clone, Copy)]
pub struct CpuHotplug {
    pub registers: Registers,
    /// The GPEs whose `_Exx` method runs CSCN.
    pub gpes: GpeSet,
}

fn find_in(acpi: &Acpi) -> Option<CpuHotplug> {
    let (tables, count) = tables(acpi)?;
    let tables = &tables[..count];
    // Every field is looked for (and a missing one named) before giving up.
    let select = field(tables, *b"CSEL", false);
    let command = field(tables, *b"CCMD", false);
    let data = field(tables, *b"CDAT", false);
    let enabled = field(tables, *b"CPEN", true);
    let insert = field(tables, *b"CINS", true);
    let remove = field(tables, *b"CRMV", true);
    let mut gpes: GpeSet = [0; 4];
    for table in tables {
        edge_gpe_methods_calling(table.bytes, SCAN_METHOD, &mut gpes);
    }
    if gpes == [0; 4] {
        console::error(
            "hotplug: no _Exx method (edge-triggered GPE) calls CSCN in the DSDT or SSDTs",
        )
        .end();
        return None;
    }
    Some(CpuHotplug {
        registers: Registers {
            select: select?,
            command: command?,
            data: data?,
            enabled: enabled?,
            insert: insert?,
            remove: remove?,
        },
        gpes,
    })
}

/// Finds the CPU hotplug registers and their GPE in the DSDT and SSDTs (the scans run in
/// ring 3). None after `GUEST ERROR hotplug: ...` lines saying what is missing or wrong.
pub fn find(acpi: &Acpi) -> Option<CpuHotplug> {
    let mut found = None;
    let mut scan = || {
        found = find_in(acpi);
        0
    };
    user::call_reported("hotplug", "the AML scan", &mut scan)?;
    found
}
