//! The capability list and MSI-X: finding capabilities by ID, and a function's MSI-X table
//! (enable, mask, entries pointing at a local APIC and vector).

use super::bar::map_bar;
use super::config::{read16, read32, read8, write16, Address, REG_CAP_PTR, REG_STATUS};
use crate::arch::phys::mmio_write;
use crate::console;

const STATUS_CAP_LIST: u16 = 1 << 4;
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

    /// Disables MSI-X (the function may then only use INTx, which the command register keeps
    /// disabled).
    pub fn disable(&self) {
        let control = read16(self.at, self.cap + 2);
        write16(self.at, self.cap + 2, control & !MSIX_ENABLE);
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
