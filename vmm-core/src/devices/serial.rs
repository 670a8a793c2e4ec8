//! COM1: a 16550A UART (vm-superio) at 0x3f8 / IRQ 4, whose console is, under the
//! gateway, a chardev (a stream socket to the gateway, both ways), and when vmm-core runs
//! on its own stdout (input from stdin), a file, a Unix socket that vmm-core listens on
//! (one client at a time; output is dropped while nobody is connected), or nothing.
//! Output goes out a line at a time (LineOut).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc::host::SerialConfig;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use vm_superio::serial::{Error as UartError, NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use super::state;

/// Where the guest's serial output goes. Cloneable so a reset can rebuild the UART
/// around the same console.
#[derive(Clone)]
pub enum SerialOut {
    Stdout,
    File(Arc<Mutex<File>>),
    Unix(Arc<Mutex<Option<UnixStream>>>),
    Discard,
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOut::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()?;
            }
            SerialOut::File(f) => f.lock().write_all(buf)?,
            SerialOut::Unix(client) => {
                let mut client = client.lock();
                // A client that went away is forgotten; output is dropped until the next.
                if let Some(c) = client.as_mut() {
                    if c.write_all(buf).is_err() {
                        *client = None;
                    }
                }
            }
            SerialOut::Discard => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raises the UART's interrupt through an eventfd registered as a KVM irqfd.
pub struct IrqEvent(pub EventFd);

impl Trigger for IrqEvent {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// How long output without a line end waits for the rest of its line before it goes out
/// anyway (a prompt, a line the guest writes slowly).
const PARTIAL_LINE_WAIT: Duration = Duration::from_millis(5);
/// Output waiting for its line end goes out at this size all the same.
const HOLD_MAX: usize = 4096;

/// The UART's output, held until its line ends: each write to the console is a system
/// call on the vCPU thread while the guest waits, and the guest writes a byte per exit
/// (that write was about half of the time vmm-core spent on a serial exit, measured on
/// kvm-pvm). What waits longer than PARTIAL_LINE_WAIT is written by a thread of its own.
/// Clones share the output (a reset's new UART writes on where the old one stopped).
#[derive(Clone)]
struct LineOut(Arc<Held>);

struct Held {
    state: Mutex<HeldState>,
    /// The writer thread waits here for output, or for its time to write it.
    waiting: Condvar,
}

struct HeldState {
    out: SerialOut,
    bytes: Vec<u8>,
    /// When the first byte of `bytes` came.
    since: Instant,
    /// The device is gone: the writer thread writes what is left and ends.
    closed: bool,
}

impl HeldState {
    fn write_out(&mut self) {
        if !self.bytes.is_empty() {
            // SerialOut's own errors are dealt with inside (a socket client forgotten).
            let _ = self.out.write_all(&self.bytes);
            self.bytes.clear();
        }
    }
}

impl LineOut {
    /// Output to `out`, and the thread that writes what waited too long.
    fn new(out: SerialOut) -> io::Result<LineOut> {
        let held = Arc::new(Held {
            state: Mutex::new(HeldState {
                out,
                bytes: Vec::new(),
                since: Instant::now(),
                closed: false,
            }),
            waiting: Condvar::new(),
        });
        let writer = held.clone();
        std::thread::Builder::new()
            .name("serial-out".into())
            .spawn(move || {
                let mut state = writer.state.lock();
                while !state.closed {
                    if state.bytes.is_empty() {
                        writer.waiting.wait(&mut state);
                        continue;
                    }
                    let due = state.since + PARTIAL_LINE_WAIT;
                    if Instant::now() < due {
                        writer.waiting.wait_until(&mut state, due);
                        continue;
                    }
                    state.write_out();
                }
                state.write_out();
            })?;
        Ok(LineOut(held))
    }

    /// Writes what waits, and ends the writer thread.
    fn close(&self) {
        let mut state = self.0.state.lock();
        state.write_out();
        state.closed = true;
        drop(state);
        self.0.waiting.notify_one();
    }
}

impl Write for LineOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.0.state.lock();
        let was_empty = state.bytes.is_empty();
        state.bytes.extend_from_slice(buf);
        if buf.contains(&b'\n') || state.bytes.len() >= HOLD_MAX {
            state.write_out();
        } else if was_empty {
            state.since = Instant::now();
            drop(state);
            self.0.waiting.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct SerialDevice {
    uart: Serial<IrqEvent, NoEvents, LineOut>,
    irq: EventFd,
    out: LineOut,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: SerialOut) -> io::Result<Self> {
        let out = LineOut::new(out)?;
        let uart = Serial::new(IrqEvent(irq.try_clone()?), out.clone());
        Ok(SerialDevice { uart, irq, out })
    }

    /// Queues console input for the guest; returns how many bytes fit in the FIFO.
    fn enqueue(&mut self, input: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => n,
            Err(UartError::FullFifo) => 0,
            Err(e) => {
                log::warn!("serial input: {e}");
                input.len()
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            log::warn!("serial output: {e}");
        }
    }

    fn reset(&mut self) {
        match self.irq.try_clone() {
            Ok(irq) => self.uart = Serial::new(IrqEvent(irq), self.out.clone()),
            Err(e) => log::error!("serial reset: cloning the interrupt eventfd: {e}"),
        }
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        Some(state::encode(&UartState::from(self.uart.state())))
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let saved: UartState = state::decode("UART", bytes)?;
        let irq = self
            .irq
            .try_clone()
            .map_err(|e| format!("UART interrupt eventfd: {e}"))?;
        self.uart = Serial::from_state(&saved.into(), IrqEvent(irq), NoEvents, self.out.clone())
            .map_err(|e| format!("UART: {e}"))?;
        Ok(())
    }
}

impl Drop for SerialDevice {
    fn drop(&mut self) {
        self.out.close();
    }
}

/// The UART's registers and receive FIFO (vm-superio's SerialState, which has no serde
/// form of its own).
#[derive(Serialize, Deserialize)]
struct UartState {
    registers: [u8; 9],
    in_buffer: Vec<u8>,
}

impl From<SerialState> for UartState {
    fn from(s: SerialState) -> Self {
        UartState {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }
}

impl From<UartState> for SerialState {
    fn from(s: UartState) -> Self {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            s.registers;
        SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: s.in_buffer,
        }
    }
}

/// The console behind the UART: its output side, and what feeds its input.
pub struct Console {
    pub out: SerialOut,
    input: ConsoleInput,
}

enum ConsoleInput {
    Stdin,
    Unix(UnixListener, Arc<Mutex<Option<UnixStream>>>),
    /// The gateway's chardev: input comes on the same socket output goes to.
    Chardev(UnixStream),
    None,
}

/// Removes a listening socket's path when the VM ends.
pub struct SocketPath(PathBuf);

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Console {
    /// Opens the console a command line names (vmm-core run on its own).
    pub fn open(config: &SerialConfig) -> io::Result<(Console, Option<SocketPath>)> {
        Ok(match config {
            SerialConfig::Stdout => (Console::stdout(), None),
            SerialConfig::None => (Console::none(), None),
            SerialConfig::File(p) => (
                Console::file(File::create(p).map_err(|e| with_path(e, p))?),
                None,
            ),
            SerialConfig::Unix(p) => {
                let listener = UnixListener::bind(p).map_err(|e| with_path(e, p))?;
                (Console::listener(listener), Some(SocketPath(p.clone())))
            }
            SerialConfig::Chardev(id) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("chardev:{id}: chardevs are qmp-gateway's (--chardev)"),
                ))
            }
        })
    }

    /// Output to stdout, input from stdin.
    pub fn stdout() -> Console {
        Console {
            out: SerialOut::Stdout,
            input: ConsoleInput::Stdin,
        }
    }

    pub fn none() -> Console {
        Console {
            out: SerialOut::Discard,
            input: ConsoleInput::None,
        }
    }

    /// Output appended to an open file; no input.
    pub fn file(file: File) -> Console {
        Console {
            out: SerialOut::File(Arc::new(Mutex::new(file))),
            input: ConsoleInput::None,
        }
    }

    /// Clients of a listening socket, one at a time, both ways.
    pub fn listener(listener: UnixListener) -> Console {
        let client = Arc::new(Mutex::new(None));
        Console {
            out: SerialOut::Unix(client.clone()),
            input: ConsoleInput::Unix(listener, client),
        }
    }

    /// The gateway's chardev, connected: output written to `stream` (a failed write is
    /// dropped, as a socket client's), input read from it.
    pub fn stream(stream: UnixStream) -> io::Result<Console> {
        let writer = stream.try_clone()?;
        Ok(Console {
            out: SerialOut::Unix(Arc::new(Mutex::new(Some(writer)))),
            input: ConsoleInput::Chardev(stream),
        })
    }

    /// Starts the threads that feed console input into `uart`.
    pub fn start_input(self, uart: Arc<Mutex<SerialDevice>>) -> io::Result<()> {
        match self.input {
            ConsoleInput::None => {}
            ConsoleInput::Stdin => spawn_reader("serial-stdin", io::stdin(), uart)?,
            ConsoleInput::Chardev(stream) => spawn_reader("serial-chardev", stream, uart)?,
            ConsoleInput::Unix(listener, slot) => {
                std::thread::Builder::new()
                    .name("serial-accept".into())
                    .spawn(move || {
                        for conn in listener.incoming() {
                            let Ok(conn) = conn else { continue };
                            let Ok(writer) = conn.try_clone() else {
                                continue;
                            };
                            *slot.lock() = Some(writer);
                            if let Err(e) = spawn_reader("serial-unix", conn, uart.clone()) {
                                log::warn!("serial socket reader: {e}");
                            }
                        }
                    })?;
            }
        }
        Ok(())
    }
}

fn with_path(e: io::Error, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

fn spawn_reader(
    name: &str,
    mut source: impl Read + Send + 'static,
    uart: Arc<Mutex<SerialDevice>>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = source.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let taken = uart.lock().enqueue(rest);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        // The guest has not drained the 64-byte FIFO yet.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmit_reaches_the_console_and_input_reaches_the_guest() {
        let path = std::env::temp_dir().join(format!("flotilla-serial-{}", std::process::id()));
        let (console, _guard) = Console::open(&SerialConfig::File(path.clone())).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), console.out.clone()).unwrap();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"hi\n");
        // Enable the received-data interrupt, queue a byte, read it from RBR.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue(b"x"), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'x');
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn output_waits_for_its_line_end_a_little_at_most() {
        let path =
            std::env::temp_dir().join(format!("flotilla-serial-hold-{}", std::process::id()));
        let (console, _guard) = Console::open(&SerialConfig::File(path.clone())).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq, console.out.clone()).unwrap();
        let read = || std::fs::read(&path).unwrap();
        let start = Instant::now();
        for b in b"a line\nand a prompt: " {
            dev.write(0, &[*b]);
        }
        let written = read();
        if start.elapsed() < PARTIAL_LINE_WAIT {
            assert_eq!(written, b"a line\n", "the partial line waits");
        }
        // It goes out on its own soon after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while read() != b"a line\nand a prompt: " {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                String::from_utf8_lossy(&read())
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // A reset's UART writes on; what waits when the device goes is written.
        dev.reset();
        for b in b"x\ny" {
            dev.write(0, &[*b]);
        }
        drop(dev);
        let deadline = Instant::now() + Duration::from_secs(5);
        while read() != b"a line\nand a prompt: x\ny" {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                String::from_utf8_lossy(&read())
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::remove_file(&path).unwrap();
    }
}
