//! MADT ("APIC") parsing: the CPUs (Processor Local APIC and x2APIC entries with their Enabled
//! and Online Capable flags), the I/O APICs, the interrupt source overrides and the local
//! APIC address (with its 64-bit override).

use crate::arch::phys::{le_u16, le_u32, le_u64, le_u8};
use crate::console;

pub const MAX_CPU_ENTRIES: usize = 256;
pub const MAX_IOAPICS: usize = 8;
pub const MAX_OVERRIDES: usize = 16;

const FLAG_ENABLED: u32 = 1 << 0;
const FLAG_ONLINE_CAPABLE: u32 = 1 << 1;

#[derive(Clone, Copy)]
pub struct CpuEntry {
    pub apic_id: u32,
    /// Usable now: start it.
    pub enabled: bool,
    /// Not enabled, but may be hot-added later: not started, only counted.
    pub online_capable: bool,
}

#[derive(Clone, Copy)]
pub struct IoApicEntry {
    pub address: u32,
    pub gsi_base: u32,
}

#[derive(Clone, Copy)]
pub struct Override {
    pub source_irq: u8,
    pub gsi: u32,
    /// MPS INTI flags: polarity in bits 1:0, trigger mode in bits 3:2.
    pub flags: u16,
}

pub struct Madt {
    pub lapic_address: u64,
    pub pcat_compat: bool,
    cpus: [CpuEntry; MAX_CPU_ENTRIES],
    cpu_count: usize,
    ioapics: [IoApicEntry; MAX_IOAPICS],
    ioapic_count: usize,
    overrides: [Override; MAX_OVERRIDES],
    override_count: usize,
}

impl Madt {
    pub const EMPTY: Madt = Madt {
        lapic_address: 0,
        pcat_compat: false,
        cpus: [CpuEntry {
            apic_id: 0,
            enabled: false,
            online_capable: false,
        }; MAX_CPU_ENTRIES],
        cpu_count: 0,
        ioapics: [IoApicEntry {
            address: 0,
            gsi_base: 0,
        }; MAX_IOAPICS],
        ioapic_count: 0,
        overrides: [Override {
            source_irq: 0,
            gsi: 0,
            flags: 0,
        }; MAX_OVERRIDES],
        override_count: 0,
    };

    pub fn cpus(&self) -> &[CpuEntry] {
        &self.cpus[..self.cpu_count]
    }

    pub fn ioapics(&self) -> &[IoApicEntry] {
        &self.ioapics[..self.ioapic_count]
    }

    pub fn overrides(&self) -> &[Override] {
        &self.overrides[..self.override_count]
    }

    pub fn override_for_irq(&self, irq: u8) -> Option<Override> {
        self.overrides()
            .iter()
            .copied()
            .find(|o| o.source_irq == irq)
    }

    fn add_cpu(&mut self, apic_id: u32, flags: u32) {
        // An x2APIC entry may repeat a processor already listed with a local APIC entry.
        if self.cpus().iter().any(|c| c.apic_id == apic_id) {
            return;
        }
        if self.cpu_count == MAX_CPU_ENTRIES {
            console::error("madt: too many processor entries, ignoring apic_id=")
                .dec(u64::from(apic_id))
                .end();
            return;
        }
        self.cpus[self.cpu_count] = CpuEntry {
            apic_id,
            enabled: flags & FLAG_ENABLED != 0,
            online_capable: flags & FLAG_ONLINE_CAPABLE != 0,
        };
        self.cpu_count += 1;
    }

    /// Parses a checksummed MADT into `self` (which starts as `EMPTY`). Malformed entries end
    /// the walk with an error line; what was parsed before them is kept.
    pub fn parse_into(&mut self, table: &[u8]) {
        self.lapic_address = u64::from(le_u32(table, 36));
        self.pcat_compat = le_u32(table, 40) & 1 != 0;
        let mut offset = 44;
        while offset < table.len() {
            let kind = le_u8(table, offset);
            let len = usize::from(le_u8(table, offset + 1));
            if len < 2 || offset + len > table.len() {
                console::error("madt: malformed entry type=")
                    .dec(u64::from(kind))
                    .s(" offset=")
                    .dec(offset as u64)
                    .end();
                return;
            }
            let entry = &table[offset..offset + len];
            match (kind, len) {
                (0, 8..) => self.add_cpu(u32::from(le_u8(entry, 3)), le_u32(entry, 4)),
                (1, 12..) => {
                    if self.ioapic_count < MAX_IOAPICS {
                        self.ioapics[self.ioapic_count] = IoApicEntry {
                            address: le_u32(entry, 4),
                            gsi_base: le_u32(entry, 8),
                        };
                        self.ioapic_count += 1;
                    } else {
                        console::error("madt: too many I/O APICs").end();
                    }
                }
                (2, 10..) => {
                    if self.override_count < MAX_OVERRIDES {
                        self.overrides[self.override_count] = Override {
                            source_irq: le_u8(entry, 3),
                            gsi: le_u32(entry, 4),
                            flags: le_u16(entry, 8),
                        };
                        self.override_count += 1;
                    } else {
                        console::error("madt: too many interrupt source overrides").end();
                    }
                }
                (5, 12..) => self.lapic_address = le_u64(entry, 4),
                (9, 16..) => self.add_cpu(le_u32(entry, 4), le_u32(entry, 8)),
                (0 | 1 | 2 | 5 | 9, _) => {
                    console::error("madt: short entry type=")
                        .dec(u64::from(kind))
                        .end();
                }
                _ => {}
            }
            offset += len;
        }
    }
}
