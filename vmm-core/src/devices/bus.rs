//! Address-range dispatch for port I/O and MMIO exits.

use std::sync::Arc;

use parking_lot::Mutex;

pub trait BusDevice: Send {
    /// `offset` is relative to the base the device was inserted at.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
    /// Return to power-on state (a VM reset).
    fn reset(&mut self) {}
    /// The state the guest can see, for a migration (None: the device keeps none).
    fn save_state(&self) -> Option<Vec<u8>> {
        None
    }
    /// Takes the state `save_state` gave on the source.
    fn restore_state(&mut self, _state: &[u8]) -> Result<(), String> {
        Err("this device keeps no state".into())
    }
}

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
pub struct OverlapError {
    pub base: u64,
    pub len: u64,
}

struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl Bus {
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), OverlapError> {
        let end = base.checked_add(len).ok_or(OverlapError { base, len })?;
        if len == 0
            || self
                .ranges
                .iter()
                .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(OverlapError { base, len });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, Range { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Range, u64)> {
        let i = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let r = &self.ranges[i];
        let offset = addr - r.base;
        (offset + size as u64 <= r.len).then_some((r, offset))
    }

    /// Fills `data` from the device at `addr`; false (and all-ones data, what a read
    /// of an empty bus returns on a PC) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, offset)) => {
                r.device.lock().read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((r, offset)) => {
                r.device.lock().write(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn reset(&self) {
        for r in &self.ranges {
            r.device.lock().reset();
        }
    }

    /// Each device's state, keyed by its base address.
    pub fn save_states(&self) -> Vec<(u64, Vec<u8>)> {
        self.ranges
            .iter()
            .filter_map(|r| r.device.lock().save_state().map(|s| (r.base, s)))
            .collect()
    }

    /// Gives each device its saved state. The saved devices must be exactly the ones
    /// here that keep state: anything else is another VM shape.
    pub fn restore_states(&self, states: &[(u64, Vec<u8>)]) -> Result<(), String> {
        let here: Vec<u64> = self
            .ranges
            .iter()
            .filter(|r| r.device.lock().save_state().is_some())
            .map(|r| r.base)
            .collect();
        let there: Vec<u64> = states.iter().map(|(base, _)| *base).collect();
        if here != there {
            return Err(format!(
                "the devices differ: state for {there:x?}, devices with state at {here:x?}"
            ));
        }
        for (base, state) in states {
            if let Some(r) = self.ranges.iter().find(|r| r.base == *base) {
                r.device
                    .lock()
                    .restore_state(state)
                    .map_err(|e| format!("device at {base:#x}: {e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u8)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let mut bus = Bus::default();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        assert!(bus.insert(0x3fc, 8, dev.clone()).is_err());
        assert!(bus.insert(0x3f0, 9, dev.clone()).is_err());
        bus.insert(0x3f0, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(bus.write(0x3f1, &[7]));
        assert_eq!(dev.lock().0, vec![(1, 7)]);
    }

    #[test]
    fn empty_addresses_read_all_ones() {
        let bus = Bus::default();
        let mut b = [0u8; 2];
        assert!(!bus.read(0x80, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        assert!(!bus.write(0x80, &[1]));
    }

    #[test]
    fn access_crossing_the_end_is_not_routed() {
        let mut bus = Bus::default();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x12, &mut b));
        assert!(bus.read(0x10, &mut b));
    }
}
