//! The PS/2 mouse behind the i8042's second (aux) port: a standard PS/2 mouse that
//! becomes an IntelliMouse (ID 3, a wheel byte) after the sample-rate knock 200, 100, 80
//! and an IntelliMouse Explorer (ID 4, wheel and buttons 4 and 5) after 200, 200, 80, as
//! Linux's psmouse probes. Moves and buttons gather until a sync, which sends them as
//! packets in stream mode while data reporting is on.

use ipc::input::{InputAxis, InputButton};
use serde::{Deserialize, Serialize};

use super::queue::Ps2Queue;

const ACK: u8 = 0xfa;
const SELF_TEST_PASSED: u8 = 0xaa;

const STATUS_REMOTE: u8 = 0x40;
const STATUS_ENABLED: u8 = 0x20;
const STATUS_SCALE21: u8 = 0x10;

const DEFAULT_RATE: u8 = 100;
const DEFAULT_RESOLUTION: u8 = 2;

/// A command that takes a parameter byte next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Awaiting {
    SampleRate,
    Resolution,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mouse {
    pub queue: Ps2Queue,
    awaiting: Option<Awaiting>,
    /// Remote mode, data reporting, 2:1 scaling (the status request's first byte).
    status: u8,
    resolution: u8,
    sample_rate: u8,
    /// Wrap (echo) mode: every byte comes back but reset and "reset wrap mode".
    wrap: bool,
    /// 0 (PS/2), 3 (IntelliMouse) or 4 (Explorer).
    id: u8,
    /// The last sample rates, for the IntelliMouse knock.
    knock: [u8; 3],
    dx: i64,
    dy: i64,
    dz: i64,
    /// Left, right, middle, side, extra: bits 0 to 4.
    buttons: u8,
    /// Events came since the last sync (a sync after none sends nothing, as QEMU syncs
    /// only the devices that had events).
    touched: bool,
}

impl Default for Mouse {
    fn default() -> Self {
        Mouse {
            queue: Ps2Queue::default(),
            awaiting: None,
            status: 0,
            resolution: DEFAULT_RESOLUTION,
            sample_rate: DEFAULT_RATE,
            wrap: false,
            id: 0,
            knock: [0; 3],
            dx: 0,
            dy: 0,
            dz: 0,
            buttons: 0,
            touched: false,
        }
    }
}

impl Mouse {
    /// Each reply goes only whole into the buffer.
    fn reply(&mut self, bytes: &[u8]) {
        self.queue.push(bytes);
    }

    /// A byte from the guest (controller command 0xD4, then the data port).
    pub fn write(&mut self, byte: u8) {
        if self.wrap && byte != 0xec && byte != 0xff {
            return self.reply(&[byte]);
        }
        if let Some(awaiting) = self.awaiting.take() {
            match awaiting {
                Awaiting::SampleRate => {
                    self.sample_rate = byte;
                    self.knock = [self.knock[1], self.knock[2], byte];
                    match self.knock {
                        [200, 100, 80] => self.id = 3,
                        [200, 200, 80] if self.id == 3 => self.id = 4,
                        _ => {}
                    }
                }
                Awaiting::Resolution => self.resolution = byte & 0x03,
            }
            return self.reply(&[ACK]);
        }
        match byte {
            0xe6 => self.set_status(STATUS_SCALE21, false),
            0xe7 => self.set_status(STATUS_SCALE21, true),
            0xe8 => {
                self.awaiting = Some(Awaiting::Resolution);
                self.reply(&[ACK]);
            }
            0xe9 => {
                let reply = [
                    ACK,
                    self.status
                        | (self.buttons & 0x01) << 2
                        | (self.buttons & 0x04) >> 1
                        | (self.buttons & 0x02) >> 1,
                    self.resolution,
                    self.sample_rate,
                ];
                self.reply(&reply);
            }
            0xea => self.set_status(STATUS_REMOTE, false),
            // Read data (remote mode's poll): a packet of what moved since.
            0xeb => {
                self.reply(&[ACK]);
                self.send_packet();
            }
            0xec => {
                self.wrap = false;
                self.reply(&[ACK]);
            }
            0xee => {
                self.wrap = true;
                self.reply(&[ACK]);
            }
            0xf0 => self.set_status(STATUS_REMOTE, true),
            0xf2 => {
                let id = self.id;
                self.reply(&[ACK, id]);
            }
            0xf3 => {
                self.awaiting = Some(Awaiting::SampleRate);
                self.reply(&[ACK]);
            }
            0xf4 => self.set_status(STATUS_ENABLED, true),
            0xf5 => self.set_status(STATUS_ENABLED, false),
            0xf6 => {
                self.defaults();
                self.reply(&[ACK]);
            }
            0xff => {
                self.defaults();
                self.id = 0;
                self.wrap = false;
                self.queue.clear();
                self.reply(&[ACK, SELF_TEST_PASSED, 0]);
            }
            // Anything else: asked again (a real mouse's "resend").
            _ => self.reply(&[0xfe]),
        }
    }

    fn set_status(&mut self, bit: u8, on: bool) {
        if on {
            self.status |= bit;
        } else {
            self.status &= !bit;
        }
        self.reply(&[ACK]);
    }

    fn defaults(&mut self) {
        self.status = 0;
        self.resolution = DEFAULT_RESOLUTION;
        self.sample_rate = DEFAULT_RATE;
        self.dx = 0;
        self.dy = 0;
        self.dz = 0;
    }

    /// Moves and buttons count only while the mouse reports (stream mode) or is polled
    /// (remote mode).
    fn listening(&self) -> bool {
        self.status & (STATUS_ENABLED | STATUS_REMOTE) != 0
    }

    /// A relative move (`value` to the right, or down: PS/2's y grows upwards).
    pub fn moved(&mut self, axis: InputAxis, value: i64) {
        self.touched = true;
        if !self.listening() {
            return;
        }
        match axis {
            InputAxis::X => self.dx = self.dx.saturating_add(value),
            InputAxis::Y => self.dy = self.dy.saturating_sub(value),
        }
    }

    pub fn button(&mut self, button: InputButton, down: bool) {
        self.touched = true;
        if !self.listening() {
            return;
        }
        let bit = match button {
            InputButton::Left => 0x01,
            InputButton::Right => 0x02,
            InputButton::Middle => 0x04,
            InputButton::Side => 0x08,
            InputButton::Extra => 0x10,
            // A wheel notch, counted when it goes down.
            InputButton::WheelUp | InputButton::WheelDown => {
                if down {
                    self.dz += if button == InputButton::WheelUp {
                        -1
                    } else {
                        1
                    };
                }
                return;
            }
            // No horizontal wheel on a PS/2 mouse.
            InputButton::WheelLeft | InputButton::WheelRight => return,
        };
        if down {
            self.buttons |= bit;
        } else {
            self.buttons &= !bit;
        }
    }

    /// The end of a group of events (if there were any since the last): in stream mode
    /// with reporting on, packets until
    /// everything moved is sent (each carries at most 127 either way) or the buffer is
    /// full.
    pub fn sync(&mut self) {
        if !std::mem::take(&mut self.touched) {
            return;
        }
        if self.status & STATUS_ENABLED == 0 || self.status & STATUS_REMOTE != 0 {
            return;
        }
        while self.send_packet() {
            if self.dx == 0 && self.dy == 0 && self.dz == 0 {
                break;
            }
        }
    }

    /// One packet of what moved, if it fits; false when it did not.
    fn send_packet(&mut self) -> bool {
        let len = if self.id == 0 { 3 } else { 4 };
        if !self.queue.has_room(len) {
            return false;
        }
        let dx = self.dx.clamp(-127, 127);
        let dy = self.dy.clamp(-127, 127);
        let mut packet = vec![
            0x08 | u8::from(dx < 0) << 4 | u8::from(dy < 0) << 5 | (self.buttons & 0x07),
            dx as u8,
            dy as u8,
        ];
        let dz = match self.id {
            3 => {
                let dz = self.dz.clamp(-127, 127);
                packet.push(dz as u8);
                dz
            }
            4 => {
                let dz = self.dz.clamp(-7, 7);
                packet.push((dz as u8 & 0x0f) | (self.buttons & 0x18) << 1);
                dz
            }
            // A plain PS/2 mouse has no wheel: its notches are forgotten.
            _ => self.dz,
        };
        self.queue.push(&packet);
        self.dx -= dx;
        self.dy -= dy;
        self.dz -= dz;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut Mouse) -> Vec<u8> {
        std::iter::from_fn(|| m.queue.pop()).collect()
    }

    fn rate(m: &mut Mouse, r: u8) {
        m.write(0xf3);
        m.write(r);
    }

    #[test]
    fn reset_identify_and_the_intellimouse_knocks() {
        let mut m = Mouse::default();
        m.write(0xff);
        assert_eq!(drain(&mut m), [ACK, 0xaa, 0x00]);
        m.write(0xf2);
        assert_eq!(drain(&mut m), [ACK, 0]);
        for r in [200, 100, 80] {
            rate(&mut m, r);
        }
        m.write(0xf2);
        assert_eq!(drain(&mut m), [ACK, ACK, ACK, ACK, ACK, ACK, ACK, 3]);
        for r in [200, 200, 80] {
            rate(&mut m, r);
        }
        m.write(0xf2);
        assert_eq!(drain(&mut m)[6..], [ACK, 4]);
        m.write(0xe8);
        m.write(3);
        m.write(0xe9);
        assert_eq!(drain(&mut m), [ACK, ACK, ACK, 0x00, 3, 80]);
        m.write(0xf6);
        m.write(0xe9);
        assert_eq!(drain(&mut m), [ACK, ACK, 0x00, 2, 100]);
        m.write(0x42);
        assert_eq!(drain(&mut m), [0xfe]);
    }

    #[test]
    fn packets_only_while_reporting_and_split_when_big() {
        let mut m = Mouse::default();
        m.moved(InputAxis::X, 5);
        m.sync();
        assert!(drain(&mut m).is_empty());
        m.write(0xf4);
        assert_eq!(drain(&mut m), [ACK]);
        m.button(InputButton::Left, true);
        m.moved(InputAxis::X, 200);
        m.moved(InputAxis::Y, 10);
        m.sync();
        // y down 10 is -10 for PS/2; x 200 goes as 127 then 73.
        assert_eq!(drain(&mut m), [0x29, 127, 0xf6, 0x09, 73, 0]);
        m.write(0xf5);
        drain(&mut m);
        m.moved(InputAxis::X, 5);
        m.write(0xf4);
        m.sync();
        assert_eq!(drain(&mut m), [ACK, 0x09, 0, 0]);
        // A sync without events since sends nothing.
        m.sync();
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn a_full_buffer_takes_no_part_of_a_packet() {
        let mut m = Mouse::default();
        m.write(0xf4);
        for _ in 0..6 {
            m.moved(InputAxis::X, 1);
            m.sync();
        }
        // ACK plus five 3-byte packets: 16 bytes; the sixth packet waits.
        assert_eq!(m.queue.len(), 16);
        assert_eq!(drain(&mut m).len(), 16);
        m.button(InputButton::Left, false);
        m.sync();
        assert_eq!(drain(&mut m), [0x08, 1, 0]);
    }
}
