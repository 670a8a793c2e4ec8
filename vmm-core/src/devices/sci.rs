//! The SCI as several devices drive it: the PM1 block and the GPE block each hold the
//! line high for their own events, and the line is high while any of them does. KVM's
//! KVM_IRQ_LINE keeps one level per GSI for all of userspace, so two devices setting it
//! directly would undo each other; this is the OR in front of it.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Line(Arc<Mutex<Vec<bool>>>);
    impl IrqLine for Line {
        fn set_level(&self, high: bool) {
            self.0.lock().push(high);
        }
    }

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
