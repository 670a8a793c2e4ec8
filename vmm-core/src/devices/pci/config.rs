//! One PCI function's configuration space (type 0 header, 4 KiB for PCIe): what the guest
//! may write (masks), BAR sizing, and the capability list.

pub const CONFIG_SIZE: usize = 4096;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const BAR0: usize = 0x10;
pub const CAP_PTR: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
/// Revision in the low byte, the class code above it.
pub const CLASS_REVISION: usize = 0x08;
pub const HEADER_TYPE: usize = 0x0e;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const INTERRUPT_PIN: usize = 0x3d;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAP_LIST: u16 = 1 << 4;

const BAR_IO: u32 = 0b1;
const BAR_MEM64: u32 = 0b100;
const BAR_PREFETCHABLE: u32 = 0b1000;

/// A memory BAR: its current address and size (a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub addr: u64,
    pub size: u64,
    pub is_64: bool,
}

pub struct PciConfig {
    bytes: Vec<u8>,
    /// Bits the guest may change.
    writable: Vec<u8>,
    bars: [Option<Bar>; 6],
    last_cap: Option<usize>,
    next_cap: usize,
    power_on: Option<Vec<u8>>,
}

pub struct Ids {
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    pub revision: u8,
    pub class: u32,
}

impl PciConfig {
    pub fn new(ids: &Ids) -> PciConfig {
        let mut c = PciConfig {
            bytes: vec![0; CONFIG_SIZE],
            writable: vec![0; CONFIG_SIZE],
            bars: [None; 6],
            last_cap: None,
            next_cap: 0x40,
            power_on: None,
        };
        c.set16(0x00, ids.vendor);
        c.set16(0x02, ids.device);
        c.set32(0x08, (ids.class << 8) | u32::from(ids.revision));
        c.set16(0x2c, ids.subsystem_vendor);
        c.set16(0x2e, ids.subsystem);
        // Command: I/O, memory, bus master, INTx disable are the guest's to set.
        let mask = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&mask.to_le_bytes());
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    pub fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    pub fn get32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes[off..off + 4].try_into().unwrap_or_default())
    }

    pub fn command(&self) -> u16 {
        self.get16(COMMAND)
    }

    /// Declares memory BAR `index` at `addr` (assigned by the VMM, as no firmware runs).
    pub fn add_bar(&mut self, index: usize, bar: Bar) {
        let off = BAR0 + index * 4;
        let flags = if bar.is_64 { BAR_MEM64 } else { 0 };
        self.set32(off, (bar.addr as u32 & !0xf) | flags);
        let mask = !(bar.size as u32).wrapping_sub(1) & !0xf;
        self.writable[off..off + 4].copy_from_slice(&mask.to_le_bytes());
        if bar.is_64 {
            self.set32(off + 4, (bar.addr >> 32) as u32);
            let hi_mask = !((bar.size.wrapping_sub(1)) >> 32) as u32;
            self.writable[off + 4..off + 8].copy_from_slice(&hi_mask.to_le_bytes());
        }
        self.bars[index] = Some(bar);
    }

    /// BAR `index` as the guest has it now.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        let b = self.bars.get(index).copied().flatten()?;
        let lo = u64::from(self.get32(BAR0 + index * 4) & !0xf);
        let hi = if b.is_64 {
            u64::from(self.get32(BAR0 + index * 4 + 4)) << 32
        } else {
            0
        };
        Some(Bar { addr: hi | lo, ..b })
    }

    /// BAR `index` where the guest has it, if that is an address it can decode at (with
    /// decoding on or off): not 0, and not wrapping past the end of its address space, as
    /// QEMU's pci_bar_address has it. All ones, written to size the BAR, read back as
    /// such a wrapping address.
    pub fn placed_bar(&self, index: usize) -> Option<Bar> {
        let now = self.bar(index)?;
        let limit = match now.is_64 {
            true => u64::MAX,
            false => u64::from(u32::MAX),
        };
        let real = now.addr != 0
            && (now.addr.checked_add(now.size.saturating_sub(1))).is_some_and(|last| last < limit);
        real.then_some(now)
    }

    /// BAR `index` as the VMM assigned it (where the guest moved it since aside): the
    /// range the bus gets back when the function goes.
    pub fn assigned_bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// Appends a capability (`body` starts with its id byte; the next pointer is filled
    /// in); returns its offset.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        let off = self.next_cap;
        self.bytes[off..off + body.len()].copy_from_slice(body);
        self.bytes[off + 1] = 0;
        self.writable[off..off + writable.len()].copy_from_slice(writable);
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = off as u8,
            None => {
                self.bytes[CAP_PTR] = off as u8;
                let status = self.get16(STATUS) | STATUS_CAP_LIST;
                self.set16(STATUS, status);
            }
        }
        self.last_cap = Some(off);
        self.next_cap = (off + body.len()).next_multiple_of(4);
        off
    }

    pub fn read(&self, off: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(off + i).copied().unwrap_or(0xff);
        }
    }

    /// Applies a guest write through the masks; returns true if a BAR changed.
    pub fn write(&mut self, off: usize, data: &[u8]) -> bool {
        let mut bar_changed = false;
        for (i, b) in data.iter().enumerate() {
            let at = off + i;
            let Some(mask) = self.writable.get(at).copied() else {
                break;
            };
            let old = self.bytes[at];
            self.bytes[at] = (old & !mask) | (b & mask);
            if (BAR0..BAR0 + 24).contains(&at) && self.bytes[at] != old {
                bar_changed = true;
            }
        }
        bar_changed
    }

    /// Records the current contents as the power-on state (once construction is done).
    pub fn seal(&mut self) {
        self.power_on = Some(self.bytes.clone());
    }

    /// Restores the power-on state (BARs at their assigned addresses, decoding off).
    pub fn reset(&mut self) {
        if let Some(p) = &self.power_on {
            self.bytes.copy_from_slice(p);
        }
    }

    /// The configuration space as the guest left it, for a migration.
    pub fn save(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// Takes a saved configuration space. What the guest cannot write (ids, capability
    /// layout, BAR sizes) must be ours byte for byte: otherwise it is another device.
    pub fn restore(&mut self, saved: &[u8]) -> Result<(), String> {
        if saved.len() != self.bytes.len() {
            return Err(format!(
                "configuration space of {} bytes, expected {}",
                saved.len(),
                self.bytes.len()
            ));
        }
        let differs = saved
            .iter()
            .zip(&self.bytes)
            .zip(&self.writable)
            .position(|((s, o), w)| s & !w != o & !w);
        if let Some(at) = differs {
            return Err(format!(
                "another device: read-only configuration byte {at:#x} differs"
            ));
        }
        self.bytes.copy_from_slice(saved);
        self.adopt_bars();
        Ok(())
    }

    /// After a restore, each BAR's home is where the source had it (if at a real
    /// address: not 0, not mid-sizing): a reset brings it back there, and the bus's
    /// window counts it there. Which BARs the source's functions got depends on its
    /// history of hot-plugs, not on how this VM was built.
    fn adopt_bars(&mut self) {
        for index in 0..self.bars.len() {
            let (Some(home), Some(now)) = (self.bars[index], self.placed_bar(index)) else {
                continue;
            };
            if now.addr == home.addr {
                continue;
            }
            self.bars[index] = Some(now);
            if let Some(power_on) = self.power_on.as_mut() {
                let off = BAR0 + index * 4;
                let len = if home.is_64 { 8 } else { 4 };
                power_on[off..off + len].copy_from_slice(&self.bytes[off..off + len]);
            }
        }
    }

    /// Raw bytes of a capability (for the device that owns it).
    pub fn bytes_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
        &mut self.bytes[off..off + len]
    }

    pub fn bytes(&self, off: usize, len: usize) -> &[u8] {
        &self.bytes[off..off + len]
    }

    /// BAR `index` as the guest has programmed it (None if not implemented, or the
    /// upper half of a 64-bit BAR): its kind from the register's low bits, its size from
    /// the bits its mask keeps, and where it decodes. That is nowhere while its decoding
    /// is off, at 0, or wrapping past the end of its address space, as QEMU's
    /// pci_bar_address has it, so that query-pci reads the same on both.
    pub fn bar_info(&self, index: usize) -> Option<ipc::PciBarInfo> {
        let implemented = self.bars.get(index).copied().flatten()?;
        let off = BAR0 + index * 4;
        let low = self.get32(off);
        let mask_at = |at: usize| {
            let m = &self.writable[at..at + 4];
            u32::from_le_bytes([m[0], m[1], m[2], m[3]])
        };
        let (kind, flag_bits, enable) = match low & BAR_IO {
            0 => (
                ipc::PciBarKind::Memory {
                    is_64: implemented.is_64,
                    prefetchable: low & BAR_PREFETCHABLE != 0,
                },
                0xf,
                COMMAND_MEMORY,
            ),
            _ => (ipc::PciBarKind::Io, 0x3, COMMAND_IO),
        };
        // The upper half's mask for a 64-bit BAR; a 32-bit one cannot reach above 4 GiB.
        let high_mask = match implemented.is_64 {
            true => mask_at(off + 4),
            false => u32::MAX,
        };
        let mask = (u64::from(high_mask) << 32) | u64::from(mask_at(off) & !flag_bits);
        let size = (!mask).wrapping_add(1);
        let high = match implemented.is_64 {
            true => u64::from(self.get32(off + 4)) << 32,
            false => 0,
        };
        let addr = high | u64::from(low & !flag_bits);
        let limit = match implemented.is_64 {
            true => u64::MAX,
            false => u64::from(u32::MAX),
        };
        let decodes = self.command() & enable != 0
            && addr != 0
            && size != 0
            && addr.checked_add(size - 1).is_some_and(|last| last < limit);
        Some(ipc::PciBarInfo {
            index: index as u8,
            kind,
            address: decodes.then_some(addr),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PciConfig {
        PciConfig::new(&Ids {
            vendor: 0x1af4,
            device: 0x1042,
            subsystem_vendor: 0x1af4,
            subsystem: 2,
            revision: 1,
            class: 0x018000,
        })
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = config();
        c.add_bar(
            0,
            Bar {
                addr: 0xc000_0000,
                size: 0x4000,
                is_64: false,
            },
        );
        c.write(BAR0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.get32(BAR0), 0xffff_c000);
        c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(c.bar(0).unwrap().addr, 0xd000_0000);
    }

    #[test]
    fn ids_are_read_only_and_capabilities_chain() {
        let mut c = config();
        c.write(0, &[0, 0, 0, 0]);
        assert_eq!(c.get16(0), 0x1af4);
        let a = c.add_capability(&[0x09, 0, 4, 1], &[]);
        let b = c.add_capability(&[0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(c.bytes(CAP_PTR, 1)[0] as usize, a);
        assert_eq!(c.bytes(a + 1, 1)[0] as usize, b);
        assert_eq!(c.bytes(b + 1, 1)[0], 0);
        assert_ne!(c.get16(STATUS) & STATUS_CAP_LIST, 0);
    }

    #[test]
    fn bar_info_reads_the_bar_as_the_guest_left_it() {
        let mut c = config();
        let bar = |addr, size, is_64| Bar { addr, size, is_64 };
        c.add_bar(0, bar(0xc000_0000, 0x8000, false));
        c.add_bar(2, bar(0x1_0000_0000, 0x4000, true));
        let info = |c: &PciConfig, i| c.bar_info(i).unwrap();
        let memory = |is_64| ipc::PciBarKind::Memory {
            is_64,
            prefetchable: false,
        };
        // Power-on: memory decoding off, so nothing decodes (QEMU's "unmapped").
        assert_eq!(
            info(&c, 0),
            ipc::PciBarInfo {
                index: 0,
                kind: memory(false),
                address: None,
                size: 0x8000
            }
        );
        assert_eq!(c.bar_info(1), None);
        assert_eq!(c.bar_info(3), None, "the upper half of BAR 2");
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(info(&c, 0).address, Some(0xc000_0000));
        assert_eq!(info(&c, 2).address, Some(0x1_0000_0000));
        assert_eq!((info(&c, 2).kind, info(&c, 2).size), (memory(true), 0x4000));
        // Moved by the guest, then sized: all ones wrap past 4 GiB, so nothing decodes.
        c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(info(&c, 0).address, Some(0xd000_0000));
        c.write(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!((info(&c, 0).address, info(&c, 0).size), (None, 0x8000));
        c.write(BAR0, &0u32.to_le_bytes());
        assert_eq!(info(&c, 0).address, None, "a BAR at 0 decodes nothing");
    }

    #[test]
    fn a_restored_bar_is_its_home_unless_it_was_being_sized() {
        let bar = |addr| Bar {
            addr,
            size: 0x8000,
            is_64: false,
        };
        let built = || {
            let mut c = config();
            c.add_bar(0, bar(0xc000_0000));
            c.seal();
            c
        };
        let mut source = built();
        source.write(BAR0, &0xc000_8000u32.to_le_bytes());
        let mut here = built();
        here.restore(&source.save()).unwrap();
        assert_eq!(here.assigned_bar(0), Some(bar(0xc000_8000)));
        here.write(BAR0, &0xd000_0000u32.to_le_bytes());
        here.reset();
        assert_eq!(
            here.bar(0),
            Some(bar(0xc000_8000)),
            "a reset brings it home"
        );
        // Saved mid-sizing (all ones), or at 0: this VM's own assignment stays.
        for value in [u32::MAX, 0] {
            source.write(BAR0, &value.to_le_bytes());
            let mut here = built();
            here.restore(&source.save()).unwrap();
            assert_eq!(here.assigned_bar(0), Some(bar(0xc000_0000)));
        }
    }

    #[test]
    fn command_bits_are_writable_and_others_not() {
        let mut c = config();
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(
            c.command(),
            COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE
        );
    }
}
