//! ACPI PCI hotplug on bus 0 with QEMU's register interface (hw/acpi/pcihp.c as QEMU
//! 7.2's pc machine has it), so that the DSDT's slot methods (boot/acpi.rs) and Linux's
//! acpiphp work here as they do there. Registers, 32 bits each, 32-bit accesses only
//! (others read all ones and write nothing, as QEMU refuses them):
//!
//! | offset | name   | what |
//! |--------|--------|------|
//! | 0x00   | PCIU   | slots whose function was added while the guest ran; a read clears it |
//! | 0x04   | PCID   | slots whose function the VMM asked the guest to release; an eject clears the slot's bit |
//! | 0x08   | B0EJ   | written: ejects the slot of the lowest bit set; reads 0 |
//! | 0x0c   | PCIRMV | slots whose function can go: all but the host bridge's |
//! | 0x10   | PCSEL  | the bus the others are about: only bus 0 (selector 0) has slots here |
//!
//! An add or a removal request raises GPE 1 (whose \_E01 reads PCIU and PCID and
//! notifies the slots). The guest ejects through B0EJ whether or not a removal was asked
//! for (acpiphp's own "power off" of a slot does that), as on QEMU; the function leaves
//! its slot, its BARs go back to the window, and it waits for its owner in a queue
//! (`take_ejected`), announced by `VmEvent::DeviceEjected`.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{slot_bit, Ejected, PciError, PciRoot, SharedFunction, Wiring, FIXED_SLOTS, SLOTS};
use crate::devices::bus::BusDevice;
use crate::devices::gpe::{self, SharedGpe};
use crate::devices::state;
use crate::events::{EventSender, VmEvent};
use crate::layout::ports;

const PCIU: u64 = 0x00;
const PCID: u64 = 0x04;
const B0EJ: u64 = 0x08;
const PCIRMV: u64 = 0x0c;
const PCSEL: u64 = 0x10;

/// Selectors QEMU keeps a bus status for; past them every register, PCSEL too, reads 0.
const SELECTORS: u32 = 256;

impl PciRoot {
    /// Gives the bus its hotplug controller's outlets: the GPE block it raises events
    /// in, and the control loop's channel, told when the guest ejects a function.
    pub fn connect_hotplug(&mut self, gpe: SharedGpe, events: EventSender) {
        self.hotplug.wiring = Some(Wiring { gpe, events });
    }

    /// Puts `function` in `slot` (or the first free one) while the guest runs, and tells
    /// the guest (PCIU, GPE 1). Its BARs come from `allocate_bar`; on an error they are
    /// the caller's to release. Returns the slot.
    pub fn hotplug(&mut self, function: SharedFunction, slot: Option<u8>) -> Result<u8, PciError> {
        if self.hotplug.wiring.is_none() {
            return Err(PciError::NoHotplug);
        }
        let slot = match slot {
            Some(s) => self.free_slot(s)?,
            None => (0..SLOTS)
                .find(|&s| FIXED_SLOTS & slot_bit(s) == 0 && self.slots[s].is_none())
                .ok_or(PciError::NoSlot)?,
        };
        self.slots[slot] = Some(function);
        self.hotplug.up |= slot_bit(slot);
        self.raise_hotplug_event();
        Ok(slot as u8)
    }

    /// Asks the guest to release the function in `slot` (PCID, GPE 1); it stays until
    /// the guest ejects it. Asking again raises the event again (a guest that missed it).
    pub fn request_unplug(&mut self, slot: u8) -> Result<(), PciError> {
        if self.hotplug.wiring.is_none() {
            return Err(PciError::NoHotplug);
        }
        let at = self.device_slot(slot)?;
        if self.slots[at].is_none() {
            return Err(PciError::EmptySlot(slot));
        }
        self.hotplug.down |= slot_bit(at);
        self.raise_hotplug_event();
        Ok(())
    }

    /// The functions the guest ejected since the last call, for their owners to finish.
    pub fn take_ejected(&mut self) -> Vec<Ejected> {
        std::mem::take(&mut self.hotplug.ejected)
    }

    fn raise_hotplug_event(&self) {
        if let Some(w) = &self.hotplug.wiring {
            w.gpe.lock().raise(gpe::PCI_HOTPLUG);
        }
    }

    /// B0EJ: the slot of the lowest bit written is done with (its PCIU and PCID bits
    /// clear), and its function leaves unless it is part of the machine.
    fn eject(&mut self, slots: u32) {
        if slots == 0 {
            return;
        }
        let slot = slots.trailing_zeros() as usize;
        let bit = slot_bit(slot);
        self.hotplug.up &= !bit;
        self.hotplug.down &= !bit;
        if FIXED_SLOTS & bit != 0 {
            return;
        }
        let Some(function) = self.slots[slot].take() else {
            return;
        };
        let bars: Vec<_> = {
            let f = function.lock();
            (0..6).filter_map(|i| f.config().assigned_bar(i)).collect()
        };
        for bar in bars {
            self.release_bar(bar);
        }
        self.hotplug.ejected.push(Ejected {
            slot: slot as u8,
            function,
        });
        if let Some(w) = &self.hotplug.wiring {
            w.events.send(VmEvent::DeviceEjected);
        }
    }

    fn hotplug_read(&mut self, reg: u64) -> u32 {
        let h = &mut self.hotplug;
        match (h.select, reg) {
            (s, _) if s >= SELECTORS => 0,
            (s, PCSEL) => s,
            // Other selectors name buses this machine does not have.
            (s, _) if s != 0 => 0,
            (_, PCIU) => std::mem::take(&mut h.up),
            (_, PCID) => h.down,
            (_, PCIRMV) => !FIXED_SLOTS,
            _ => 0,
        }
    }

    fn hotplug_write(&mut self, reg: u64, value: u32) {
        match reg {
            B0EJ if self.hotplug.select == 0 => self.eject(value),
            PCSEL => self.hotplug.select = value,
            _ => {}
        }
    }

    /// A VM reset finishes the removals the guest had not (QEMU does so too: the device
    /// must not come back with the next boot).
    fn reset_hotplug(&mut self) {
        while self.hotplug.down != 0 {
            self.eject(self.hotplug.down);
        }
        self.hotplug.select = 0;
    }
}

/// The register block on the port bus (at `ports::PCI_HOTPLUG`).
pub struct PciHotplugIo {
    root: Arc<Mutex<PciRoot>>,
}

impl PciHotplugIo {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciHotplugIo { root }
    }
}

/// The register an access is to, if it is a 32-bit access to a whole register.
fn register(offset: u64, len: usize) -> Option<u64> {
    (len == 4 && offset.is_multiple_of(4) && offset < u64::from(ports::PCI_HOTPLUG_LEN))
        .then_some(offset)
}

impl BusDevice for PciHotplugIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match register(offset, data.len()) {
            Some(reg) => {
                let value = self.root.lock().hotplug_read(reg);
                data.copy_from_slice(&value.to_le_bytes());
            }
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(reg), Ok(bytes)) = (register(offset, data.len()), data.try_into()) {
            self.root
                .lock()
                .hotplug_write(reg, u32::from_le_bytes(bytes));
        }
    }

    fn reset(&mut self) {
        self.root.lock().reset_hotplug();
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        let root = self.root.lock();
        Some(state::encode(&HotplugState {
            up: root.hotplug.up,
            down: root.hotplug.down,
            select: root.hotplug.select,
        }))
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: HotplugState = state::decode("PCI hotplug", bytes)?;
        let mut root = self.root.lock();
        root.hotplug.up = s.up;
        root.hotplug.down = s.down;
        root.hotplug.select = s.select;
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct HotplugState {
    up: u32,
    down: u32,
    select: u32,
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::Receiver;

    use super::*;
    use crate::devices::gpe::Gpe0;
    use crate::devices::pci::config::{Bar, Ids, PciConfig};
    use crate::devices::pci::PciFunction;
    use crate::devices::sci::SharedLine;
    use crate::devices::IrqLine;

    const GPE_STS: u64 = 0;
    const GPE_EN: u64 = 2;

    #[derive(Clone, Default)]
    struct Line(Arc<Mutex<Vec<bool>>>);
    impl IrqLine for Line {
        fn set_level(&self, high: bool) {
            self.0.lock().push(high);
        }
    }

    struct Function(PciConfig);
    impl PciFunction for Function {
        fn config(&self) -> &PciConfig {
            &self.0
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) {
            self.0.write(offset, data);
        }
        fn read_bar(&mut self, _: usize, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_bar(&mut self, _: usize, _: u64, _: &[u8]) {}
        fn save_state(&self) -> Vec<u8> {
            self.0.save()
        }
        fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
            self.0.restore(state)
        }
    }

    /// A function with one BAR of `size` from `root`'s window.
    fn function(root: &Arc<Mutex<PciRoot>>, size: u64) -> (SharedFunction, Bar) {
        let bar = root.lock().allocate_bar(size).unwrap();
        let mut config = PciConfig::new(&Ids {
            vendor: 0x1af4,
            device: 0x1042,
            subsystem_vendor: 0x1af4,
            subsystem: 2,
            revision: 1,
            class: 0x018000,
        });
        config.add_bar(0, bar);
        (Arc::new(Mutex::new(Function(config))), bar)
    }

    struct Machine {
        root: Arc<Mutex<PciRoot>>,
        io: PciHotplugIo,
        gpe: SharedGpe,
        sci: Line,
        events: Receiver<VmEvent>,
    }

    /// A bus with its controller, the GPE block on an SCI shared with a PM block that
    /// holds it low, and GPE 1 enabled (as ACPICA does once it sees \_E01).
    fn machine() -> Machine {
        let sci = Line::default();
        let shared = SharedLine::new(Box::new(sci.clone()));
        let _pm = shared.source();
        let gpe = Arc::new(Mutex::new(Gpe0::new(shared.source())));
        gpe.lock().write(GPE_EN, &[1 << gpe::PCI_HOTPLUG]);
        let (tx, events) = EventSender::channel();
        let root = Arc::new(Mutex::new(PciRoot::default()));
        root.lock().connect_hotplug(gpe.clone(), tx);
        let io = PciHotplugIo::new(root.clone());
        Machine {
            root,
            io,
            gpe,
            sci,
            events,
        }
    }

    impl Machine {
        fn read(&mut self, reg: u64) -> u32 {
            let mut b = [0u8; 4];
            self.io.read(reg, &mut b);
            u32::from_le_bytes(b)
        }

        fn write(&mut self, reg: u64, value: u32) {
            self.io.write(reg, &value.to_le_bytes());
        }

        fn gpe_status(&self) -> u16 {
            let mut b = [0u8; 2];
            self.gpe.lock().read(GPE_STS, &mut b);
            u16::from_le_bytes(b)
        }

        /// What the guest's \_E01 does first: clear the GPE's status.
        fn ack_gpe(&self) {
            self.gpe
                .lock()
                .write(GPE_STS, &(1u16 << gpe::PCI_HOTPLUG).to_le_bytes());
        }

        fn vendor(&self, slot: u8) -> u16 {
            let mut b = [0u8; 2];
            self.root.lock().config_read(0, slot, 0, 0, &mut b);
            u16::from_le_bytes(b)
        }
    }

    #[test]
    fn an_add_sets_its_up_bit_once_and_raises_gpe_1_on_the_sci() {
        let mut m = machine();
        let (f, _) = function(&m.root, 0x4000);
        let slot = m.root.lock().hotplug(f, None).unwrap();
        assert_eq!(slot, 1, "slot 0 is the host bridge's");
        assert_eq!(m.vendor(1), 0x1af4);
        assert_eq!(m.gpe_status(), 1 << gpe::PCI_HOTPLUG);
        assert_eq!(*m.sci.0.lock(), vec![true]);
        // QEMU's PCIU is cleared by the read that reports it.
        assert_eq!(m.read(PCIU), 1 << 1);
        assert_eq!(m.read(PCIU), 0);
        assert_eq!(m.read(PCID), 0);
        m.ack_gpe();
        assert_eq!(
            *m.sci.0.lock(),
            vec![true, false],
            "the SCI follows the status"
        );
        // A second add in a chosen slot.
        let (g, _) = function(&m.root, 0x4000);
        assert_eq!(m.root.lock().hotplug(g, Some(7)).unwrap(), 7);
        assert_eq!(m.read(PCIU), 1 << 7);
        assert_eq!(*m.sci.0.lock(), vec![true, false, true]);
    }

    #[test]
    fn a_removal_request_is_reported_until_the_guest_ejects_that_slot_only() {
        let mut m = machine();
        for slot in [3, 5] {
            let (f, _) = function(&m.root, 0x4000);
            m.root.lock().add_at_for_test(slot, f);
        }
        m.root.lock().request_unplug(3).unwrap();
        m.root.lock().request_unplug(5).unwrap();
        assert_eq!(m.gpe_status(), 1 << gpe::PCI_HOTPLUG);
        // PCID is not cleared by reading; the function stays until ejected.
        assert_eq!(m.read(PCID), (1 << 3) | (1 << 5));
        assert_eq!(m.read(PCID), (1 << 3) | (1 << 5));
        assert_eq!(m.vendor(3), 0x1af4);
        assert!(m.events.try_recv().is_err());
        // One eject per write: the lowest bit written.
        m.write(B0EJ, (1 << 3) | (1 << 5));
        assert_eq!(m.vendor(3), 0xffff);
        assert_eq!(m.vendor(5), 0x1af4);
        assert_eq!(m.read(PCID), 1 << 5);
        assert!(matches!(m.events.try_recv(), Ok(VmEvent::DeviceEjected)));
        let ejected = m.root.lock().take_ejected();
        assert_eq!(ejected.iter().map(|e| e.slot).collect::<Vec<_>>(), [3]);
        assert!(m.root.lock().take_ejected().is_empty());
        // B0EJ reads 0; writing 0 or an empty slot's bit ejects nothing.
        assert_eq!(m.read(B0EJ), 0);
        m.write(B0EJ, 0);
        m.write(B0EJ, 1 << 9);
        assert_eq!(m.vendor(5), 0x1af4);
        assert!(m.events.try_recv().is_err());
        m.write(B0EJ, 1 << 5);
        assert_eq!(m.vendor(5), 0xffff);
        assert_eq!(m.read(PCID), 0);
    }

    #[test]
    fn the_guest_may_eject_a_slot_nobody_asked_for_but_never_the_host_bridge() {
        let mut m = machine();
        let (f, _) = function(&m.root, 0x4000);
        m.root.lock().add_at_for_test(4, f);
        // QEMU ejects on the guest's word (acpiphp's "power off" of a slot).
        m.write(B0EJ, 1 << 4);
        assert_eq!(m.vendor(4), 0xffff);
        assert!(matches!(m.events.try_recv(), Ok(VmEvent::DeviceEjected)));
        m.write(B0EJ, 1 << 0);
        assert_eq!(m.vendor(0), 0x1b36, "the host bridge stays");
        let ejected = m.root.lock().take_ejected();
        assert_eq!(ejected.iter().map(|e| e.slot).collect::<Vec<_>>(), [4]);
        assert_eq!(m.read(PCIRMV), !1);
    }

    #[test]
    fn slots_are_checked() {
        let m = machine();
        let f = || function(&m.root, 0x1000).0;
        let (a, b, c, d) = (f(), f(), f(), f());
        let mut root = m.root.lock();
        assert!(matches!(
            root.hotplug(a.clone(), Some(0)),
            Err(PciError::NotHotpluggable(0))
        ));
        assert!(matches!(
            root.hotplug(a.clone(), Some(32)),
            Err(PciError::NoSuchSlot(32))
        ));
        root.hotplug(a, Some(2)).unwrap();
        assert!(matches!(
            root.hotplug(b, Some(2)),
            Err(PciError::SlotTaken(2))
        ));
        assert!(matches!(
            root.request_unplug(3),
            Err(PciError::EmptySlot(3))
        ));
        assert!(matches!(
            root.request_unplug(0),
            Err(PciError::NotHotpluggable(0))
        ));
        assert!(matches!(
            root.request_unplug(40),
            Err(PciError::NoSuchSlot(40))
        ));
        // Every other slot taken: nothing free.
        for slot in (1..32).filter(|&s| s != 2) {
            root.hotplug(c.clone(), Some(slot)).unwrap();
        }
        assert!(matches!(root.hotplug(c, None), Err(PciError::NoSlot)));
        // Without a controller, nothing hot-plugs.
        let mut bare = PciRoot::default();
        assert!(matches!(bare.hotplug(d, None), Err(PciError::NoHotplug)));
        assert!(matches!(bare.request_unplug(1), Err(PciError::NoHotplug)));
    }

    #[test]
    fn an_ejected_functions_bar_range_is_reused() {
        let mut m = machine();
        let (a, bar_a) = function(&m.root, 0x4000);
        let (b, bar_b) = function(&m.root, 0x4000);
        assert_ne!(bar_a.addr, bar_b.addr);
        m.root.lock().hotplug(a, Some(1)).unwrap();
        m.root.lock().hotplug(b, Some(2)).unwrap();
        // Memory decoding on, so the window routes to the BAR.
        let command = super::super::config::COMMAND_MEMORY.to_le_bytes();
        m.root.lock().config_write(0, 1, 0, 4, &command);
        assert!(m.root.lock().bar_at(bar_a.addr).is_some());
        m.write(B0EJ, 1 << 1);
        assert!(
            m.root.lock().bar_at(bar_a.addr).is_none(),
            "the BAR left the bus"
        );
        let (_, again) = function(&m.root, 0x4000);
        assert_eq!(again.addr, bar_a.addr);
        let (_, next) = function(&m.root, 0x4000);
        assert!(next.addr > bar_b.addr);
    }

    #[test]
    fn other_bus_selectors_see_nothing() {
        let mut m = machine();
        let (f, _) = function(&m.root, 0x4000);
        m.root.lock().hotplug(f, Some(6)).unwrap();
        m.root.lock().request_unplug(6).unwrap();
        m.write(PCSEL, 1);
        assert_eq!(m.read(PCSEL), 1);
        assert_eq!((m.read(PCIU), m.read(PCID), m.read(PCIRMV)), (0, 0, 0));
        m.write(B0EJ, 1 << 6);
        assert_eq!(m.vendor(6), 0x1af4, "bus 1 has no slot 6 to eject");
        m.write(PCSEL, 256);
        assert_eq!(m.read(PCSEL), 0, "QEMU keeps 256 buses at most");
        m.write(PCSEL, 0);
        assert_eq!((m.read(PCIU), m.read(PCID)), (1 << 6, 1 << 6));
    }

    #[test]
    fn only_whole_32_bit_accesses_reach_the_registers() {
        let mut m = machine();
        let (f, _) = function(&m.root, 0x4000);
        m.root.lock().hotplug(f, Some(2)).unwrap();
        let mut half = [0u8; 2];
        m.io.read(PCIU, &mut half);
        assert_eq!(half, [0xff, 0xff]);
        let mut unaligned = [0u8; 4];
        m.io.read(PCIU + 2, &mut unaligned);
        assert_eq!(unaligned, [0xff; 4]);
        assert_eq!(m.read(PCIU), 1 << 2, "the short reads cleared nothing");
        m.io.write(B0EJ, &[1 << 2]);
        assert_eq!(m.vendor(2), 0x1af4);
    }

    #[test]
    fn a_reset_finishes_pending_removals() {
        let mut m = machine();
        for slot in [1, 2] {
            let (f, _) = function(&m.root, 0x4000);
            m.root.lock().hotplug(f, Some(slot)).unwrap();
        }
        m.root.lock().request_unplug(2).unwrap();
        m.write(PCSEL, 3);
        m.io.reset();
        assert_eq!(m.vendor(1), 0x1af4);
        assert_eq!(m.vendor(2), 0xffff);
        assert_eq!(m.read(PCSEL), 0);
        assert_eq!(m.read(PCID), 0);
        let ejected = m.root.lock().take_ejected();
        assert_eq!(ejected.iter().map(|e| e.slot).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn state_round_trips_and_a_quiet_vm_saves_zeros() {
        let mut m = machine();
        let zeros = HotplugState {
            up: 0,
            down: 0,
            select: 0,
        };
        let quiet: HotplugState = state::decode("", &m.io.save_state().unwrap()).unwrap();
        assert_eq!(quiet, zeros);
        let (f, _) = function(&m.root, 0x4000);
        m.root.lock().hotplug(f, Some(3)).unwrap();
        m.root.lock().request_unplug(3).unwrap();
        let saved = m.io.save_state().unwrap();
        let mut other = machine();
        let (g, _) = function(&other.root, 0x4000);
        other.root.lock().add_at_for_test(3, g);
        other.io.restore_state(&saved).unwrap();
        assert_eq!((other.read(PCIU), other.read(PCID)), (1 << 3, 1 << 3));
        assert!(other.io.restore_state(&saved[1..]).is_err());
        assert_eq!(m.read(PCIU), 1 << 3);
    }

    impl PciRoot {
        /// A function present from boot, in a chosen slot.
        fn add_at_for_test(&mut self, slot: usize, function: SharedFunction) {
            assert!(self.slots[slot].is_none());
            self.slots[slot] = Some(function);
        }
    }
}
