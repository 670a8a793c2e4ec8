//! ACPI CPU hotplug with QEMU's "modern" register interface (QEMU 7.2's hw/acpi/cpu.c and
//! docs/specs/acpi_cpu_hotplug.txt, as its pc and q35 machines have it), so that the DSDT's
//! methods (boot/acpi.rs: \_SB.CPUS, \_GPE._E02) and Linux's ACPI processor driver work here
//! as they do there. A 12-byte block on I/O ports (`ports::CPU_HOTPLUG`, 0xaf00 as on pc);
//! accesses of 1 to 4 bytes, each taken as an access to the register at its first byte
//! (QEMU's dispatch by address):
//!
//! | offset | read | write |
//! |--------|------|-------|
//! | 0x0 (dword) | command data 2: the upper half of the APIC ID after command 3, else 0 | CPU selector |
//! | 0x4 (byte) | flags of the selected CPU: bit 0 present, 1 insert event, 2 remove event, 4 eject asked of firmware | bit 1 clears the insert event, else bit 2 the remove event; 3 (eject) and 4 are not acted on: vCPUs are not removed here |
//! | 0x5 (byte) | 0 | command: 0 selects the next CPU with an event (from the selected one, wrapping; none: the selector stays), 1 / 2 make command data writes the OST event / status, 3 makes command data read the APIC ID |
//! | 0x8 (dword) | command data: the selector after command 0, the APIC ID after command 3, else 0 | the OST event or status after command 1 or 2 (the status write reports both: VmEvent::AcpiOst, QMP's ACPI_DEVICE_OST) |
//!
//! With the selector out of range reads give 0 and writes other than the selector are
//! ignored. Adding a vCPU sets its present bit and insert event and raises GPE 2. On QEMU's
//! pc the block starts in a legacy mode (a bitmap of present CPUs) that the AML leaves by
//! writing 0 to the selector; here it is modern from the start, and that first write only
//! noted: until it, as in QEMU, no _OST is taken (QEMU has no such register then) and
//! query-acpi-ospm-status lists no CPU. A reset leaves it all, as QEMU's does: the added
//! vCPUs stay, enabled in the MADT from then on.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::bus::BusDevice;
use super::gpe::{self, SharedGpe};
use super::state;
use crate::events::{EventSender, VmEvent};

const SELECTOR: u64 = 0x0;
const DATA2: u64 = 0x0;
const FLAGS: u64 = 0x4;
const COMMAND: u64 = 0x5;
const DATA: u64 = 0x8;

const FLAG_PRESENT: u8 = 1 << 0;
const FLAG_INSERT: u8 = 1 << 1;
const FLAG_REMOVE: u8 = 1 << 2;
const FLAG_EJECT: u8 = 1 << 3;
const FLAG_FW_REMOVE: u8 = 1 << 4;

const CMD_NEXT_WITH_EVENT: u8 = 0;
const CMD_OST_EVENT: u8 = 1;
const CMD_OST_STATUS: u8 = 2;
const CMD_GET_APIC_ID: u8 = 3;
/// Commands past this are ignored (QEMU's CPHP_CMD_MAX).
const CMD_MAX: u8 = 4;

/// One possible vCPU as the block sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Slot {
    present: bool,
    inserting: bool,
    removing: bool,
    /// What the guest's _OST last said.
    ost: ipc::SlotOst,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Registers {
    slots: Vec<Slot>,
    selector: u32,
    command: u8,
    /// The guest wrote 0 to the selector (QEMU leaves its legacy mode then).
    modern: bool,
}

pub struct CpuHotplug {
    regs: Registers,
    gpe: Option<SharedGpe>,
    events: EventSender,
}

pub type SharedCpuHotplug = Arc<Mutex<CpuHotplug>>;

impl CpuHotplug {
    /// The block for `max` possible vCPUs, `present` of them there; insert events raise
    /// `gpe`, _OST reports go to `events`.
    pub fn new(
        max: u32,
        present: impl IntoIterator<Item = u32>,
        gpe: Option<SharedGpe>,
        events: EventSender,
    ) -> CpuHotplug {
        let mut slots = vec![Slot::default(); max as usize];
        for index in present {
            if let Some(slot) = slots.get_mut(index as usize) {
                slot.present = true;
            }
        }
        CpuHotplug {
            regs: Registers {
                slots,
                selector: 0,
                command: 0,
                modern: false,
            },
            gpe,
            events,
        }
    }

    /// vCPU `index` is there (not told to the guest: `insert` does that).
    pub fn set_present(&mut self, index: u32) {
        if let Some(slot) = self.regs.slots.get_mut(index as usize) {
            slot.present = true;
        }
    }

    /// vCPU `index` is not there after all (its thread never started).
    pub fn set_absent(&mut self, index: u32) {
        if let Some(slot) = self.regs.slots.get_mut(index as usize) {
            *slot = Slot::default();
        }
    }

    /// vCPU `index` was added: present, with an insert event, and GPE 2 raised. False if
    /// there is no such possible vCPU.
    pub fn insert(&mut self, index: u32) -> bool {
        let Some(slot) = self.regs.slots.get_mut(index as usize) else {
            return false;
        };
        slot.present = true;
        slot.inserting = true;
        if let Some(gpe) = &self.gpe {
            gpe.lock().raise(gpe::CPU_HOTPLUG);
        }
        true
    }

    /// What the guest's _OST said, per possible vCPU by index (QEMU lists them only once
    /// the guest left the legacy mode).
    pub fn ospm_status(&self) -> Vec<ipc::SlotOst> {
        if !self.regs.modern {
            return Vec::new();
        }
        self.regs.slots.iter().map(|s| s.ost).collect()
    }

    fn selected(&mut self) -> Option<&mut Slot> {
        self.regs.slots.get_mut(self.regs.selector as usize)
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let (command, selector) = (self.regs.command, self.regs.selector);
        let Some(slot) = self.selected() else {
            return 0;
        };
        match offset {
            FLAGS => u32::from(
                (if slot.present { FLAG_PRESENT } else { 0 })
                    | (if slot.inserting { FLAG_INSERT } else { 0 })
                    | (if slot.removing { FLAG_REMOVE } else { 0 }),
            ),
            DATA => match command {
                CMD_NEXT_WITH_EVENT => selector,
                // The APIC ID is the index.
                CMD_GET_APIC_ID => selector,
                _ => 0,
            },
            // The upper half of a 32-bit APIC ID (and of the selector's) is 0.
            DATA2 => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        if offset == SELECTOR {
            self.regs.selector = value;
            self.regs.modern |= value == 0;
            return;
        }
        if self.selected().is_none() {
            return;
        }
        match offset {
            FLAGS => {
                let flags = value as u8;
                let Some(slot) = self.selected() else { return };
                // One action per write, in QEMU's order; an eject (bits 3 and 4) would take
                // the vCPU away: not done here.
                if flags & FLAG_INSERT != 0 {
                    slot.inserting = false;
                } else if flags & FLAG_REMOVE != 0 {
                    slot.removing = false;
                } else if flags & (FLAG_EJECT | FLAG_FW_REMOVE) != 0 {
                    log::warn!(
                        "the guest asked to eject vCPU {}: vCPUs are not removed",
                        self.regs.selector
                    );
                }
            }
            COMMAND => {
                let command = value as u8;
                if command >= CMD_MAX {
                    return;
                }
                self.regs.command = command;
                if command == CMD_NEXT_WITH_EVENT {
                    self.select_next_with_event();
                }
            }
            // QEMU's legacy block has no _OST register.
            DATA if self.regs.modern => {
                let (command, selector) = (self.regs.command, self.regs.selector);
                let Some(slot) = self.selected() else { return };
                match command {
                    CMD_OST_EVENT => slot.ost.source = value,
                    CMD_OST_STATUS => {
                        slot.ost.status = value;
                        let ost = slot.ost;
                        self.events.send(VmEvent::AcpiOst {
                            slot: ipc::AcpiSlot::Cpu(selector),
                            ost,
                        });
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// From the selected vCPU on, wrapping, the first with an event; none: the selector
    /// stays.
    fn select_next_with_event(&mut self) {
        let count = self.regs.slots.len();
        let start = self.regs.selector as usize;
        let found = (0..count).map(|i| (start + i) % count).find(|&i| {
            let s = &self.regs.slots[i];
            s.inserting || s.removing
        });
        if let Some(i) = found {
            self.regs.selector = i as u32;
        }
    }
}

impl BusDevice for CpuHotplug {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match data.len() {
            1..=4 => self.read_register(offset),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if !(1..=4).contains(&data.len()) {
            return;
        }
        let mut bytes = [0u8; 4];
        bytes[..data.len()].copy_from_slice(data);
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        Some(state::encode(&self.regs))
    }

    /// The source's registers; its possible and present vCPUs must be this VM's (the
    /// snapshot checked the vCPUs already; this is the block's own word on it).
    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let regs: Registers = state::decode("ACPI CPU hotplug", bytes)?;
        if regs.slots.len() != self.regs.slots.len() {
            return Err(format!(
                "the source has {} possible vCPUs, this VM {}",
                regs.slots.len(),
                self.regs.slots.len()
            ));
        }
        let present = |r: &Registers| r.slots.iter().map(|s| s.present).collect::<Vec<_>>();
        if present(&regs) != present(&self.regs) {
            return Err("the source has other vCPUs present than this VM".into());
        }
        self.regs = regs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::gpe::Gpe0;

    type Line = crate::devices::sci::RecordedLine;

    fn block(max: u32, present: &[u32]) -> (CpuHotplug, SharedGpe, Line) {
        let line = Line::default();
        let gpe = Arc::new(Mutex::new(Gpe0::new(Box::new(line.clone()))));
        // GPE 2 enabled, as the guest does.
        gpe.lock().write(2, &[1 << gpe::CPU_HOTPLUG]);
        let events = EventSender::channel().0;
        let b = CpuHotplug::new(max, present.iter().copied(), Some(gpe.clone()), events);
        (b, gpe, line)
    }

    fn rd(b: &mut CpuHotplug, offset: u64, len: usize) -> u32 {
        let mut data = vec![0u8; len];
        b.read(offset, &mut data);
        data.resize(4, 0);
        u32::from_le_bytes(data.try_into().unwrap())
    }

    fn wr(b: &mut CpuHotplug, offset: u64, value: u32, len: usize) {
        b.write(offset, &value.to_le_bytes()[..len]);
    }

    /// Command 0, then (selector, flags), as the guest's scan reads them.
    fn next(b: &mut CpuHotplug) -> (u32, u32) {
        wr(b, COMMAND, 0, 1);
        (rd(b, DATA, 4), rd(b, FLAGS, 1))
    }

    #[test]
    fn an_added_cpu_is_found_by_its_event_and_cleared() {
        let (mut b, gpe, line) = block(4, &[0]);
        wr(&mut b, SELECTOR, 0, 4);
        assert_eq!(rd(&mut b, FLAGS, 1), 1, "CPU 0 present, no event");
        // No event anywhere: the selector stays where it was.
        wr(&mut b, SELECTOR, 2, 4);
        assert_eq!(next(&mut b), (2, 0));
        assert!(line.0.lock().is_empty());
        assert!(b.insert(3));
        assert_eq!(*line.0.lock(), vec![true], "GPE 2 raised the SCI");
        let mut sts = [0u8];
        gpe.lock().read(0, &mut sts);
        assert_eq!(sts[0], 1 << gpe::CPU_HOTPLUG);
        assert_eq!(next(&mut b), (3, 0b011), "present and inserting");
        wr(&mut b, COMMAND, 3, 1);
        assert_eq!(rd(&mut b, DATA, 4), 3, "its APIC ID");
        assert_eq!(rd(&mut b, DATA2, 4), 0);
        // Writing the insert bit clears the event; a 0 there changes nothing.
        wr(&mut b, FLAGS, 0, 1);
        assert_eq!(rd(&mut b, FLAGS, 1), 0b011);
        wr(&mut b, FLAGS, FLAG_INSERT.into(), 1);
        assert_eq!(rd(&mut b, FLAGS, 1), 0b001);
        // Nothing left: command 0 keeps the selector, whose flags show no event.
        assert_eq!(next(&mut b), (3, 0b001));
        // Beyond the possible CPUs.
        assert!(!b.insert(4));
    }

    #[test]
    fn the_scan_wraps_and_visits_each_cpu_with_an_event() {
        let (mut b, _gpe, _line) = block(4, &[0]);
        b.insert(1);
        b.insert(3);
        wr(&mut b, SELECTOR, 2, 4);
        assert_eq!(next(&mut b).0, 3, "from the selected one on");
        wr(&mut b, FLAGS, FLAG_INSERT.into(), 1);
        assert_eq!(next(&mut b).0, 1, "wrapping");
        wr(&mut b, FLAGS, FLAG_INSERT.into(), 1);
        assert_eq!(next(&mut b), (1, 0b001));
    }

    #[test]
    fn accesses_go_by_their_first_byte_and_an_out_of_range_selector_mutes_the_rest() {
        let (mut b, _gpe, _line) = block(2, &[0]);
        b.insert(1);
        // A dword write at +4 is a flags write: the command byte in it is not taken.
        wr(&mut b, SELECTOR, 1, 4);
        wr(&mut b, COMMAND, 3, 1);
        wr(&mut b, FLAGS, 0x0000_0000, 4);
        assert_eq!(rd(&mut b, DATA, 4), 1, "still command 3");
        // Reads of the command byte and of the reserved bytes are 0.
        assert_eq!(rd(&mut b, COMMAND, 1), 0);
        assert_eq!(rd(&mut b, 6, 2), 0);
        // A word read of the data register gives its low half.
        assert_eq!(rd(&mut b, DATA, 2), 1);
        // Commands past 3 are ignored.
        wr(&mut b, COMMAND, 9, 1);
        assert_eq!(rd(&mut b, DATA, 4), 1);
        wr(&mut b, SELECTOR, 7, 4);
        assert_eq!(rd(&mut b, FLAGS, 1), 0);
        assert_eq!(rd(&mut b, DATA, 4), 0);
        wr(&mut b, COMMAND, 0, 1);
        wr(&mut b, FLAGS, FLAG_INSERT.into(), 1);
        wr(&mut b, SELECTOR, 1, 4);
        assert_eq!(rd(&mut b, FLAGS, 1), 0b011, "the event is still there");
        assert_eq!(rd(&mut b, DATA, 4), 1, "command 3 still in force");
        // Eight-byte accesses are not taken.
        b.write(SELECTOR, &[0; 8]);
        assert_eq!(rd(&mut b, DATA, 4), 1);
    }

    /// Commands 1 and 2 with the data register, as QEMU's COST method writes _OST.
    fn ost(b: &mut CpuHotplug, selector: u32, source: u32, status: u32) {
        wr(b, SELECTOR, selector, 4);
        wr(b, COMMAND, CMD_OST_EVENT.into(), 1);
        wr(b, DATA, source, 4);
        wr(b, COMMAND, CMD_OST_STATUS.into(), 1);
        wr(b, DATA, status, 4);
    }

    #[test]
    fn ost_is_taken_and_reported_once_the_guest_left_the_legacy_mode() {
        let (events, sent) = EventSender::channel();
        let mut b = CpuHotplug::new(3, [0, 1], None, events);
        let sent = || {
            sent.try_iter()
                .map(|e| format!("{e:?}"))
                .collect::<Vec<_>>()
        };
        assert!(
            b.ospm_status().is_empty(),
            "QEMU lists none before the switch"
        );
        // QEMU's legacy block has no _OST register: nothing is kept or reported.
        ost(&mut b, 1, 1, 0x80);
        assert!(b.ospm_status().is_empty());
        assert!(sent().is_empty());
        wr(&mut b, SELECTOR, 0, 4);
        let none = ipc::SlotOst {
            source: 0,
            status: 0,
        };
        assert_eq!(b.ospm_status(), vec![none; 3], "every possible vCPU");
        ost(&mut b, 2, 1, 0x80);
        let reported = ipc::SlotOst {
            source: 1,
            status: 0x80,
        };
        assert_eq!(b.ospm_status(), vec![none, none, reported]);
        // The status write reports both (the event write alone reports nothing).
        assert_eq!(
            sent(),
            ["AcpiOst { slot: Cpu(2), ost: SlotOst { source: 1, status: 128 } }"]
        );
        wr(&mut b, COMMAND, CMD_OST_EVENT.into(), 1);
        wr(&mut b, DATA, 3, 4);
        assert!(sent().is_empty());
        assert_eq!(b.ospm_status()[2].source, 3);
        // Out of range: ignored.
        ost(&mut b, 3, 1, 0);
        assert!(sent().is_empty());
        assert_eq!(b.ospm_status().len(), 3);
        // The state keeps the mode and the reports.
        let mut restored = CpuHotplug::new(3, [0, 1], None, EventSender::channel().0);
        restored.restore_state(&b.save_state().unwrap()).unwrap();
        assert_eq!(restored.ospm_status(), b.ospm_status());
        // An eject is not acted on: the vCPU stays.
        wr(&mut b, SELECTOR, 1, 4);
        wr(&mut b, FLAGS, FLAG_EJECT.into(), 1);
        assert_eq!(rd(&mut b, FLAGS, 1), 0b001);
    }

    #[test]
    fn state_round_trips_and_must_match_the_vcpus() {
        let (mut b, _gpe, _line) = block(4, &[0]);
        b.insert(2);
        wr(&mut b, SELECTOR, 2, 4);
        wr(&mut b, COMMAND, 3, 1);
        let saved = b.save_state().unwrap();
        let mut same = CpuHotplug::new(4, [0, 2], None, EventSender::channel().0);
        same.restore_state(&saved).unwrap();
        assert_eq!(rd(&mut same, FLAGS, 1), 0b011);
        assert_eq!(rd(&mut same, DATA, 4), 2);
        let mut fewer = CpuHotplug::new(4, [0], None, EventSender::channel().0);
        assert_eq!(
            fewer.restore_state(&saved).unwrap_err(),
            "the source has other vCPUs present than this VM"
        );
        let mut smaller = CpuHotplug::new(3, [0, 2], None, EventSender::channel().0);
        assert_eq!(
            smaller.restore_state(&saved).unwrap_err(),
            "the source has 4 possible vCPUs, this VM 3"
        );
        assert!(same.restore_state(&saved[..2]).is_err());
    }
}
