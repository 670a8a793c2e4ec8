//! ACPI Generic Address Structures: a register in system I/O, system memory or (bus 0) PCI
//! configuration space. FADT registers (PM1 blocks, reset, sleep control) are accessed through
//! this, so the same code drives port-based (q35, Flotilla) and MMIO-based (microvm) hardware.

use crate::arch::cpu::{inb, inl, inw, outb, outl, outw};
use crate::arch::phys::{le_u64, le_u8, mmio_read, mmio_write, range_ok};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Space {
    Memory,
    Io,
    PciConfig,
    Other(u8),
}

#[derive(Clone, Copy, Debug)]
pub struct Gas {
    pub space: Space,
    pub bit_width: u8,
    pub bit_offset: u8,
    pub access_size: u8,
    pub address: u64,
}

/// Why a register access was not done.
#[derive(Clone, Copy, Debug)]
pub enum AccessError {
    UnsupportedSpace,
    BadWidth,
    Unmapped,
}

impl AccessError {
    pub fn describe(self) -> &'static str {
        match self {
            AccessError::UnsupportedSpace => "unsupported address space",
            AccessError::BadWidth => "unsupported register width",
            AccessError::Unmapped => "register outside the mapped 4 GiB",
        }
    }
}

impl Gas {
    /// Parses the 12-byte structure at `offset` of `table` (zeroes beyond the table's end).
    pub fn parse(table: &[u8], offset: usize) -> Self {
        let space = match le_u8(table, offset) {
            0 => Space::Memory,
            1 => Space::Io,
            2 => Space::PciConfig,
            other => Space::Other(other),
        };
        Self {
            space,
            bit_width: le_u8(table, offset + 1),
            bit_offset: le_u8(table, offset + 2),
            access_size: le_u8(table, offset + 3),
            address: le_u64(table, offset + 4),
        }
    }

    /// A register in legacy FADT form: an I/O port block of `len` bytes.
    pub fn io(port: u32, len: u8) -> Self {
        Self {
            space: Space::Io,
            bit_width: len.saturating_mul(8),
            bit_offset: 0,
            access_size: 0,
            address: u64::from(port),
        }
    }

    pub fn is_present(&self) -> bool {
        self.address != 0
    }

    /// The `width`-bit register `offset` bytes into this block (e.g. PM1 enable, which sits
    /// half-way into the PM1 event block).
    pub fn sub_register(&self, offset: u64, width: u8) -> Self {
        Self {
            address: self.address.wrapping_add(offset),
            bit_width: width,
            bit_offset: 0,
            access_size: 0,
            ..*self
        }
    }

    /// Access width in bits: the explicit access size if given, else the register width.
    fn width(&self) -> Result<u8, AccessError> {
        let width = match self.access_size {
            1 => 8,
            2 => 16,
            3 => 32,
            4 => 64,
            _ => self.bit_width,
        };
        match width {
            8 | 16 | 32 | 64 => Ok(width),
            _ => Err(AccessError::BadWidth),
        }
    }

    /// Reads the register, shifted down by its bit offset.
    pub fn read(&self) -> Result<u64, AccessError> {
        self.read_raw().map(|value| value >> self.bit_offset)
    }

    /// Writes `value` shifted up to the register's bit offset.
    pub fn write(&self, value: u64) -> Result<(), AccessError> {
        self.write_raw(value << self.bit_offset)
    }

    fn read_raw(&self) -> Result<u64, AccessError> {
        let width = self.width()?;
        match self.space {
            Space::Io => {
                let port = u16::try_from(self.address).map_err(|_| AccessError::Unmapped)?;
                // SAFETY: the firmware tables name this port as an ACPI register.
                unsafe { port_read(port, width) }
            }
            Space::Memory => {
                if !range_ok(self.address, u64::from(width / 8)) {
                    return Err(AccessError::Unmapped);
                }
                // SAFETY: an ACPI register in the identity map, accessed at its width.
                unsafe {
                    Ok(match width {
                        8 => u64::from(mmio_read::<u8>(self.address)),
                        16 => u64::from(mmio_read::<u16>(self.address)),
                        32 => u64::from(mmio_read::<u32>(self.address)),
                        _ => mmio_read::<u64>(self.address),
                    })
                }
            }
            Space::PciConfig => {
                let port = pci_config_select(self.address)?;
                // SAFETY: 0xcf8/0xcfc is the PCI configuration mechanism #1 the table names.
                unsafe { port_read(port, width) }
            }
            Space::Other(_) => Err(AccessError::UnsupportedSpace),
        }
    }

    fn write_raw(&self, value: u64) -> Result<(), AccessError> {
        let width = self.width()?;
        match self.space {
            Space::Io => {
                let port = u16::try_from(self.address).map_err(|_| AccessError::Unmapped)?;
                // SAFETY: the firmware tables name this port as an ACPI register.
                unsafe { port_write(port, width, value) }
            }
            Space::Memory => {
                if !range_ok(self.address, u64::from(width / 8)) {
                    return Err(AccessError::Unmapped);
                }
                // SAFETY: an ACPI register in the identity map, accessed at its width.
                unsafe {
                    match width {
                        8 => mmio_write::<u8>(self.address, value as u8),
                        16 => mmio_write::<u16>(self.address, value as u16),
                        32 => mmio_write::<u32>(self.address, value as u32),
                        _ => mmio_write::<u64>(self.address, value),
                    }
                }
                Ok(())
            }
            Space::PciConfig => {
                let port = pci_config_select(self.address)?;
                // SAFETY: as in `read`.
                unsafe { port_write(port, width, value) }
            }
            Space::Other(_) => Err(AccessError::UnsupportedSpace),
        }
    }
}

/// ACPI encodes a PCI configuration register as device (bits 47:32), function (31:16) and
/// offset (15:0) on segment 0, bus 0. Selects it through 0xcf8 and returns the data port.
fn pci_config_select(address: u64) -> Result<u16, AccessError> {
    let device = (address >> 32) & 0xffff;
    let function = (address >> 16) & 0xffff;
    let offset = address & 0xffff;
    if device > 31 || function > 7 || offset > 0xff {
        return Err(AccessError::Unmapped);
    }
    let select = 0x8000_0000 | (device << 11) | (function << 8) | (offset & 0xfc);
    // SAFETY: writing the configuration address register has no other effect.
    unsafe { outl(0xcf8, select as u32) };
    Ok(0xcfc + (offset & 3) as u16)
}

/// A port read at the register's width (8, 16 or 32 bits).
///
/// # Safety
/// The port must be a register whose read has no effect the caller did not intend.
unsafe fn port_read(port: u16, width: u8) -> Result<u64, AccessError> {
    match width {
        8 => Ok(u64::from(inb(port))),
        16 => Ok(u64::from(inw(port))),
        32 => Ok(u64::from(inl(port))),
        _ => Err(AccessError::BadWidth),
    }
}

/// A port write at the register's width (8, 16 or 32 bits).
///
/// # Safety
/// As for `port_read`.
unsafe fn port_write(port: u16, width: u8, value: u64) -> Result<(), AccessError> {
    match width {
        8 => outb(port, value as u8),
        16 => outw(port, value as u16),
        32 => outl(port, value as u32),
        _ => return Err(AccessError::BadWidth),
    }
    Ok(())
}
