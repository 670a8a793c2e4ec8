//! The part of the i8042 keyboard controller a VMM needs: the CPU reset line (command
//! 0xFE on port 0x64). Status reads say "buffers empty", so reset loops never spin.

use vm_superio::I8042Device;

use super::bus::BusDevice;
use crate::events::{EventSender, ResetTrigger};

/// vm-superio addresses the command register as offset 4 from the data port.
const COMMAND_OFFSET: u8 = 4;

pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
    /// This instance serves the command port (true) or the data port (false).
    command_port: bool,
}

impl I8042 {
    pub fn new(events: EventSender, command_port: bool) -> Self {
        I8042 {
            inner: I8042Device::new(ResetTrigger {
                events,
                source: "i8042 reset command",
            }),
            command_port,
        }
    }

    fn offset(&self) -> u8 {
        if self.command_port {
            COMMAND_OFFSET
        } else {
            0
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.inner.read(self.offset());
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let offset = self.offset();
        // The trigger cannot fail (Infallible).
        let _ = self.inner.write(offset, data[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::VmEvent;

    #[test]
    fn command_fe_resets_only_on_the_command_port() {
        let (tx, rx) = EventSender::channel();
        let mut data = I8042::new(tx.clone(), false);
        let mut cmd = I8042::new(tx, true);
        data.write(0, &[0xfe]);
        assert!(rx.try_recv().is_err());
        cmd.write(0, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reset(_))));
    }
}
