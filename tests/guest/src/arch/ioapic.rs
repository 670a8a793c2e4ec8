//! I/O APIC redirection: route one global system interrupt (GSI) to a vector on one CPU.
//! Which I/O APIC owns a GSI, and at what address, comes from the MADT.

use crate::acpi::madt::Madt;
use crate::arch::phys::{mmio_read, mmio_write, range_ok};
use crate::console;

const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION: u32 = 0x10;
const MASKED: u32 = 1 << 16;
const LEVEL: u32 = 1 << 15;
const ACTIVE_LOW: u32 = 1 << 13;

fn read(base: u64, reg: u32) -> u32 {
    // SAFETY: `base` is an I/O APIC from the MADT inside the identity map (checked by route).
    unsafe {
        mmio_write::<u32>(base, reg);
        mmio_read::<u32>(base + 0x10)
    }
}

fn write(base: u64, reg: u32, value: u32) {
    // SAFETY: as in `read`.
    unsafe {
        mmio_write::<u32>(base, reg);
        mmio_write::<u32>(base + 0x10, value);
    }
}

/// Trigger mode and polarity of an interrupt line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub level: bool,
    pub active_low: bool,
}

/// Programs the redirection entry of `gsi`: fixed delivery of `vector` to physical APIC ID
/// `dest`, unmasked. Reports and returns false when no I/O APIC in the MADT owns `gsi`.
pub fn route(madt: &Madt, gsi: u32, vector: u8, mode: Mode, dest: u32) -> bool {
    for ioapic in madt.ioapics() {
        if gsi < ioapic.gsi_base || !range_ok(u64::from(ioapic.address), 0x20) {
            continue;
        }
        let base = u64::from(ioapic.address);
        let entries = ((read(base, REG_VERSION) >> 16) & 0xff) + 1;
        let pin = gsi - ioapic.gsi_base;
        if pin >= entries {
            continue;
        }
        let mut low = u32::from(vector);
        if mode.level {
            low |= LEVEL;
        }
        if mode.active_low {
            low |= ACTIVE_LOW;
        }
        let reg = REG_REDIRECTION + 2 * pin;
        // Mask while the entry is half written, destination first.
        write(base, reg, MASKED);
        write(base, reg + 1, dest << 24);
        write(base, reg, low);
        return true;
    }
    console::error("no I/O APIC owns gsi=")
        .dec(u64::from(gsi))
        .end();
    false
}
