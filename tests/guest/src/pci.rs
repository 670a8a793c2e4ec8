//! PCI: configuration space access, bus enumeration, BARs, the capability list, the command
//! register and MSI-X.
//!
//! Configuration space goes through ECAM when the ACPI MCFG table describes it (segment 0),
//! else through the legacy ports 0xCF8/0xCFC. The scan covers bus 0 and the secondary buses
//! of the bridges found there (as numbered by firmware or the VMM; nothing is renumbered).
//! BARs are taken as assigned (by firmware or the VMM): they are read, never sized or moved,
//! and a memory BAR of 0 is reported as an error. Everything here runs in ring 0, where each
//! configuration access is a VM exit or two, so the walks read whole dwords.

use crate::acpi::Acpi;
use crate::arch::cpu::{inl, outl, outw};
use crate::arch::memory;
use crate::arch::phys::{mmio_read, mmio_write};
use crate::console;
use crate::sync::Global;

pub const MAX_FUNCTIONS: usize = 64;
const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

pub const REG_COMMAND: u16 = 0x04;
pub const REG_STATUS: u16 = 0x06;
const REG_CLASS: u16 = 0x08;
const REG_HEADER_TYPE: u16 = 0x0e;
const REG_BAR0: u16 = 0x10;
const REG_SUBSYSTEM: u16 = 0x2c;
const REG_CAP_PTR: u16 = 0x34;
const REG_SECONDARY_BUS: u16 = 0x19;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u16 = 1 << 4;
const HEADER_MULTI_FUNCTION: u8 = 0x80;
const HEADER_BRIDGE: u8 = 0x01;
/// A capability list longer than this is looping.
const MAX_CAPS: usize = 48;

pub const CAP_MSIX: u8 = 0x11;
pub const CAP_VENDOR: u8 = 0x09;
const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
const MSIX_ENTRY_LEN: u64 = 16;
const MSIX_VECTOR_MASKED: u32 = 1;
/// MSI address for fixed delivery, physical destination mode (Intel SDM 11.11.1).
const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    None,
    Ecam {
        base: u64,
        start_bus: u8,
        end_bus: u8,
    },
    Ports,
}

static ACCESS: Global<Access> = Global::new(Access::None);

fn access() -> Access {
    // SAFETY: written once by `init` on the BSP before any other use.
    unsafe { *ACCESS.get() }
}

/// Bus, device and function of one PCI function (segment 0).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Address {
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Address {
    /// Appends `bb:dd.f` (hex) to a console line.
    pub fn print(self, line: console::Line) -> console::Line {
        line.hex_digits(u64::from(self.bus), 2)
            .s(":")
            .hex_digits(u64::from(self.dev), 2)
            .s(".")
            .hex_digits(u64::from(self.func), 1)
    }
}

/// Picks the configuration access method: ECAM if the MCFG has a usable segment-0 entry that
/// can be mapped (or, without an MCFG, at `ecam_override` for buses 0-255: a test aid for
/// QEMU microvm, whose 7.2 ACPI tables lack the MCFG), else the legacy ports. Returns its
/// name (for the diagnostics line).
pub fn init(acpi: &Acpi, ecam_override: Option<u64>) -> &'static str {
    let mut chosen = Access::Ports;
    let mcfg = acpi
        .mcfg
        .or(ecam_override.map(|base| crate::acpi::mcfg::Mcfg {
            base,
            start_bus: 0,
            end_bus: 255,
        }));
    if let Some(mcfg) = mcfg {
        let start = mcfg.base + (u64::from(mcfg.start_bus) << 20);
        let len = (u64::from(mcfg.end_bus) - u64::from(mcfg.start_bus) + 1) << 20;
        if memory::map_mmio(start, len) {
            chosen = Access::Ecam {
                base: mcfg.base,
                start_bus: mcfg.start_bus,
                end_bus: mcfg.end_bus,
            };
        } else {
            console::error("pci: MCFG ECAM at ")
                .hex(mcfg.base)
                .s(" cannot be mapped, using ports 0xcf8/0xcfc")
                .end();
        }
    }
    // SAFETY: BSP, before any configuration access.
    unsafe { *ACCESS.get_mut() = chosen };
    match chosen {
        Access::Ecam { .. } => "ecam",
        _ => "ports",
    }
}

/// The ECAM address of a register, or None if the bus is outside the MCFG range.
fn ecam(base: u64, start_bus: u8, end_bus: u8, at: Address, offset: u16) -> Option<u64> {
    if at.bus < start_bus || at.bus > end_bus {
        return None;
    }
    Some(
        base + (u64::from(at.bus) << 20)
            + (u64::from(at.dev & 0x1f) << 15)
            + (u64::from(at.func & 7) << 12)
            + u64::from(offset & 0xfff),
    )
}

fn port_address(at: Address, offset: u16) -> u32 {
    0x8000_0000
        | (u32::from(at.bus) << 16)
        | (u32::from(at.dev & 0x1f) << 11)
        | (u32::from(at.func & 7) << 8)
        | u32::from(offset & 0xfc)
}

/// Reads the dword holding `offset` (aligned down). Absent functions read all ones.
pub fn read32(at: Address, offset: u16) -> u32 {
    let offset = offset & !3;
    match access() {
        Access::Ecam {
            base,
            start_bus,
            end_bus,
        } => match ecam(base, start_bus, end_bus, at, offset) {
            // SAFETY: the ECAM range was mapped by `init`.
            Some(addr) => unsafe { mmio_read::<u32>(addr) },
            None => u32::MAX,
        },
        Access::Ports if offset < 0x100 => {
            // SAFETY: 0xcf8/0xcfc belong to this module.
            unsafe {
                outl(CONFIG_ADDRESS, port_address(at, offset));
                inl(CONFIG_DATA)
            }
        }
        _ => u32::MAX,
    }
}

pub fn read16(at: Address, offset: u16) -> u16 {
    (read32(at, offset) >> (8 * u32::from(offset & 2))) as u16
}

pub fn read8(at: Address, offset: u16) -> u8 {
    (read32(at, offset) >> (8 * u32::from(offset & 3))) as u8
}

pub fn write32(at: Address, offset: u16, value: u32) {
    let offset = offset & !3;
    match access() {
        Access::Ecam {
            base,
            start_bus,
            end_bus,
        } => {
            if let Some(addr) = ecam(base, start_bus, end_bus, at, offset) {
                // SAFETY: as in `read32`.
                unsafe { mmio_write::<u32>(addr, value) }
            }
        }
        Access::Ports if offset < 0x100 => {
            // SAFETY: as in `read32`.
            unsafe {
                outl(CONFIG_ADDRESS, port_address(at, offset));
                outl(CONFIG_DATA, value);
            }
        }
        _ => {}
    }
}

/// A 16-bit write (so that neighbouring write-1-to-clear status bits are left alone).
pub fn write16(at: Address, offset: u16, value: u16) {
    let offset = offset & !1;
    match access() {
        Access::Ecam {
            base,
            start_bus,
            end_bus,
        } => {
            if let Some(addr) = ecam(base, start_bus, end_bus, at, offset) {
                // SAFETY: as in `read32`.
                unsafe { mmio_write::<u16>(addr, value) }
            }
        }
        Access::Ports if offset < 0x100 => {
            // SAFETY: as in `read32`.
            unsafe {
                outl(CONFIG_ADDRESS, port_address(at, offset));
                outw(CONFIG_DATA + (offset & 2), value);
            }
        }
        _ => {}
    }
}

/// One function found by the scan.
#[derive(Clone, Copy, Default)]
pub struct Function {
    pub addr: Address,
    pub vendor: u16,
    pub device: u16,
    /// Class code, subclass, programming interface (bits 23:0 of register 0x08 >> 8).
    pub class: u32,
    pub header_type: u8,
    /// Subsystem ID (type-0 headers; 0 for bridges).
    pub subsystem: u16,
}

/// The functions found by [`scan`].
pub struct Functions {
    list: [Function; MAX_FUNCTIONS],
    count: usize,
}

impl Functions {
    pub fn iter(&self) -> impl Iterator<Item = &Function> {
        self.list[..self.count].iter()
    }
}

fn probe(at: Address) -> Option<Function> {
    let id = read32(at, 0);
    let vendor = id as u16;
    if vendor == 0xffff || vendor == 0 {
        return None;
    }
    let class = read32(at, REG_CLASS);
    let header = read32(at, REG_HEADER_TYPE & !3);
    let header_type = (header >> 16) as u8;
    let subsystem = if header_type & 0x7f == 0 {
        read32(at, REG_SUBSYSTEM)
    } else {
        0
    };
    Some(Function {
        addr: at,
        vendor,
        device: (id >> 16) as u16,
        class: class >> 8,
        header_type,
        subsystem: (subsystem >> 16) as u16,
    })
}

/// Enumerates bus 0 and the buses behind its bridges (breadth first, each bus once).
pub fn scan() -> Functions {
    let mut found = Functions {
        list: [Function::default(); MAX_FUNCTIONS],
        count: 0,
    };
    let mut buses = [0u8; 32];
    let mut bus_count = 1;
    let mut next_bus = 0;
    let mut seen = [false; 256];
    seen[0] = true;
    while next_bus < bus_count {
        let bus = buses[next_bus];
        next_bus += 1;
        for dev in 0..32 {
            for func in 0..8 {
                let at = Address { bus, dev, func };
                let Some(function) = probe(at) else {
                    if func == 0 {
                        break;
                    }
                    continue;
                };
                if found.count == MAX_FUNCTIONS {
                    console::error("pci: more than ")
                        .dec(MAX_FUNCTIONS as u64)
                        .s(" functions, ignoring the rest")
                        .end();
                    return found;
                }
                found.list[found.count] = function;
                found.count += 1;
                if function.header_type & 0x7f == HEADER_BRIDGE {
                    let secondary = read8(at, REG_SECONDARY_BUS);
                    if secondary != 0 && !seen[usize::from(secondary)] && bus_count < buses.len() {
                        seen[usize::from(secondary)] = true;
                        buses[bus_count] = secondary;
                        bus_count += 1;
                    }
                }
                if func == 0 && function.header_type & HEADER_MULTI_FUNCTION == 0 {
                    break;
                }
            }
        }
    }
    found
}

/// One base address register as assigned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bar {
    /// Not implemented (reads 0) or the upper half of a 64-bit BAR.
    Unused,
    Io(u32),
    Memory {
        addr: u64,
        is64: bool,
        prefetchable: bool,
    },
}

/// Reads BAR `index` (0-5) of a type-0 header. The address of a memory BAR may be 0
/// (unassigned): callers check.
pub fn bar(at: Address, index: u8) -> Bar {
    if index > 5 {
        return Bar::Unused;
    }
    let offset = REG_BAR0 + 4 * u16::from(index);
    let low = read32(at, offset);
    if low & 1 == 1 {
        return Bar::Io(low & !3);
    }
    let prefetchable = low & 8 != 0;
    match (low >> 1) & 3 {
        2 if index < 5 => Bar::Memory {
            addr: u64::from(low & !0xf) | (u64::from(read32(at, offset + 4)) << 32),
            is64: true,
            prefetchable,
        },
        0 | 1 => Bar::Memory {
            addr: u64::from(low & !0xf),
            is64: false,
            prefetchable,
        },
        _ => Bar::Unused,
    }
}

/// The address of memory BAR `index` plus `offset`, mapped for `len` bytes; None after an
/// error line (`what` names the user) if the BAR is an I/O BAR, unassigned (0), or the range
/// cannot be mapped.
pub fn map_bar(at: Address, index: u8, offset: u64, len: u64, what: &str) -> Option<u64> {
    let fail = |why: &str| {
        let line = console::error("pci ");
        at.print(line)
            .s(": ")
            .s(what)
            .s(": BAR")
            .dec(u64::from(index))
            .s(" ")
            .s(why)
            .end();
    };
    let base = match bar(at, index) {
        Bar::Memory { addr: 0, .. } => {
            fail("is 0 (unassigned)");
            return None;
        }
        Bar::Memory { addr, .. } => addr,
        Bar::Io(_) => {
            fail("is an I/O BAR (memory expected)");
            return None;
        }
        Bar::Unused => {
            fail("is not implemented");
            return None;
        }
    };
    let Some(addr) = base.checked_add(offset) else {
        fail("offset overflows");
        return None;
    };
    if !memory::map_mmio(addr, len.max(1)) {
        fail("range cannot be mapped");
        return None;
    }
    Some(addr)
}

/// Test aid (`pci_assign=` on the command line, for firmware that leaves BARs unassigned,
/// such as qboot on QEMU microvm): gives every memory BAR of the type-0 functions that reads 0
/// an address from `[base, base + size)`, naturally aligned, sized with the write-ones method
/// while memory decoding is off. I/O BARs are left alone. Returns the number assigned.
pub fn assign_bars(functions: &Functions, base: u64, size: u64) -> u32 {
    let mut next = base;
    let end = base.saturating_add(size);
    let mut assigned = 0;
    for f in functions.iter().filter(|f| f.header_type & 0x7f == 0) {
        let at = f.addr;
        let command = read16(at, REG_COMMAND);
        write16(at, REG_COMMAND, command & !COMMAND_MEMORY);
        let mut index = 0;
        while index < 6 {
            let Bar::Memory { addr, is64, .. } = bar(at, index) else {
                index += 1;
                continue;
            };
            let offset = REG_BAR0 + 4 * u16::from(index);
            index += if is64 { 2 } else { 1 };
            if addr != 0 {
                continue;
            }
            let low = read32(at, offset);
            write32(at, offset, u32::MAX);
            let mut mask = u64::from(read32(at, offset) & !0xf);
            if is64 {
                write32(at, offset + 4, u32::MAX);
                mask |= u64::from(read32(at, offset + 4)) << 32;
            }
            if mask == 0 {
                // Not implemented: all bits read back as zero.
                write32(at, offset, low);
                continue;
            }
            if !is64 {
                mask |= 0xffff_ffff_0000_0000;
            }
            let bar_size = (!mask).wrapping_add(1);
            let start = next.checked_add(bar_size - 1).map(|v| v & !(bar_size - 1));
            match start {
                Some(start) if start + bar_size <= end && (is64 || start < 1 << 32) => {
                    write32(at, offset, (start as u32) | (low & 0xf));
                    if is64 {
                        write32(at, offset + 4, (start >> 32) as u32);
                    }
                    next = start + bar_size;
                    assigned += 1;
                }
                _ => {
                    write32(at, offset, low);
                    if is64 {
                        write32(at, offset + 4, 0);
                    }
                    at.print(console::error("pci "))
                        .s(": pci_assign window has no room for a BAR of ")
                        .hex(bar_size)
                        .end();
                }
            }
        }
        write16(at, REG_COMMAND, command);
    }
    assigned
}

/// Offsets of the capabilities of `at` with the given ID, in list order (at most 8).
pub fn find_caps(at: Address, id: u8, out: &mut [u16; 8]) -> usize {
    let mut count = 0;
    if read16(at, REG_STATUS) & STATUS_CAP_LIST == 0 {
        return 0;
    }
    let mut ptr = u16::from(read8(at, REG_CAP_PTR) & 0xfc);
    for _ in 0..MAX_CAPS {
        if ptr < 0x40 {
            return count;
        }
        let head = read32(at, ptr);
        if head as u8 == id && count < out.len() {
            out[count] = ptr;
            count += 1;
        }
        ptr = u16::from((head >> 8) as u8 & 0xfc);
    }
    let line = console::error("pci ");
    at.print(line).s(": capability list does not end").end();
    count
}

/// Sets memory space, bus mastering and INTx disable in the command register.
pub fn enable(at: Address) {
    let command = read16(at, REG_COMMAND);
    let wanted = command | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
    if wanted != command {
        write16(at, REG_COMMAND, wanted);
    }
}

/// A function's MSI-X capability with its table mapped.
#[derive(Clone, Copy)]
pub struct MsiX {
    at: Address,
    cap: u16,
    pub table_size: u16,
    table: u64,
}

impl MsiX {
    /// Finds and maps the MSI-X table; None if there is no capability, or after an error line
    /// if its table BAR is unusable.
    pub fn find(at: Address) -> Option<MsiX> {
        let mut caps = [0u16; 8];
        if find_caps(at, CAP_MSIX, &mut caps) == 0 {
            return None;
        }
        let cap = caps[0];
        let control = read16(at, cap + 2);
        let table_size = (control & 0x7ff) + 1;
        let table_reg = read32(at, cap + 4);
        let bir = (table_reg & 7) as u8;
        let offset = u64::from(table_reg & !7);
        let table = map_bar(
            at,
            bir,
            offset,
            u64::from(table_size) * MSIX_ENTRY_LEN,
            "MSI-X table",
        )?;
        Some(MsiX {
            at,
            cap,
            table_size,
            table,
        })
    }

    /// Enables MSI-X with the whole function masked (entries are programmed next).
    pub fn enable_masked(&self) {
        let control = read16(self.at, self.cap + 2);
        write16(
            self.at,
            self.cap + 2,
            control | MSIX_ENABLE | MSIX_FUNCTION_MASK,
        );
    }

    /// Clears the function mask (after the entries are programmed).
    pub fn unmask_function(&self) {
        let control = read16(self.at, self.cap + 2);
        write16(self.at, self.cap + 2, control & !MSIX_FUNCTION_MASK);
    }

    /// Points table entry `index` at `vector` on the CPU with local APIC ID `apic_id` (fixed
    /// delivery, edge) and unmasks it.
    pub fn set_entry(&self, index: u16, apic_id: u32, vector: u8) {
        if index >= self.table_size {
            return;
        }
        let entry = self.table + u64::from(index) * MSIX_ENTRY_LEN;
        let address = MSI_ADDRESS_BASE | (u64::from(apic_id & 0xff) << 12);
        // SAFETY: the table was mapped by `find` and the entry is inside it.
        unsafe {
            mmio_write::<u32>(entry + 12, MSIX_VECTOR_MASKED);
            mmio_write::<u32>(entry, address as u32);
            mmio_write::<u32>(entry + 4, (address >> 32) as u32);
            mmio_write::<u32>(entry + 8, u32::from(vector));
            mmio_write::<u32>(entry + 12, 0);
        }
    }
}
