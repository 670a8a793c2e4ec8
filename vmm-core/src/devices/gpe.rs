//! The ACPI GPE0 block: 16 general-purpose event status bits, then their 16 enable bits,
//! on I/O ports (FADT GPE0_BLK) as on QEMU's pc machine. A device raises an event by
//! setting its status bit; the OS runs the DSDT's \_GPE._Exx method for it and clears
//! the bit by writing 1 to it. The SCI is held high while any event is both raised and
//! enabled. Bit 1 is PCI hotplug, bit 2 CPU hotplug, as on QEMU.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::bus::BusDevice;
use super::sci::EventRegisters;
use super::state;
use super::IrqLine;

/// GPE bits this machine raises.
pub const PCI_HOTPLUG: u8 = 1;
pub const CPU_HOTPLUG: u8 = 2;
pub const MEMORY_HOTPLUG: u8 = 3;

pub struct Gpe0 {
    regs: EventRegisters,
}

pub type SharedGpe = Arc<Mutex<Gpe0>>;

impl Gpe0 {
    pub fn new(sci: Box<dyn IrqLine>) -> Self {
        Gpe0 {
            regs: EventRegisters::new(sci),
        }
    }

    /// Raises event `bit` (0..16): its status bit is set, and the SCI goes high if the
    /// OS enabled it.
    pub fn raise(&mut self, bit: u8) {
        self.regs.sts |= 1u16.checked_shl(bit.into()).unwrap_or(0);
        self.update_sci();
    }

    fn level(&self) -> bool {
        self.regs.sts & self.regs.en != 0
    }

    fn update_sci(&mut self) {
        self.regs.drive(self.level());
    }
}

impl BusDevice for Gpe0 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.regs.read_byte(offset + i as u64);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.regs.write_byte(offset + i as u64, *b);
        }
        self.update_sci();
    }

    fn reset(&mut self) {
        self.regs.sts = 0;
        self.regs.en = 0;
        self.update_sci();
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        Some(state::encode(&GpeState {
            sts: self.regs.sts,
            en: self.regs.en,
        }))
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s: GpeState = state::decode("ACPI GPE0", bytes)?;
        self.regs.sts = s.sts;
        self.regs.en = s.en;
        // The SCI's level lives in the in-kernel interrupt controllers, restored with
        // them; the shared line only notes this block's part of it.
        let level = self.level();
        self.regs.restored(level);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct GpeState {
    sts: u16,
    en: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    type Line = crate::devices::sci::RecordedLine;

    // Register offsets inside the block (each register is GPE0_BLK_LEN / 2 bytes).
    const STS: u64 = 0;
    const EN: u64 = 2;

    fn gpe() -> (Gpe0, Line) {
        let line = Line::default();
        (Gpe0::new(Box::new(line.clone())), line)
    }

    fn sts(g: &mut Gpe0) -> u16 {
        let mut b = [0u8; 2];
        g.read(STS, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn a_raised_event_holds_the_sci_only_while_enabled_and_not_cleared() {
        let (mut g, line) = gpe();
        g.raise(PCI_HOTPLUG);
        assert_eq!(sts(&mut g), 1 << PCI_HOTPLUG);
        assert!(line.0.lock().is_empty(), "not enabled yet");
        // ACPICA writes the enable register a byte at a time.
        g.write(EN, &[1 << PCI_HOTPLUG]);
        assert_eq!(*line.0.lock(), vec![true]);
        // Writing 0 to a status bit leaves it, writing 1 clears it.
        g.write(STS, &[0]);
        assert_eq!(sts(&mut g), 1 << PCI_HOTPLUG);
        g.write(STS, &[1 << PCI_HOTPLUG]);
        assert_eq!(sts(&mut g), 0);
        assert_eq!(*line.0.lock(), vec![true, false]);
        // Disabling with the status still set lowers the line too.
        g.raise(PCI_HOTPLUG);
        g.write(EN, &[0]);
        assert_eq!(*line.0.lock(), vec![true, false, true, false]);
        let mut en = [0xffu8; 2];
        g.read(EN, &mut en);
        assert_eq!(en, [0, 0]);
    }

    #[test]
    fn high_byte_events_and_word_accesses() {
        let (mut g, line) = gpe();
        g.write(EN, &0x8000u16.to_le_bytes());
        g.raise(15);
        assert_eq!(*line.0.lock(), vec![true]);
        g.write(STS + 1, &[0x80]);
        assert_eq!(sts(&mut g), 0);
        assert_eq!(*line.0.lock(), vec![true, false]);
        // An event number past the block's 16 raises nothing.
        g.raise(16);
        assert_eq!(sts(&mut g), 0);
    }

    #[test]
    fn state_round_trips_and_reset_clears() {
        let (mut g, _line) = gpe();
        g.write(EN, &[1 << PCI_HOTPLUG]);
        g.raise(PCI_HOTPLUG);
        let saved = g.save_state().unwrap();
        // Restored on an SCI shared with another source (the PM block's).
        let line = Line::default();
        let shared = crate::devices::sci::SharedLine::new(Box::new(line.clone()));
        let mut h = Gpe0::new(shared.source());
        let pm = shared.source();
        h.restore_state(&saved).unwrap();
        assert_eq!(sts(&mut h), 1 << PCI_HOTPLUG);
        pm.set_level(true);
        pm.set_level(false);
        assert!(
            line.0.lock().is_empty(),
            "a restore drives nothing, and GPE 1 holds it"
        );
        // The restored level is known: clearing the status lowers the line.
        h.write(STS, &[1 << PCI_HOTPLUG]);
        assert_eq!(*line.0.lock(), vec![false]);
        assert!(h.restore_state(&saved[..1]).is_err());
        h.raise(PCI_HOTPLUG);
        h.reset();
        assert_eq!(sts(&mut h), 0);
    }
}
