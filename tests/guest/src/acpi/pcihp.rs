//! ACPI PCI hotplug of bus 0 through the register interface of QEMU's PIIX4 (which Flotilla's
//! vmm-core follows): PCIU (slots added; reading it clears it), PCID (slots whose removal is
//! requested; ejecting the slot clears its bit), B0EJ (writing a slot's bit ejects it) and,
//! where the tables have it, BNUM (the bus selector, set to 0 before the others are used, as
//! the AML's PCNT and PCEJ methods do: both DSDTs give the root bus BSEL 0).
//!
//! Nothing is hard-coded: the registers are found the way the AML reaches them, as Field
//! units of SystemIO operation regions in the DSDT and SSDTs (aml_fields.rs), and so are the
//! GPEs to enable (the `_Exx` methods). QEMU 7.2's pc DSDT has OperationRegion PCST (0xae00,
//! 8 bytes: PCIU, PCID), SEJ (0xae08, 4: B0EJ) and BNMR (0xae10, 8: BNUM, PIDX); vmm-core's
//! has one region PCHP (0xae00, 0x14: PCIU, PCID, B0EJ, PCRM, BNUM). A field is accessed as
//! the AML interpreter would: in units of its AccessType (AnyAcc: the field's width), aligned,
//! with the Field's UpdateRule for the bits of a unit outside the field.

use super::aml_fields::{
    edge_gpe_methods, find_field, find_region, FieldUnit, NameSeg, Problem, Search, SPACE_SYSTEM_IO,
};
use super::gpe::GpeSet;
use super::{Acpi, MAX_SSDTS};
use crate::arch::cpu::{inb, inl, inw, outb, outl, outw};
use crate::arch::user;
use crate::console::{self, Line};

/// UpdateRule values of a Field (ACPI 6.5, 19.6.48).
const UPDATE_PRESERVE: u8 = 0;
const UPDATE_WRITE_AS_ONES: u8 = 1;

/// One field unit in I/O space: `units` aligned accesses of `access` bytes from `port`, the
/// field being `width` bits from bit `shift` of them (little-endian).
#[derive(Clone, Copy)]
pub struct IoField {
    pub port: u16,
    access: u8,
    units: u8,
    shift: u32,
    width: u32,
    update: u8,
}

impl IoField {
    fn unit_read(&self, index: u8) -> u64 {
        let port = self.port + u16::from(index) * u16::from(self.access);
        // SAFETY: a register the firmware tables describe as this field's I/O; reading it has
        // the effect the caller asked for (PCIU clears on read).
        u64::from(unsafe {
            match self.access {
                1 => u32::from(inb(port)),
                2 => u32::from(inw(port)),
                _ => inl(port),
            }
        })
    }

    fn unit_write(&self, index: u8, value: u64) {
        let port = self.port + u16::from(index) * u16::from(self.access);
        // SAFETY: as in `unit_read`: the field's own I/O, written on the caller's request.
        unsafe {
            match self.access {
                1 => outb(port, value as u8),
                2 => outw(port, value as u16),
                _ => outl(port, value as u32),
            }
        }
    }

    fn mask(&self) -> u64 {
        ((1u64 << self.width) - 1) << self.shift
    }

    /// The field's value (one read of each unit, in ascending order).
    pub fn read(&self) -> u32 {
        let mut value = 0;
        for index in 0..self.units {
            value |= self.unit_read(index) << (8 * u32::from(self.access) * u32::from(index));
        }
        ((value & self.mask()) >> self.shift) as u32
    }

    /// Writes `value` into the field; the other bits of its units follow the UpdateRule.
    pub fn write(&self, value: u32) {
        let bits = u32::from(self.access) * 8 * u32::from(self.units);
        let mask = self.mask();
        let whole = mask == u64::MAX >> (64 - bits);
        let others = match self.update {
            _ if whole => 0,
            UPDATE_PRESERVE => {
                let mut current = 0;
                for index in 0..self.units {
                    current |=
                        self.unit_read(index) << (8 * u32::from(self.access) * u32::from(index));
                }
                current & !mask
            }
            UPDATE_WRITE_AS_ONES => !mask,
            _ => 0,
        };
        let combined = others | ((u64::from(value) << self.shift) & mask);
        for index in 0..self.units {
            let unit = combined >> (8 * u32::from(self.access) * u32::from(index));
            self.unit_write(index, unit);
        }
    }
}

/// The hotplug registers of bus 0.
#[derive(Clone, Copy)]
pub struct Registers {
    pub up: IoField,
    pub down: IoField,
    pub eject: IoField,
    pub select: Option<IoField>,
}

impl Registers {
    fn select_bus0(&self) {
        if let Some(select) = self.select {
            select.write(0);
        }
    }

    /// PCIU: slots added since it was last read (the read clears it).
    pub fn read_up(&self) -> u32 {
        self.select_bus0();
        self.up.read()
    }

    /// PCID: slots whose removal is requested.
    pub fn read_down(&self) -> u32 {
        self.select_bus0();
        self.down.read()
    }

    /// B0EJ: ejects `slot` (0-31).
    pub fn eject(&self, slot: u8) {
        self.select_bus0();
        self.eject.write(1 << (slot & 31));
    }
}

/// What [`find`] found: the registers and the GPEs that have `_Exx` methods.
#[derive(Clone, Copy)]
pub struct Hotplug {
    pub registers: Registers,
    pub gpes: GpeSet,
}

/// One table with its name for messages (`DSDT`, `SSDT1`...).
#[derive(Clone, Copy)]
pub(super) struct Table {
    pub(super) bytes: &'static [u8],
    pub(super) name: &'static str,
}

const SSDT_NAMES: [&str; MAX_SSDTS] = [
    "SSDT1", "SSDT2", "SSDT3", "SSDT4", "SSDT5", "SSDT6", "SSDT7", "SSDT8",
];

fn error() -> Line {
    console::error("hotplug: ")
}

fn problem(line: Line, table: Table, problem: Option<Problem>, what: &str) -> Line {
    match problem {
        Some(p) => line
            .s(" (first ")
            .s(what)
            .s(" that does not decode: ")
            .s(table.name)
            .s("+")
            .hex(p.at as u64)
            .s(": ")
            .s(p.what.describe())
            .s(")"),
        None => line,
    }
}

/// The Field unit `name` (first table that has it) and the table it is in; Ok(None) if there
/// is none and it is not `required`, Err after an error line.
fn unit(tables: &[Table], name: NameSeg, required: bool) -> Result<Option<(FieldUnit, Table)>, ()> {
    let mut first_bad: Option<(Table, Problem)> = None;
    for &table in tables {
        let search: Search<FieldUnit> = find_field(table.bytes, name);
        if let Some(found) = search.found {
            if let Some(at) = search.conflict {
                error()
                    .ascii(&name)
                    .s(" is defined differently at ")
                    .s(table.name)
                    .s("+")
                    .hex(found.at as u64)
                    .s(" and +")
                    .hex(at as u64)
                    .end();
                return Err(());
            }
            return Ok(Some((found, table)));
        }
        if let (None, Some(p)) = (first_bad, search.malformed) {
            first_bad = Some((table, p));
        }
    }
    if !required {
        return Ok(None);
    }
    let line = error()
        .s("no Field unit ")
        .ascii(&name)
        .s(" in the DSDT or SSDTs");
    match first_bad {
        Some((table, p)) => problem(line, table, Some(p), "Field"),
        None => line,
    }
    .end();
    Err(())
}

/// Where the field unit `name` is in I/O space: Ok(None) if there is none and it is not
/// `required`, Err after an error line (also when an optional one is there but unusable).
pub(super) fn io_field(
    tables: &[Table],
    name: NameSeg,
    required: bool,
) -> Result<Option<IoField>, ()> {
    locate(tables, name, required, false)
}

/// A field that must be there, whole units (`io_field`) or, with `bits`, a few bits of
/// them (cpuhp.rs's flags: CINS is one bit of a byte; at most 32 bits in at most 4 bytes); None after an error line.
pub(super) fn required_field(tables: &[Table], name: NameSeg, bits: bool) -> Option<IoField> {
    locate(tables, name, true, bits).ok().flatten()
}

fn locate(
    tables: &[Table],
    name: NameSeg,
    required: bool,
    bits: bool,
) -> Result<Option<IoField>, ()> {
    let Some((field, table)) = unit(tables, name, required)? else {
        return Ok(None);
    };
    let search = find_region(table.bytes, field.region);
    let Some(region) = search.found else {
        let line = error()
            .s("no OperationRegion ")
            .ascii(&field.region)
            .s(" (of ")
            .ascii(&name)
            .s(") in ")
            .s(table.name);
        problem(line, table, search.malformed, "OperationRegion").end();
        return Err(());
    };
    let about = |line: Line| {
        line.s("region ")
            .ascii(&field.region)
            .s(" of ")
            .ascii(&name)
            .s(" (")
            .s(table.name)
            .s("+")
            .hex(region.at as u64)
            .s(")")
    };
    if let Some(at) = search.conflict {
        about(error())
            .s(" is defined differently again at +")
            .hex(at as u64)
            .end();
        return Err(());
    }
    if region.space != SPACE_SYSTEM_IO {
        about(error())
            .s(" is in address space ")
            .dec(u64::from(region.space))
            .s(", not SystemIO")
            .end();
        return Err(());
    }
    let access_bytes: u64 = match field.access {
        0 => field.bit_width / 8,
        1 => 1,
        2 => 2,
        3 => 4,
        _ => 0,
    };
    let whole = field.bit_offset % 8 == 0 && matches!(field.bit_width, 8 | 16 | 32);
    let some_bits = bits && (1..=32).contains(&field.bit_width) && {
        let first = field.bit_offset / 8 / access_bytes.max(1);
        let last = (field.bit_offset + field.bit_width - 1) / 8 / access_bytes.max(1);
        (last - first + 1) * access_bytes <= 4
    };
    if !(whole || some_bits) || !matches!(access_bytes, 1 | 2 | 4) {
        error()
            .s("field ")
            .ascii(&name)
            .s(" (")
            .dec(field.bit_width)
            .s(" bits at bit ")
            .dec(field.bit_offset)
            .s(", AccessType ")
            .dec(u64::from(field.access))
            .s(") is not an 8/16/32-bit register reachable by port I/O")
            .end();
        return Err(());
    }
    // Aligned units of the access width that cover the field.
    let start = field.bit_offset / 8 / access_bytes * access_bytes;
    let end = (field.bit_offset + field.bit_width).div_ceil(8 * access_bytes) * access_bytes;
    if end > region.len {
        error()
            .s("field ")
            .ascii(&name)
            .s(" (bits ")
            .dec(field.bit_offset)
            .s("-")
            .dec(field.bit_offset + field.bit_width - 1)
            .s(", accessed as bytes ")
            .dec(start)
            .s("-")
            .dec(end - 1)
            .s(") lies outside its region ")
            .ascii(&field.region)
            .s(" (")
            .dec(region.len)
            .s(" bytes, ")
            .s(table.name)
            .s("+")
            .hex(region.at as u64)
            .s(")")
            .end();
        return Err(());
    }
    let port = region.offset.checked_add(start);
    let Some(port) = port
        .filter(|&p| p.saturating_add(end - start) <= 0x1_0000)
        .and_then(|p| u16::try_from(p).ok())
    else {
        about(error())
            .s(" at ")
            .hex(region.offset)
            .s(" puts ")
            .ascii(&name)
            .s(" beyond port 0xffff")
            .end();
        return Err(());
    };
    Ok(Some(IoField {
        port,
        access: access_bytes as u8,
        units: ((end - start) / access_bytes) as u8,
        shift: (field.bit_offset - 8 * start) as u32,
        width: field.bit_width as u32,
        update: field.update,
    }))
}

/// The DSDT and the SSDTs, and how many there are; None after an error line without a DSDT.
pub(super) fn tables(acpi: &Acpi) -> Option<([Table; 1 + MAX_SSDTS], usize)> {
    let Some(dsdt) = acpi.dsdt else {
        error().s("no DSDT").end();
        return None;
    };
    let mut tables = [Table {
        bytes: dsdt,
        name: "DSDT",
    }; 1 + MAX_SSDTS];
    let mut count = 1;
    for (ssdt, name) in acpi.ssdts.iter().zip(SSDT_NAMES) {
        if let Some(bytes) = ssdt {
            tables[count] = Table { bytes, name };
            count += 1;
        }
    }
    Some((tables, count))
}

fn find_in(acpi: &Acpi) -> Option<Hotplug> {
    let (tables, count) = tables(acpi)?;
    let tables = &tables[..count];
    let up = io_field(tables, *b"PCIU", true);
    let down = io_field(tables, *b"PCID", true);
    let eject = io_field(tables, *b"B0EJ", true);
    let select = io_field(tables, *b"BNUM", false);
    let mut gpes: GpeSet = [0; 4];
    for table in tables {
        edge_gpe_methods(table.bytes, &mut gpes);
    }
    if gpes == [0; 4] {
        error()
            .s("no _Exx method (edge-triggered GPE) in the DSDT or SSDTs")
            .end();
        return None;
    }
    let (Ok(Some(up)), Ok(Some(down)), Ok(Some(eject)), Ok(select)) = (up, down, eject, select)
    else {
        return None;
    };
    Some(Hotplug {
        registers: Registers {
            up,
            down,
            eject,
            select,
        },
        gpes,
    })
}

/// Finds the hotplug registers and the `_Exx` GPEs in the DSDT and SSDTs (the scans run in
/// ring 3). None after `GUEST ERROR hotplug: ...` lines saying what is missing or wrong.
pub fn find(acpi: &Acpi) -> Option<Hotplug> {
    let mut found = None;
    let mut scan = || {
        found = find_in(acpi);
        0
    };
    user::call_reported("hotplug", "the AML scan", &mut scan)?;
    found
}
