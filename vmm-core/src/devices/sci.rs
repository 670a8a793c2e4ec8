//! The SCI as several devices drive it: the PM1 block and the GPE block each hold the
//! line high for their own events, and the line is high while any of them does. KVM's
//! KVM_IRQ_LINE keeps one level per GSI for all of userspace, so two devices setting it
//! directly would undo each other; this is the OR in front of it. Both blocks keep their
//! events in the same pair of registers (`EventRegisters`).

use std::sync::Arc;

use parking_lot::Mutex;

use super::IrqLine;

/// One level-triggered line shared by up to 32 sources.
pub struct SharedLine {
    state: Mutex<Held>,
}

struct Held {
    line: Box<dyn IrqLine>,
    /// Bit n: source n holds the line high.
    high: u32,
    sources: u32,
}

impl SharedLine {
    pub fn new(line: Box<dyn IrqLine>) -> Arc<SharedLine> {
        Arc::new(SharedLine {
            state: Mutex::new(Held {
                line,
                high: 0,
                sources: 0,
            }),
        })
    }

    /// A new source of the line (one per device), low.
    ///
    /// # Panics
    /// Past 32 sources: the machine has a fixed, small set of them.
    pub fn source(self: &Arc<Self>) -> Box<dyn IrqLine> {
        let mut s = self.state.lock();
        assert!(s.sources < 32, "the SCI has 32 sources at most");
        let bit = 1 << s.sources;
        s.sources += 1;
        Box::new(Source {
            shared: self.clone(),
            bit,
        })
    }
}

/// An ACPI event register pair (PM1's, GPE0's): 16 status bits, which a write of 1
/// clears, then 16 enable bits, byte-addressed (ACPICA writes them a byte at a time);
/// and the SCI the device holds for them, driven only when its level changes.
pub struct EventRegisters {
    pub sts: u16,
    pub en: u16,
    sci: Box<dyn IrqLine>,
    level: bool,
}

impl EventRegisters {
    pub fn new(sci: Box<dyn IrqLine>) -> Self {
        EventRegisters {
            sts: 0,
            en: 0,
            sci,
            level: false,
        }
    }

    /// Byte `offset` of status (0, 1) then enable (2, 3); 0 beyond.
    pub fn read_byte(&self, offset: u64) -> u8 {
        match offset {
            0..=1 => (self.sts >> (offset * 8)) as u8,
            2..=3 => (self.en >> ((offset - 2) * 8)) as u8,
            _ => 0,
        }
    }

    /// A write of byte `offset`, as `read_byte` lays them out.
    pub fn write_byte(&mut self, offset: u64, value: u8) {
        let shift = (offset & 1) * 8;
        let bits = u16::from(value) << shift;
        match offset {
            0..=1 => self.sts &= !bits,
            2..=3 => self.en = (self.en & !(0xff << shift)) | bits,
            _ => {}
        }
    }

    /// The device's SCI goes to `level` (nothing is driven if it is there already).
    pub fn drive(&mut self, level: bool) {
        if level != self.level {
            self.level = level;
            self.sci.set_level(level);
        }
    }

    /// After a restore: the SCI is at `level` already (the interrupt controllers' state
    /// carries it); noted, not driven.
    pub fn restored(&mut self, level: bool) {
        self.level = level;
        self.sci.restore_level(level);
    }
}

struct Source {
    shared: Arc<SharedLine>,
    bit: u32,
}

impl Source {
    /// Records this source's level; drives the line if `drive` and the OR changed.
    fn update(&self, high: bool, drive: bool) {
        // Driven under the lock, so that two sources' changes reach KVM in the order
        // they were decided.
        let mut s = self.shared.state.lock();
        let before = s.high != 0;
        if high {
            s.high |= self.bit;
        } else {
            s.high &= !self.bit;
        }
        let after = s.high != 0;
        if drive && before != after {
            s.line.set_level(after);
        }
    }
}

impl IrqLine for Source {
    fn set_level(&self, high: bool) {
        self.update(high, true);
    }

    fn restore_level(&self, high: bool) {
        self.update(high, false);
    }
}

/// A line that records every level driven on it, for the devices' tests.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct RecordedLine(pub Arc<Mutex<Vec<bool>>>);

#[cfg(test)]
impl IrqLine for RecordedLine {
    fn set_level(&self, high: bool) {
        self.0.lock().push(high);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Line = RecordedLine;

    #[test]
    fn the_line_is_high_while_any_source_holds_it() {
        let line = Line::default();
        let shared = SharedLine::new(Box::new(line.clone()));
        let (pm, gpe) = (shared.source(), shared.source());
        pm.set_level(true);
        gpe.set_level(true);
        pm.set_level(false);
        assert_eq!(*line.0.lock(), vec![true], "still held by the GPE source");
        gpe.set_level(false);
        assert_eq!(*line.0.lock(), vec![true, false]);
        gpe.set_level(false);
        assert_eq!(
            *line.0.lock(),
            vec![true, false],
            "no change, nothing driven"
        );
    }

    #[test]
    fn restored_levels_are_noted_without_driving_the_line() {
        let line = Line::default();
        let shared = SharedLine::new(Box::new(line.clone()));
        let (pm, gpe) = (shared.source(), shared.source());
        pm.restore_level(true);
        gpe.restore_level(true);
        assert!(line.0.lock().is_empty());
        pm.set_level(false);
        assert!(line.0.lock().is_empty(), "the GPE source still holds it");
        gpe.set_level(false);
        assert_eq!(*line.0.lock(), vec![false]);
    }
}
