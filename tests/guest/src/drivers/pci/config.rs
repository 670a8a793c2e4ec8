//! PCI configuration space of segment 0: the access method (ECAM from the ACPI MCFG, else
//! ports 0xCF8/0xCFC), reads and writes of one function's registers, the standard header's
//! register offsets, and the command register.

use crate::acpi::mcfg::Mcfg;
use crate::acpi::Acpi;
use crate::arch::cpu::{inl, outl, outw};
use crate::arch::memory;
use crate::arch::phys::{mmio_read, mmio_write};
use crate::console;
use crate::sync::Global;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

// Registers of the standard header (type 0 and type 1), and command register bits.
pub const REG_COMMAND: u16 = 0x04;
pub const REG_STATUS: u16 = 0x06;
pub const REG_CLASS: u16 = 0x08;
pub const REG_HEADER_TYPE: u16 = 0x0e;
pub const REG_BAR0: u16 = 0x10;
pub const REG_SUBSYSTEM: u16 = 0x2c;
pub const REG_CAP_PTR: u16 = 0x34;
pub const REG_SECONDARY_BUS: u16 = 0x19;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

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
    let mcfg = acpi.mcfg.or(ecam_override.map(|base| Mcfg {
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

/// Where one configuration register is reached with the access method in use.
enum Register {
    /// The register's ECAM address (mapped by `init`).
    Ecam(u64),
    /// The value for CONFIG_ADDRESS that selects the register's dword.
    Port(u32),
    /// Outside the ECAM bus range, beyond 0xff with the ports, or before `init`.
    Absent,
}

fn register(at: Address, offset: u16) -> Register {
    match access() {
        Access::Ecam {
            base,
            start_bus,
            end_bus,
        } => ecam(base, start_bus, end_bus, at, offset).map_or(Register::Absent, Register::Ecam),
        Access::Ports if offset < 0x100 => Register::Port(port_address(at, offset)),
        _ => Register::Absent,
    }
}

/// Reads the dword holding `offset` (aligned down). Absent functions read all ones.
pub fn read32(at: Address, offset: u16) -> u32 {
    match register(at, offset & !3) {
        // SAFETY: `init` mapped the whole ECAM range, and a dword-aligned register address is
        // a device register of that width.
        Register::Ecam(addr) => unsafe { mmio_read::<u32>(addr) },
        // SAFETY: 0xcf8/0xcfc belong to this module; selecting a register and reading it
        // touches no memory.
        Register::Port(address) => unsafe {
            outl(CONFIG_ADDRESS, address);
            inl(CONFIG_DATA)
        },
        Register::Absent => u32::MAX,
    }
}

pub fn read16(at: Address, offset: u16) -> u16 {
    (read32(at, offset) >> (8 * u32::from(offset & 2))) as u16
}

pub fn read8(at: Address, offset: u16) -> u8 {
    (read32(at, offset) >> (8 * u32::from(offset & 3))) as u8
}

pub fn write32(at: Address, offset: u16, value: u32) {
    match register(at, offset & !3) {
        // SAFETY: as in `read32`.
        Register::Ecam(addr) => unsafe { mmio_write::<u32>(addr, value) },
        // SAFETY: as in `read32`.
        Register::Port(address) => unsafe {
            outl(CONFIG_ADDRESS, address);
            outl(CONFIG_DATA, value);
        },
        Register::Absent => {}
    }
}

/// A 16-bit write (so that neighbouring write-1-to-clear status bits are left alone).
pub fn write16(at: Address, offset: u16, value: u16) {
    let offset = offset & !1;
    match register(at, offset) {
        // SAFETY: as in `read32` (a word-aligned register of that width).
        Register::Ecam(addr) => unsafe { mmio_write::<u16>(addr, value) },
        // SAFETY: as in `read32`; the word is reached at its offset inside CONFIG_DATA.
        Register::Port(address) => unsafe {
            outl(CONFIG_ADDRESS, address);
            outw(CONFIG_DATA + (offset & 2), value);
        },
        Register::Absent => {}
    }
}

/// Clears memory space and bus mastering in the command register: the function neither
/// decodes its memory BARs nor reaches memory any more (before it is ejected).
pub fn disable(at: Address) {
    let command = read16(at, REG_COMMAND);
    write16(
        at,
        REG_COMMAND,
        command & !(COMMAND_MEMORY | COMMAND_BUS_MASTER),
    );
}

/// Sets memory space, bus mastering and INTx disable in the command register.
pub fn enable(at: Address) {
    let command = read16(at, REG_COMMAND);
    let wanted = command | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
    if wanted != command {
        write16(at, REG_COMMAND, wanted);
    }
}
