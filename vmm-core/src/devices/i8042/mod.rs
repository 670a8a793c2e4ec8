//! The i8042 keyboard controller of a PC, with a PS/2 keyboard on its first port and a
//! PS/2 mouse on its second (aux) port, as Linux's i8042, atkbd and psmouse drivers
//! expect: the command byte (interrupts, ports' clocks, translation to set 1), self and
//! interface tests, the output port, writes to the aux device and to the output buffer
//! (loopback), and the CPU reset line (0xFE, or a pulse of output port bit 0). Data
//! reaches the guest one byte at a time through the output buffer, raising IRQ 1 for the
//! keyboard's and IRQ 12 for the mouse's, as the command byte allows; the devices keep
//! what waits in small buffers of their own that drop what does not fit.
//!
//! The A20 gate (output port bit 1) is recorded, not acted on: guest memory has no A20
//! wrap here.

mod keyboard;
mod mouse;
mod queue;

use std::sync::Arc;

use ipc::input::InputEvent;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::bus::BusDevice;
use super::{state, IrqLine};
use crate::events::{EventSender, VmEvent};
pub use keyboard::Keyboard;
pub use mouse::Mouse;

// Status register bits.
const STATUS_OBF: u8 = 0x01;
/// The system flag: set once the controller passed its self test.
const STATUS_SYSTEM: u8 = 0x04;
/// The last write went to the command port.
const STATUS_COMMAND: u8 = 0x08;
/// The keyboard lock switch is off.
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX_OBF: u8 = 0x20;

// Command byte bits.
const MODE_KBD_INT: u8 = 0x01;
const MODE_AUX_INT: u8 = 0x02;
const MODE_SYSTEM: u8 = 0x04;
const MODE_DISABLE_KBD: u8 = 0x10;
const MODE_DISABLE_AUX: u8 = 0x20;
const MODE_TRANSLATE: u8 = 0x40;

// Output port bits.
const OUT_RESET: u8 = 0x01;
const OUT_A20: u8 = 0x02;
const OUT_OBF: u8 = 0x10;
const OUT_AUX_OBF: u8 = 0x20;
/// Bits a PC's controller reads as 1.
const OUT_ONES: u8 = 0xcc;

/// Where the byte in the output buffer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Source {
    Keyboard,
    Mouse,
    /// The controller's own answer, seen as from the keyboard or (true) the aux port.
    Controller {
        aux: bool,
    },
}

/// A controller command that takes a data byte next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Awaiting {
    CommandByte,
    OutputPort,
    KeyboardOutput,
    AuxOutput,
    Aux,
}

/// What the guest can see; it travels with a migration or a live upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    status: u8,
    mode: u8,
    output_port: u8,
    awaiting: Option<Awaiting>,
    /// The controller's own answer waiting for the output buffer, and its port.
    own: Option<(u8, bool)>,
    /// The output buffer is full with a byte from here, to be taken at the next read.
    full: Option<Source>,
    /// What the last read of the data port returned (read again while empty).
    last: u8,
    keyboard: Keyboard,
    mouse: Mouse,
}

impl Default for State {
    fn default() -> Self {
        State {
            status: STATUS_COMMAND | STATUS_UNLOCKED,
            mode: MODE_KBD_INT | MODE_AUX_INT,
            output_port: OUT_RESET | OUT_A20 | OUT_ONES,
            awaiting: None,
            own: None,
            full: None,
            last: 0,
            keyboard: Keyboard::default(),
            mouse: Mouse::default(),
        }
    }
}

pub struct I8042 {
    state: State,
    events: EventSender,
    kbd_irq: Box<dyn IrqLine>,
    aux_irq: Box<dyn IrqLine>,
}

impl I8042 {
    pub fn new(events: EventSender, kbd_irq: Box<dyn IrqLine>, aux_irq: Box<dyn IrqLine>) -> Self {
        I8042 {
            state: State::default(),
            events,
            kbd_irq,
            aux_irq,
        }
    }

    pub fn read_status(&self) -> u8 {
        self.state.status
    }

    /// A read of the data port: the output buffer's byte (it empties, and the next
    /// waiting byte takes its place), or the last one again when it is empty.
    pub fn read_data(&mut self) -> u8 {
        let s = &mut self.state;
        if let Some(source) = s.full.take() {
            s.status &= !(STATUS_OBF | STATUS_AUX_OBF);
            let byte = match source {
                Source::Keyboard => s.keyboard.queue.pop(),
                Source::Mouse => s.mouse.queue.pop(),
                Source::Controller { .. } => s.own.take().map(|(b, _)| b),
            };
            if let Some(b) = byte {
                s.last = b;
            }
            // The line drops with the read; the next byte raises it again.
            self.update_lines();
            self.fill();
        }
        self.state.last
    }

    pub fn write_data(&mut self, byte: u8) {
        self.state.status &= !STATUS_COMMAND;
        let s = &mut self.state;
        match s.awaiting.take() {
            None => {
                s.keyboard.write(byte);
                // Sending to a device gives it its clock back.
                s.mode &= !MODE_DISABLE_KBD;
            }
            Some(Awaiting::Aux) => {
                s.mouse.write(byte);
                s.mode &= !MODE_DISABLE_AUX;
            }
            Some(Awaiting::CommandByte) => {
                s.mode = byte;
                s.keyboard.set_translation(byte & MODE_TRANSLATE != 0);
                if byte & MODE_SYSTEM != 0 {
                    s.status |= STATUS_SYSTEM;
                } else {
                    s.status &= !STATUS_SYSTEM;
                }
                self.update_lines();
            }
            Some(Awaiting::OutputPort) => self.write_output_port(byte),
            Some(Awaiting::KeyboardOutput) => self.own(byte, false),
            Some(Awaiting::AuxOutput) => self.own(byte, true),
        }
        self.fill();
    }

    pub fn write_command(&mut self, command: u8) {
        self.state.status |= STATUS_COMMAND;
        let s = &mut self.state;
        match command {
            0x20 => {
                let mode = s.mode;
                self.own(mode, false);
            }
            0x60 => s.awaiting = Some(Awaiting::CommandByte),
            0xa7 => s.mode |= MODE_DISABLE_AUX,
            0xa8 => s.mode &= !MODE_DISABLE_AUX,
            // Aux and keyboard interface tests: no fault.
            0xa9 | 0xab => self.own(0x00, false),
            0xaa => {
                s.status |= STATUS_SYSTEM;
                self.own(0x55, false);
            }
            0xad => s.mode |= MODE_DISABLE_KBD,
            0xae => s.mode &= !MODE_DISABLE_KBD,
            // The input port: keyboard not inhibited.
            0xc0 => self.own(0x80, false),
            0xd0 => {
                let port = s.output_port;
                self.own(port, false);
            }
            0xd1 => s.awaiting = Some(Awaiting::OutputPort),
            0xd2 => s.awaiting = Some(Awaiting::KeyboardOutput),
            0xd3 => s.awaiting = Some(Awaiting::AuxOutput),
            0xd4 => s.awaiting = Some(Awaiting::Aux),
            0xdd => s.output_port &= !OUT_A20,
            0xdf => s.output_port |= OUT_A20,
            // Pulse output port bits low: bit 0 is the CPU's reset line.
            0xf0..=0xff => {
                if command & 0x01 == 0 {
                    self.events.send(VmEvent::Reset("i8042 reset command"));
                }
            }
            other => log::debug!("i8042: command {other:#04x} is not one a PC's controller has"),
        }
        self.fill();
    }

    fn write_output_port(&mut self, byte: u8) {
        self.state.output_port = byte;
        self.update_lines();
        if byte & OUT_RESET == 0 {
            self.events.send(VmEvent::Reset("i8042 output port reset"));
        }
    }

    /// The controller's own answer, ahead of the devices' bytes (a newer one replaces
    /// one not yet in the output buffer).
    fn own(&mut self, byte: u8, aux: bool) {
        self.state.own = Some((byte, aux));
    }

    /// An input event for the keyboard or the mouse.
    pub fn input(&mut self, event: InputEvent) {
        match event {
            InputEvent::Key { key, down } => self.state.keyboard.key(key, down),
            InputEvent::Button { button, down } => self.state.mouse.button(button, down),
            InputEvent::Move { axis, value } => self.state.mouse.moved(axis, value),
        }
        self.fill();
    }

    /// The end of a group of pointer events: the mouse sends its packets.
    pub fn sync(&mut self) {
        self.state.mouse.sync();
        self.fill();
    }

    /// An empty output buffer takes the next byte: the controller's own first, then the
    /// keyboard's, then the mouse's, each only while its port is enabled.
    fn fill(&mut self) {
        let s = &mut self.state;
        if s.full.is_some() {
            return;
        }
        let next = if let Some((_, aux)) = s.own {
            Some(Source::Controller { aux })
        } else if !s.keyboard.queue.is_empty() && s.mode & MODE_DISABLE_KBD == 0 {
            Some(Source::Keyboard)
        } else if !s.mouse.queue.is_empty() && s.mode & MODE_DISABLE_AUX == 0 {
            Some(Source::Mouse)
        } else {
            None
        };
        if let Some(source) = next {
            s.full = Some(source);
            s.status |= STATUS_OBF;
            if matches!(source, Source::Mouse | Source::Controller { aux: true }) {
                s.status |= STATUS_AUX_OBF;
            }
        }
        self.update_lines();
    }

    /// IRQ 1 is high while the output buffer holds a keyboard byte and the command byte
    /// enables its interrupt; IRQ 12 likewise for an aux byte.
    fn update_lines(&mut self) {
        let s = &mut self.state;
        let full = s.status & STATUS_OBF != 0;
        let aux = s.status & STATUS_AUX_OBF != 0;
        s.output_port &= !(OUT_OBF | OUT_AUX_OBF);
        if full {
            s.output_port |= if aux { OUT_AUX_OBF } else { OUT_OBF };
        }
        let kbd = full && !aux && s.mode & MODE_KBD_INT != 0;
        let mouse = full && aux && s.mode & MODE_AUX_INT != 0;
        self.kbd_irq.set_level(kbd);
        self.aux_irq.set_level(mouse);
    }

    fn reset(&mut self) {
        self.state = State::default();
        self.update_lines();
    }
}

/// The controller as the port bus sees it: its data port (0x60) and its status and
/// command port (0x64), one device behind both. The data port carries the state.
pub struct I8042Port {
    controller: Arc<Mutex<I8042>>,
    command_port: bool,
}

impl I8042Port {
    /// The data port's and the command port's devices.
    pub fn pair(controller: Arc<Mutex<I8042>>) -> (I8042Port, I8042Port) {
        (
            I8042Port {
                controller: controller.clone(),
                command_port: false,
            },
            I8042Port {
                controller,
                command_port: true,
            },
        )
    }
}

impl BusDevice for I8042Port {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut c = self.controller.lock();
        data[0] = if self.command_port {
            c.read_status()
        } else {
            c.read_data()
        };
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut c = self.controller.lock();
        if self.command_port {
            c.write_command(data[0]);
        } else {
            c.write_data(data[0]);
        }
    }

    fn reset(&mut self) {
        if !self.command_port {
            self.controller.lock().reset();
        }
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        (!self.command_port).then(|| state::encode(&self.controller.lock().state))
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let mut c = self.controller.lock();
        c.state = state::decode("i8042", bytes)?;
        // The interrupt controllers' state carries the lines' levels.
        let s = &c.state;
        let full = s.status & STATUS_OBF != 0;
        let aux = s.status & STATUS_AUX_OBF != 0;
        c.kbd_irq
            .restore_level(full && !aux && s.mode & MODE_KBD_INT != 0);
        c.aux_irq
            .restore_level(full && aux && s.mode & MODE_AUX_INT != 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use ipc::input::{InputAxis, KeyCode};

    use super::*;

    /// A line whose level the test reads.
    #[derive(Clone, Default)]
    struct Line(Arc<AtomicBool>);

    impl IrqLine for Line {
        fn set_level(&self, high: bool) {
            self.0.store(high, Ordering::SeqCst);
        }
    }

    impl Line {
        fn high(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    struct Rig {
        c: I8042,
        kbd: Line,
        aux: Line,
        rx: std::sync::mpsc::Receiver<VmEvent>,
    }

    fn rig() -> Rig {
        let (tx, rx) = EventSender::channel();
        let (kbd, aux) = (Line::default(), Line::default());
        let c = I8042::new(tx, Box::new(kbd.clone()), Box::new(aux.clone()));
        Rig { c, kbd, aux, rx }
    }

    impl Rig {
        /// Everything in the output buffer, byte by byte, with the status it had.
        fn drain(&mut self) -> Vec<(u8, u8)> {
            let mut out = Vec::new();
            while self.c.read_status() & STATUS_OBF != 0 {
                let status = self.c.read_status() & (STATUS_OBF | STATUS_AUX_OBF);
                out.push((status, self.c.read_data()));
            }
            out
        }

        fn bytes(&mut self) -> Vec<u8> {
            self.drain().into_iter().map(|(_, b)| b).collect()
        }
    }

    const KBD: u8 = STATUS_OBF;
    const AUX: u8 = STATUS_OBF | STATUS_AUX_OBF;

    #[test]
    fn controller_commands_as_linux_sends_them() {
        let mut r = rig();
        assert_eq!(r.c.read_status() & STATUS_OBF, 0);
        r.c.write_command(0xaa);
        assert_eq!(r.drain(), [(KBD, 0x55)]);
        assert_ne!(r.c.read_status() & STATUS_SYSTEM, 0);
        r.c.write_command(0x20);
        assert_eq!(r.bytes(), [MODE_KBD_INT | MODE_AUX_INT]);
        r.c.write_command(0x60);
        r.c.write_data(0x47);
        r.c.write_command(0x20);
        assert_eq!(r.bytes(), [0x47]);
        r.c.write_command(0xab);
        r.c.write_command(0xa9);
        // A second answer replaces one not read: the aux test's.
        assert_eq!(r.bytes(), [0x00]);
        // Aux loopback (Linux's check that IRQ 12 works): the byte comes back from the
        // aux port, with its interrupt.
        r.c.write_command(0xd3);
        r.c.write_data(0xa5);
        assert!(r.aux.high() && !r.kbd.high());
        assert_eq!(r.drain(), [(AUX, 0xa5)]);
        assert!(!r.aux.high());
        r.c.write_command(0xd2);
        r.c.write_data(0x33);
        assert!(r.kbd.high());
        assert_eq!(r.drain(), [(KBD, 0x33)]);
        r.c.write_command(0xd0);
        assert_eq!(r.bytes(), [OUT_RESET | OUT_A20 | OUT_ONES]);
        r.c.write_command(0xc0);
        assert_eq!(r.bytes(), [0x80]);
        // Empty: the last byte reads again.
        assert_eq!(r.c.read_data(), 0x80);
        assert!(r.rx.try_recv().is_err());
    }

    #[test]
    fn reset_by_command_and_by_output_port() {
        let mut r = rig();
        r.c.write_command(0xff);
        r.c.write_command(0xfd);
        r.c.write_command(0xd1);
        r.c.write_data(OUT_A20 | OUT_RESET);
        assert!(r.rx.try_recv().is_err());
        r.c.write_command(0xfe);
        assert!(matches!(r.rx.try_recv(), Ok(VmEvent::Reset(_))));
        r.c.write_command(0xd1);
        r.c.write_data(OUT_A20);
        assert!(matches!(r.rx.try_recv(), Ok(VmEvent::Reset(_))));
    }

    #[test]
    fn keyboard_through_the_controller_translated_or_not() {
        let mut r = rig();
        r.c.write_data(0xff);
        assert_eq!(r.drain(), [(KBD, 0xfa), (KBD, 0xaa)]);
        let a = KeyCode::from_name("a").unwrap();
        r.c.input(InputEvent::Key { key: a, down: true });
        assert!(r.kbd.high());
        assert_eq!(r.bytes(), [0x1c]);
        assert!(!r.kbd.high());
        r.c.write_command(0x60);
        r.c.write_data(MODE_KBD_INT | MODE_TRANSLATE);
        r.c.input(InputEvent::Key {
            key: a,
            down: false,
        });
        assert_eq!(r.bytes(), [0x9e]);
        // Interrupts off: the byte waits in the buffer, no line.
        r.c.write_command(0x60);
        r.c.write_data(MODE_TRANSLATE);
        r.c.input(InputEvent::Key { key: a, down: true });
        assert!(!r.kbd.high());
        assert_eq!(r.bytes(), [0x1e]);
        // The keyboard's clock off: nothing reaches the buffer until it is back on.
        r.c.write_command(0xad);
        r.c.input(InputEvent::Key {
            key: a,
            down: false,
        });
        assert!(r.bytes().is_empty());
        r.c.write_command(0xae);
        assert_eq!(r.bytes(), [0x9e]);
    }

    #[test]
    fn mouse_through_the_aux_port() {
        let mut r = rig();
        r.c.write_command(0xa8);
        for byte in [0xff, 0xf4] {
            r.c.write_command(0xd4);
            r.c.write_data(byte);
        }
        assert_eq!(
            r.drain(),
            [(AUX, 0xfa), (AUX, 0xaa), (AUX, 0x00), (AUX, 0xfa)]
        );
        r.c.input(InputEvent::Move {
            axis: InputAxis::X,
            value: -3,
        });
        assert!(!r.aux.high());
        r.c.sync();
        assert!(r.aux.high() && !r.kbd.high());
        assert_eq!(r.drain(), [(AUX, 0x18), (AUX, 0xfd), (AUX, 0x00)]);
        // The aux port disabled: the packet waits.
        r.c.write_command(0xa7);
        r.c.input(InputEvent::Move {
            axis: InputAxis::Y,
            value: 1,
        });
        r.c.sync();
        assert!(r.drain().is_empty());
        r.c.write_command(0xa8);
        assert_eq!(r.bytes(), [0x28, 0x00, 0xff]);
    }

    #[test]
    fn state_travels_and_reset_forgets_it() {
        let (tx, _rx) = EventSender::channel();
        let shared = Arc::new(Mutex::new(I8042::new(
            tx.clone(),
            Box::new(Line::default()),
            Box::new(Line::default()),
        )));
        let (mut data, mut cmd) = I8042Port::pair(shared.clone());
        cmd.write(0, &[0x60]);
        data.write(0, &[0x65]);
        data.write(0, &[0xf2]);
        assert!(cmd.save_state().is_none());
        let saved = data.save_state().unwrap();
        let other = Arc::new(Mutex::new(I8042::new(
            tx,
            Box::new(Line::default()),
            Box::new(Line::default()),
        )));
        let (mut there, _) = I8042Port::pair(other.clone());
        there.restore_state(&saved).unwrap();
        let mut b = [0u8];
        let mut got = Vec::new();
        for _ in 0..3 {
            there.read(0, &mut b);
            got.push(b[0]);
        }
        // Translated identify.
        assert_eq!(got, [0xfa, 0xab, 0x41]);
        assert!(there.restore_state(&[1, 2, 3]).is_err());
        data.reset();
        assert_eq!(shared.lock().state, State::default());
    }
}
