//! The PS/2 keyboard behind the i8042's first port: an MF2 keyboard that answers the
//! commands Linux's atkbd sends (reset, LEDs, scancode set, identify, typematic rate,
//! scanning on and off) and turns key events into scancodes of set 1 or 2, the latter
//! translated to set 1 by the controller when its command byte says so. Set 3 is refused
//! (0xFE), as by the many keyboards without it; Linux's atkbd then keeps set 2.

use ipc::input::KeyCode;
use serde::{Deserialize, Serialize};

use super::queue::Ps2Queue;

const ACK: u8 = 0xfa;
const RESEND: u8 = 0xfe;
const SELF_TEST_PASSED: u8 = 0xaa;
const ECHO: u8 = 0xee;

/// The 8042's translation of set 2 bytes to set 1 (what a PC's controller does with
/// the command byte's bit 6): a fixed table of the hardware; from 0x80 up, bytes pass
/// unchanged but 0x83 (F7) and 0x84 (Alt+Print, SysRq).
const SET2_TO_SET1: [u8; 128] = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, 0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59,
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, 0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b,
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, 0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d,
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, 0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f,
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, 0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61,
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, 0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76,
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, 0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f,
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, 0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54,
];

fn translated(byte: u8) -> u8 {
    match byte {
        0x83 => 0x41,
        0x84 => 0x54,
        _ => SET2_TO_SET1.get(usize::from(byte)).copied().unwrap_or(byte),
    }
}

/// A command that takes a parameter byte next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Awaiting {
    Leds,
    ScancodeSet,
    TypematicRate,
    /// 0xFB (set a key's make/break), whose parameter is taken and ignored.
    KeyType,
}

/// Modifier keys whose state changes what Print and Pause send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Modifiers {
    ctrl: bool,
    shift: bool,
    alt: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyboard {
    pub queue: Ps2Queue,
    awaiting: Option<Awaiting>,
    scanning: bool,
    /// 1 or 2.
    set: u8,
    leds: u8,
    /// The controller translates to set 1 (its command byte's bit 6).
    translate: bool,
    /// Translating: the last byte was set 2's break prefix 0xF0, which becomes bit 7 of
    /// the next byte.
    break_pending: bool,
    modifiers: Modifiers,
}

impl Default for Keyboard {
    fn default() -> Self {
        Keyboard {
            queue: Ps2Queue::default(),
            awaiting: None,
            scanning: true,
            set: 2,
            leds: 0,
            translate: false,
            break_pending: false,
            modifiers: Modifiers::default(),
        }
    }
}

impl Keyboard {
    pub fn set_translation(&mut self, on: bool) {
        self.translate = on;
    }

    pub fn leds(&self) -> u8 {
        self.leds
    }

    /// The keyboard's own reset (command 0xFF, 0xF5, 0xF6): defaults, buffer emptied;
    /// the controller's translation is not the keyboard's to change.
    fn reset(&mut self) {
        *self = Keyboard {
            translate: self.translate,
            ..Keyboard::default()
        };
    }

    /// A byte from the guest, through the controller's data port.
    pub fn write(&mut self, byte: u8) {
        self.queue.drop_replies();
        if let Some(awaiting) = self.awaiting.take() {
            return self.parameter(awaiting, byte);
        }
        match byte {
            0xed => self.await_parameter(Awaiting::Leds),
            0xee => self.queue.reply(&[ECHO]),
            0xf0 => self.await_parameter(Awaiting::ScancodeSet),
            // Identify: an MF2 keyboard (0xAB 0x83), whose second byte the
            // controller translates when it translates.
            0xf2 => {
                let id = if self.translate {
                    translated(0x83)
                } else {
                    0x83
                };
                self.queue.reply(&[ACK, 0xab, id]);
            }
            0xf3 => self.await_parameter(Awaiting::TypematicRate),
            0xf4 => {
                self.scanning = true;
                self.queue.reply(&[ACK]);
            }
            0xf5 | 0xf6 => {
                self.reset();
                self.scanning = byte == 0xf6;
                self.queue.reply(&[ACK]);
            }
            // Set all keys typematic / make-break: nothing changes what we send.
            0xfa => self.queue.reply(&[ACK]),
            0xfb => self.await_parameter(Awaiting::KeyType),
            0xff => {
                self.reset();
                self.queue.reply(&[ACK, SELF_TEST_PASSED]);
            }
            // 0x00 is what some BIOSes send to probe: acknowledged.
            0x00 => self.queue.reply(&[ACK]),
            _ => self.queue.reply(&[RESEND]),
        }
    }

    fn await_parameter(&mut self, what: Awaiting) {
        self.awaiting = Some(what);
        self.queue.reply(&[ACK]);
    }

    fn parameter(&mut self, what: Awaiting, byte: u8) {
        match what {
            Awaiting::Leds => {
                self.leds = byte & 0x07;
                self.queue.reply(&[ACK]);
            }
            Awaiting::ScancodeSet => match byte {
                0 => {
                    let set = if self.translate {
                        translated(self.set)
                    } else {
                        self.set
                    };
                    self.queue.reply(&[ACK, set]);
                }
                1 | 2 => {
                    self.set = byte;
                    self.queue.reply(&[ACK]);
                }
                _ => self.queue.reply(&[RESEND]),
            },
            // The rate and delay change nothing here: keys repeat only as events come.
            Awaiting::TypematicRate | Awaiting::KeyType => self.queue.reply(&[ACK]),
        }
    }

    /// A key went down or up: its scancodes, if scanning is on and they fit (a full
    /// buffer drops them, as a keyboard's does).
    pub fn key(&mut self, key: KeyCode, down: bool) {
        let name = key.name();
        match name {
            "ctrl" | "ctrl_r" => self.modifiers.ctrl = down,
            "shift" | "shift_r" => self.modifiers.shift = down,
            "alt" | "alt_r" => self.modifiers.alt = down,
            _ => {}
        }
        if !self.scanning {
            return;
        }
        let bytes = match (self.set, name) {
            (1, "pause") => pause_set1(down, self.modifiers.ctrl),
            (1, "print") => print_set1(down, self.modifiers),
            (1, _) => make_break_set1(key.info().set1, down),
            (_, "pause") => pause_set2(down, self.modifiers.ctrl),
            (_, "print") => print_set2(down, self.modifiers),
            (_, _) => make_break_set2(key.info().set2, down),
        };
        for b in bytes {
            self.put_scancode(b);
        }
    }

    /// One scancode byte, translated to set 1 when the controller says so (set 2's
    /// break prefix 0xF0 becomes bit 7 of the byte after it).
    fn put_scancode(&mut self, byte: u8) {
        if !self.translate {
            self.queue.push(&[byte]);
        } else if byte == 0xf0 {
            self.break_pending = true;
        } else {
            let b = translated(byte) | if self.break_pending { 0x80 } else { 0 };
            self.break_pending = false;
            self.queue.push(&[b]);
        }
    }
}

fn make_break_set1(code: u16, down: bool) -> Vec<u8> {
    if code == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(2);
    if code > 0xff {
        out.push((code >> 8) as u8);
    }
    let b = code as u8;
    out.push(if down { b } else { b | 0x80 });
    out
}

fn make_break_set2(code: u16, down: bool) -> Vec<u8> {
    if code == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(3);
    if code > 0xff {
        out.push((code >> 8) as u8);
    }
    if !down {
        out.push(0xf0);
    }
    out.push(code as u8);
    out
}

/// Pause sends its make and break at once when it goes down, nothing when it goes up;
/// with Ctrl it is Break.
fn pause_set1(down: bool, ctrl: bool) -> Vec<u8> {
    match (down, ctrl) {
        (false, _) => Vec::new(),
        (true, true) => vec![0xe0, 0x46, 0xe0, 0xc6],
        (true, false) => vec![0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5],
    }
}

fn pause_set2(down: bool, ctrl: bool) -> Vec<u8> {
    match (down, ctrl) {
        (false, _) => Vec::new(),
        (true, true) => vec![0xe0, 0x7e, 0xe0, 0xf0, 0x7e],
        (true, false) => vec![0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77],
    }
}

/// Print Screen: a fake shift around it alone; with Shift or Ctrl only its own code;
/// with Alt it is SysRq.
fn print_set1(down: bool, m: Modifiers) -> Vec<u8> {
    match (m.alt, m.shift || m.ctrl, down) {
        (true, _, true) => vec![0x54],
        (true, _, false) => vec![0xd4],
        (false, true, true) => vec![0xe0, 0x37],
        (false, true, false) => vec![0xe0, 0xb7],
        (false, false, true) => vec![0xe0, 0x2a, 0xe0, 0x37],
        (false, false, false) => vec![0xe0, 0xb7, 0xe0, 0xaa],
    }
}

fn print_set2(down: bool, m: Modifiers) -> Vec<u8> {
    match (m.alt, m.shift || m.ctrl, down) {
        (true, _, true) => vec![0x84],
        (true, _, false) => vec![0xf0, 0x84],
        (false, true, true) => vec![0xe0, 0x7c],
        (false, true, false) => vec![0xe0, 0xf0, 0x7c],
        (false, false, true) => vec![0xe0, 0x12, 0xe0, 0x7c],
        (false, false, false) => vec![0xe0, 0xf0, 0x7c, 0xe0, 0xf0, 0x12],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(k: &mut Keyboard) -> Vec<u8> {
        std::iter::from_fn(|| k.queue.pop()).collect()
    }

    fn key(name: &str) -> KeyCode {
        KeyCode::from_name(name).unwrap()
    }

    /// Sends `bytes`, reading what comes back after each (as a driver waits for each
    /// byte's answer).
    fn send(k: &mut Keyboard, bytes: &[u8]) -> Vec<u8> {
        bytes
            .iter()
            .flat_map(|&b| {
                k.write(b);
                drain(k)
            })
            .collect()
    }

    #[test]
    fn commands_answer_as_an_mf2_keyboard() {
        let mut k = Keyboard::default();
        assert_eq!(send(&mut k, &[0xff]), [ACK, 0xaa]);
        assert_eq!(send(&mut k, &[0xf2]), [ACK, 0xab, 0x83]);
        k.set_translation(true);
        assert_eq!(send(&mut k, &[0xf2]), [ACK, 0xab, 0x41]);
        assert_eq!(send(&mut k, &[0xed, 0x05]), [ACK, ACK]);
        assert_eq!(k.leds(), 0x05);
        assert_eq!(send(&mut k, &[0xf3, 0x20]), [ACK, ACK]);
        // Scancode set: get (translated: set 2 reads as 0x41), set, bad set.
        assert_eq!(send(&mut k, &[0xf0, 0]), [ACK, ACK, 0x41]);
        k.set_translation(false);
        assert_eq!(send(&mut k, &[0xf0, 0]), [ACK, ACK, 2]);
        assert_eq!(send(&mut k, &[0xf0, 3]), [ACK, RESEND]);
        assert_eq!(send(&mut k, &[0xee]), [ECHO]);
        assert_eq!(send(&mut k, &[0x77]), [RESEND]);
        // A command's unread answer goes when the next byte comes.
        k.write(0xf2);
        assert_eq!(send(&mut k, &[0xf4]), [ACK]);
    }

    #[test]
    fn keys_in_set_2_set_1_and_translated() {
        let mut k = Keyboard::default();
        k.key(key("a"), true);
        k.key(key("a"), false);
        k.key(key("kp_enter"), false);
        assert_eq!(drain(&mut k), [0x1c, 0xf0, 0x1c, 0xe0, 0xf0, 0x5a]);
        k.set_translation(true);
        k.key(key("a"), true);
        k.key(key("a"), false);
        k.key(key("kp_enter"), false);
        assert_eq!(drain(&mut k), [0x1e, 0x9e, 0xe0, 0x9c]);
        k.set_translation(false);
        send(&mut k, &[0xf0, 1]);
        k.key(key("ctrl_r"), true);
        k.key(key("ctrl_r"), false);
        assert_eq!(drain(&mut k), [0xe0, 0x1d, 0xe0, 0x9d]);
        // Unmapped keys send nothing.
        k.key(KeyCode::UNMAPPED, true);
        assert!(drain(&mut k).is_empty());
    }

    #[test]
    fn disabled_scanning_and_a_full_buffer_drop_keys() {
        let mut k = Keyboard::default();
        k.write(0xf5);
        drain(&mut k);
        k.key(key("a"), true);
        assert!(drain(&mut k).is_empty());
        k.write(0xf4);
        drain(&mut k);
        for _ in 0..20 {
            k.key(key("a"), true);
        }
        assert_eq!(drain(&mut k).len(), 16);
        // Pause: its 8 bytes at once, none on release.
        k.key(key("pause"), true);
        k.key(key("pause"), false);
        assert_eq!(
            drain(&mut k),
            [0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77]
        );
    }
}
