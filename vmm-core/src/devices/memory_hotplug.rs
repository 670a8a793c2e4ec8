//! ACPI memory hotplug with QEMU's register interface (QEMU 7.2's hw/acpi/memory_hotplug.c and
//! docs/specs/acpi_mem_hotplug.txt, as its pc machine has it with `-m ...,slots=N`), so that
//! the DSDT's methods (boot/acpi_memory.rs: \_SB.MHPC, \_GPE._E03) and Linux's
//! acpi_memhotplug work here as they do there. A 24-byte block on I/O ports
//! (`ports::MEMORY_HOTPLUG`, 0x0a00 as on pc); accesses of 1 to 4 bytes, each taken as an
//! access to the register at its first byte (QEMU's dispatch by address), a read giving the
//! register's low bytes:
//!
//! | offset | read | write |
//! |--------|------|-------|
//! | 0x0 | the selected DIMM's address, low half | slot selector |
//! | 0x4 | its address, high half | _OST event |
//! | 0x8 | its size, low half | _OST status (which reports both: VmEvent::AcpiOst) |
//! | 0xc | its size, high half | - |
//! | 0x10 | its proximity domain (0) | - |
//! | 0x14 | bit 0 a DIMM is there, 1 insert event, 2 remove event | bit 1 clears the insert event, else bit 2 the remove event, else bit 3 ejects the DIMM |
//! | other | all ones | - |
//!
//! With the selector out of range reads give 0 and writes other than the selector are
//! ignored. An eject of a slot with a DIMM empties the slot and leaves it in `ejected` for
//! the VM to let go of (VmEvent::MemoryEjected). A reset leaves it all, as QEMU's does: the
//! DIMMs stay, and a new boot finds them present (MES) without events.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::bus::BusDevice;
use super::gpe::{self, SharedGpe};
use super::state;
use crate::events::{EventSender, VmEvent};

const ADDR_LO: u64 = 0x0;
const SELECTOR: u64 = 0x0;
const ADDR_HI: u64 = 0x4;
const OST_EVENT: u64 = 0x4;
const SIZE_LO: u64 = 0x8;
const OST_STATUS: u64 = 0x8;
const SIZE_HI: u64 = 0xc;
const PROXIMITY: u64 = 0x10;
/// The flags byte (read) and the control byte (write).
pub const STATUS_OFFSET: u64 = 0x14;

/// Flags and control bits of the byte at STATUS_OFFSET.
pub const ST_ENABLED: u8 = 1 << 0;
pub const ST_INSERT: u8 = 1 << 1;
pub const ST_REMOVE: u8 = 1 << 2;
pub const ST_EJECT: u8 = 1 << 3;

/// QEMU's ACPI_MAX_RAM_SLOTS.
pub const MAX_SLOTS: u32 = 256;

/// A DIMM as the block describes it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DimmRange {
    pub addr: u64,
    pub size: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    dimm: Option<DimmRange>,
    inserting: bool,
    removing: bool,
    /// What the guest's _OST last said; kept when the DIMM goes, as QEMU keeps it.
    ost: ipc::SlotOst,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Registers {
    slots: Vec<Slot>,
    selector: u32,
}

/// What the guest's _OST said about a slot (QMP's ACPIOSTInfo of slot-type DIMM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotStatus {
    pub source: u32,
    pub status: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemorySlotError {
    #[error("memory slot {0} does not exist (there are {1})")]
    NoSlot(u32, usize),
    #[error("memory slot {0} holds a DIMM already")]
    Busy(u32),
    #[error("memory slot {0} holds no DIMM")]
    Empty(u32),
}

pub struct MemoryHotplug {
    regs: Registers,
    gpe: SharedGpe,
    events: EventSender,
    /// Slots the guest ejected, for the VM to let go of their memory.
    ejected: Vec<u32>,
}

pub type SharedMemoryHotplug = Arc<Mutex<MemoryHotplug>>;

impl MemoryHotplug {
    /// The block for `slots` empty slots; events go to `gpe`, ejects and _OST reports to
    /// `events`.
    pub fn new(slots: u32, gpe: SharedGpe, events: EventSender) -> MemoryHotplug {
        MemoryHotplug {
            regs: Registers {
                slots: vec![Slot::default(); slots as usize],
                selector: 0,
            },
            gpe,
            events,
            ejected: Vec::new(),
        }
    }

    fn slot_mut(&mut self, slot: u32) -> Result<&mut Slot, MemorySlotError> {
        let count = self.regs.slots.len();
        self.regs
            .slots
            .get_mut(slot as usize)
            .ok_or(MemorySlotError::NoSlot(slot, count))
    }

    /// Whether `slot` exists and holds no DIMM (one the guest ejected and the VM has not
    /// let go of yet still counts as held).
    pub fn check_free(&self, slot: u32) -> Result<(), MemorySlotError> {
        match self.regs.slots.get(slot as usize) {
            None => Err(MemorySlotError::NoSlot(slot, self.regs.slots.len())),
            Some(s) if s.dimm.is_some() || self.ejected.contains(&slot) => {
                Err(MemorySlotError::Busy(slot))
            }
            Some(_) => Ok(()),
        }
    }

    /// A DIMM went into `slot`: there, and with `announce` an insert event and GPE 3
    /// raised (without: a DIMM given at launch, which the boot finds present).
    pub fn plug(
        &mut self,
        slot: u32,
        dimm: DimmRange,
        announce: bool,
    ) -> Result<(), MemorySlotError> {
        self.check_free(slot)?;
        let s = self.slot_mut(slot)?;
        s.dimm = Some(dimm);
        s.inserting = announce;
        s.removing = false;
        if announce {
            self.gpe.lock().raise(gpe::MEMORY_HOTPLUG);
        }
        Ok(())
    }

    /// device_del: the guest is asked to let go of `slot`'s DIMM (a remove event, GPE 3),
    /// again if asked before, as QEMU does.
    pub fn request_unplug(&mut self, slot: u32) -> Result<(), MemorySlotError> {
        let s = self.slot_mut(slot)?;
        if s.dimm.is_none() {
            return Err(MemorySlotError::Empty(slot));
        }
        s.removing = true;
        self.gpe.lock().raise(gpe::MEMORY_HOTPLUG);
        Ok(())
    }

    /// The slots the guest ejected since the last call.
    pub fn take_ejected(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.ejected)
    }

    /// What the guest's _OST said, per slot.
    pub fn ospm_status(&self) -> Vec<SlotStatus> {
        self.regs
            .slots
            .iter()
            .map(|s| SlotStatus {
                source: s.ost.source,
                status: s.ost.status,
            })
            .collect()
    }

    fn selected(&mut self) -> Option<&mut Slot> {
        self.regs.slots.get_mut(self.regs.selector as usize)
    }

    fn register(&self, offset: u64) -> u32 {
        let Some(s) = self.regs.slots.get(self.regs.selector as usize) else {
            return 0;
        };
        let range = s.dimm.unwrap_or(DimmRange { addr: 0, size: 0 });
        match offset {
            ADDR_LO => range.addr as u32,
            ADDR_HI => (range.addr >> 32) as u32,
            SIZE_LO => range.size as u32,
            SIZE_HI => (range.size >> 32) as u32,
            PROXIMITY => 0,
            STATUS_OFFSET => {
                let mut flags = 0;
                if s.dimm.is_some() {
                    flags |= ST_ENABLED;
                }
                if s.inserting {
                    flags |= ST_INSERT;
                }
                if s.removing {
                    flags |= ST_REMOVE;
                }
                u32::from(flags)
            }
            _ => u32::MAX,
        }
    }

    fn control(&mut self, value: u32) {
        let selector = self.regs.selector;
        let Some(s) = self.selected() else {
            return;
        };
        // One action per write, in QEMU's order of precedence.
        if value & u32::from(ST_INSERT) != 0 {
            s.inserting = false;
        } else if value & u32::from(ST_REMOVE) != 0 {
            s.removing = false;
        } else if value & u32::from(ST_EJECT) != 0 && s.dimm.is_some() {
            s.dimm = None;
            s.inserting = false;
            s.removing = false;
            self.ejected.push(selector);
            self.events.send(VmEvent::MemoryEjected);
        }
    }
}

impl BusDevice for MemoryHotplug {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = self.register(offset).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = value.get(i).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 4];
        for (b, d) in bytes.iter_mut().zip(data) {
            *b = *d;
        }
        let value = u32::from_le_bytes(bytes);
        if self.regs.slots.is_empty() {
            return;
        }
        if offset == SELECTOR {
            self.regs.selector = value;
            return;
        }
        let selector = self.regs.selector;
        let Some(s) = self.selected() else {
            return;
        };
        match offset {
            OST_EVENT => s.ost.source = value,
            OST_STATUS => {
                s.ost.status = value;
                let ost = s.ost;
                self.events.send(VmEvent::AcpiOst {
                    slot: ipc::AcpiSlot::Dimm(selector),
                    ost,
                });
            }
            STATUS_OFFSET => self.control(value),
            _ => {}
        }
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        Some(state::encode(&self.regs))
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let regs: Registers = state::decode("ACPI memory hotplug", bytes)?;
        if regs.slots.len() != self.regs.slots.len() {
            return Err(format!(
                "ACPI memory hotplug: {} memory slots on the source, {} here",
                regs.slots.len(),
                self.regs.slots.len()
            ));
        }
        // The DIMMs' memory came as this VM's own (launched with the same DIMMs): each
        // slot must hold here what it held there.
        for (slot, (there, here)) in regs.slots.iter().zip(&self.regs.slots).enumerate() {
            if there.dimm != here.dimm {
                let show = |d: Option<DimmRange>| match d {
                    Some(d) => format!("a DIMM at {:#x} of {:#x} bytes", d.addr, d.size),
                    None => "none".to_string(),
                };
                return Err(format!(
                    "ACPI memory hotplug: memory slot {slot} holds {} on the source, {} here",
                    show(there.dimm),
                    show(here.dimm)
                ));
            }
        }
        self.regs = regs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::gpe::Gpe0;
    use crate::devices::sci::RecordedLine;

    const GB: u64 = 1 << 30;

    struct Block {
        mhp: MemoryHotplug,
        gpe: SharedGpe,
        events: std::sync::mpsc::Receiver<VmEvent>,
    }

    fn block(slots: u32) -> Block {
        let gpe = Arc::new(Mutex::new(Gpe0::new(Box::new(RecordedLine::default()))));
        let (tx, events) = EventSender::channel();
        Block {
            mhp: MemoryHotplug::new(slots, gpe.clone(), tx),
            gpe,
            events,
        }
    }

    impl Block {
        fn read(&mut self, offset: u64, len: usize) -> u64 {
            let mut b = vec![0u8; len];
            self.mhp.read(offset, &mut b);
            b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x))
        }

        fn write(&mut self, offset: u64, value: u32, len: usize) {
            self.mhp.write(offset, &value.to_le_bytes()[..len]);
        }

        fn flags(&mut self, slot: u32) -> u8 {
            self.write(SELECTOR, slot, 4);
            self.read(STATUS_OFFSET, 1) as u8
        }

        fn gpe_status(&self) -> u8 {
            let mut b = [0u8; 1];
            self.gpe.lock().read(0, &mut b);
            b[0]
        }

        fn sent(&self) -> Vec<String> {
            self.events.try_iter().map(|e| format!("{e:?}")).collect()
        }
    }

    #[test]
    fn a_plugged_dimm_reads_as_qemu_describes_it() {
        let mut b = block(4);
        let dimm = DimmRange {
            addr: 16 * GB + 0x20_0000,
            size: 5 * GB,
        };
        b.mhp.plug(2, dimm, true).unwrap();
        assert_eq!(b.gpe_status(), 1 << gpe::MEMORY_HOTPLUG, "GPE 3 raised");
        assert_eq!(b.flags(2), ST_ENABLED | ST_INSERT);
        assert_eq!(b.read(ADDR_LO, 4), 0x20_0000);
        assert_eq!(b.read(ADDR_HI, 4), 4);
        assert_eq!(b.read(SIZE_LO, 4), GB);
        assert_eq!(b.read(SIZE_HI, 4), 1);
        assert_eq!(b.read(PROXIMITY, 4), 0);
        // A narrower read gives the register's low bytes; an address between registers
        // reads all ones.
        assert_eq!(b.read(ADDR_LO, 2), 0);
        assert_eq!(b.read(ADDR_LO, 1), 0);
        assert_eq!(b.read(ADDR_HI, 1), 4);
        assert_eq!(b.read(0x1, 1), 0xff);
        assert_eq!(b.read(0x15, 1), 0xff);
        assert_eq!(b.read(STATUS_OFFSET, 4), u64::from(ST_ENABLED | ST_INSERT));
        // The other slots are empty.
        assert_eq!(b.flags(0), 0);
        assert_eq!(b.read(SIZE_HI, 4), 0);
        // Out of range: reads give 0 (even the gaps), writes other than the selector
        // do nothing.
        b.write(SELECTOR, 4, 4);
        assert_eq!(b.read(0x1, 1), 0);
        assert_eq!(b.read(STATUS_OFFSET, 1), 0);
        b.write(OST_STATUS, 7, 4);
        assert!(b.sent().is_empty());
        // A DIMM in a busy slot, or a slot beyond the last, is refused.
        assert_eq!(b.mhp.plug(2, dimm, true), Err(MemorySlotError::Busy(2)));
        assert_eq!(
            b.mhp.plug(4, dimm, true),
            Err(MemorySlotError::NoSlot(4, 4))
        );
    }

    #[test]
    fn the_guest_clears_events_reports_and_ejects() {
        let mut b = block(2);
        let dimm = DimmRange {
            addr: 4 * GB,
            size: 128 << 20,
        };
        b.mhp.plug(1, dimm, true).unwrap();
        b.write(SELECTOR, 1, 4);
        // What MSCN's "MINS = One" writes through a WriteAsZeros byte field.
        b.write(STATUS_OFFSET, u32::from(ST_INSERT), 1);
        assert_eq!(b.flags(1), ST_ENABLED);
        // _OST: the status write reports both.
        b.write(OST_EVENT, 1, 4);
        assert!(b.sent().is_empty(), "the event alone reports nothing");
        b.write(OST_STATUS, 0, 4);
        assert_eq!(
            b.sent(),
            ["AcpiOst { slot: Dimm(1), ost: SlotOst { source: 1, status: 0 } }"]
        );
        assert_eq!(
            b.mhp.ospm_status(),
            [
                SlotStatus {
                    source: 0,
                    status: 0
                },
                SlotStatus {
                    source: 1,
                    status: 0
                }
            ]
        );
        // device_del: a remove event; asked twice, still one event to clear.
        b.mhp.request_unplug(1).unwrap();
        b.mhp.request_unplug(1).unwrap();
        assert_eq!(b.mhp.request_unplug(0), Err(MemorySlotError::Empty(0)));
        assert_eq!(b.flags(1), ST_ENABLED | ST_REMOVE);
        // Clearing the insert event (not set) takes precedence over the eject bit.
        b.write(STATUS_OFFSET, u32::from(ST_INSERT | ST_EJECT), 1);
        assert_eq!(b.flags(1), ST_ENABLED | ST_REMOVE);
        b.write(STATUS_OFFSET, u32::from(ST_REMOVE), 1);
        assert_eq!(b.flags(1), ST_ENABLED);
        assert!(b.mhp.take_ejected().is_empty());
        b.write(STATUS_OFFSET, u32::from(ST_EJECT), 1);
        assert_eq!(b.flags(1), 0);
        assert_eq!(b.sent(), ["MemoryEjected"]);
        // The slot stays taken until the VM let go of the memory.
        assert_eq!(b.mhp.check_free(1), Err(MemorySlotError::Busy(1)));
        assert_eq!(b.mhp.take_ejected(), [1]);
        assert_eq!(b.mhp.check_free(1), Ok(()));
        // An eject of an empty slot does nothing; the _OST stays with the slot.
        b.write(STATUS_OFFSET, u32::from(ST_EJECT), 1);
        assert!(b.mhp.take_ejected().is_empty());
        assert_eq!(b.mhp.ospm_status()[1].source, 1);
    }

    #[test]
    fn no_slots_no_registers_and_state_round_trips() {
        let mut b = block(0);
        b.write(SELECTOR, 0, 4);
        b.write(STATUS_OFFSET, 0xff, 1);
        assert_eq!(b.read(STATUS_OFFSET, 1), 0);
        let mut b = block(3);
        b.write(SELECTOR, 2, 4);
        b.write(OST_EVENT, 3, 4);
        let saved = b.mhp.save_state().unwrap();
        let mut c = block(3);
        c.mhp.restore_state(&saved).unwrap();
        assert_eq!(c.read(STATUS_OFFSET, 1), 0);
        assert_eq!(c.mhp.ospm_status()[2].source, 3);
        let e = block(4).mhp.restore_state(&saved).unwrap_err();
        assert_eq!(
            e,
            "ACPI memory hotplug: 3 memory slots on the source, 4 here"
        );
        let dimm = DimmRange {
            addr: 4 * GB,
            size: 1 << 21,
        };
        b.mhp.plug(0, dimm, true).unwrap();
        let with_dimm = b.mhp.save_state().unwrap();
        // A DIMM's slot state goes only where the same DIMM is.
        assert_eq!(
            c.mhp.restore_state(&with_dimm).unwrap_err(),
            "ACPI memory hotplug: memory slot 0 holds a DIMM at 0x100000000 of 0x200000 \
             bytes on the source, none here"
        );
        c.mhp
            .plug(
                0,
                DimmRange {
                    addr: 5 * GB,
                    ..dimm
                },
                false,
            )
            .unwrap();
        assert_eq!(
            c.mhp.restore_state(&with_dimm).unwrap_err(),
            "ACPI memory hotplug: memory slot 0 holds a DIMM at 0x100000000 of 0x200000 \
             bytes on the source, a DIMM at 0x140000000 of 0x200000 bytes here"
        );
        // Launched with it (no event), the slot takes the source's state: the guest
        // had not yet cleared the insert event there.
        let mut d = block(3);
        d.mhp.plug(0, dimm, false).unwrap();
        assert_eq!(d.flags(0), ST_ENABLED);
        d.mhp.restore_state(&with_dimm).unwrap();
        assert_eq!(d.flags(0), ST_ENABLED | ST_INSERT);
        assert_eq!(d.gpe_status(), 0, "a launch's DIMM raises nothing");
        assert!(c.mhp.restore_state(&saved[..2]).is_err());
    }
}
