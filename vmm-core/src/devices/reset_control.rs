//! The PIIX/ICH Reset Control Register at port 0xCF9, also the FADT's reset register.

use super::bus::BusDevice;
use crate::events::{EventSender, VmEvent};

const SYS_RST: u8 = 1 << 1;
const RST_CPU: u8 = 1 << 2;
/// The value the FADT tells the OS to write: a full (system + CPU) reset.
pub const FULL_RESET: u8 = SYS_RST | RST_CPU;

pub struct ResetControl {
    value: u8,
    events: EventSender,
}

impl ResetControl {
    pub fn new(events: EventSender) -> Self {
        ResetControl { value: 0, events }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.value;
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let v = data[0];
        // RST_CPU going 0 -> 1 starts the reset; SYS_RST only selects its kind.
        if v & RST_CPU != 0 && self.value & RST_CPU == 0 {
            self.events
                .send(VmEvent::Reset("reset control register (port 0xcf9)"));
        }
        self.value = v & SYS_RST;
    }

    fn reset(&mut self) {
        self.value = 0;
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        Some(vec![self.value])
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        match state {
            [v] => {
                self.value = v & SYS_RST;
                Ok(())
            }
            _ => Err("reset control: malformed state".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rst_cpu_requests_a_reset() {
        let (tx, rx) = EventSender::channel();
        let mut d = ResetControl::new(tx);
        d.write(0, &[SYS_RST]);
        assert!(rx.try_recv().is_err());
        let mut b = [0];
        d.read(0, &mut b);
        assert_eq!(b[0], SYS_RST);
        d.write(0, &[FULL_RESET]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reset(_))));
    }
}
