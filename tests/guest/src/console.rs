//! Serial console: the 16550 UART at I/O port 0x3f8, polled. This is the guest's only output
//! and the host-side tests match on its lines, so every line goes through [`Line`], which holds
//! the console lock for the whole line and ends it with "\r\n" when dropped.
//!
//! Numbers are formatted by hand instead of through `core::fmt`: ring 0 is emulated on the
//! kvm-pvm hosts (about 2 M instructions/s) and every output byte is already two VM exits.

use crate::arch::cpu::{inb, outb, outsb};
use crate::sync::SpinLock;
use core::sync::atomic::{AtomicU32, Ordering};

const COM1: u16 = 0x3f8;
const LSR_THRE: u8 = 0x20;
const FIFO_SIZE: u32 = 16;

static LOCK: SpinLock = SpinLock::new();
/// Bytes that may be written before LSR must be polled again (guarded by LOCK).
static ROOM: AtomicU32 = AtomicU32::new(0);
/// FIFO_SIZE with a working FIFO, else 1.
static BURST: AtomicU32 = AtomicU32::new(1);

/// 115200 8N1, FIFOs on, no UART interrupts (we poll LSR.THRE).
pub fn init() {
    // SAFETY: COM1 belongs to the console.
    unsafe {
        outb(COM1 + 1, 0x00); // IER: no interrupts
        outb(COM1 + 3, 0x80); // LCR: DLAB to reach the divisor
        outb(COM1, 0x01); // DLL: divisor 1 = 115200 baud
        outb(COM1 + 1, 0x00); // DLM
        outb(COM1 + 3, 0x03); // LCR: 8 data bits, no parity, 1 stop bit
        outb(COM1 + 2, 0x07); // FCR: enable and clear FIFOs
        outb(COM1 + 4, 0x03); // MCR: DTR | RTS
                              // IIR bits 7:6 = 11: a 16550A whose 16-byte FIFO is now on.
        let burst = if inb(COM1 + 2) & 0xc0 == 0xc0 {
            FIFO_SIZE
        } else {
            1
        };
        BURST.store(burst, Ordering::Relaxed);
    }
}

/// Bytes that may be written now (at least 1), polling LSR first if none were left. With
/// the FIFO on, THRE means "FIFO empty": then FIFO_SIZE bytes fit without polling, which
/// halves the VM exits per byte (each costs tens of microseconds on kvm-pvm).
fn room() -> u32 {
    let room = ROOM.load(Ordering::Relaxed);
    if room != 0 {
        return room;
    }
    // Bounded: a missing UART reads 0xff (THRE set) and a wedged one must not hang us.
    for _ in 0..100_000 {
        // SAFETY: COM1 belongs to the console.
        if unsafe { inb(COM1 + 5) } & LSR_THRE != 0 {
            break;
        }
    }
    BURST.load(Ordering::Relaxed)
}

fn put_byte(byte: u8) {
    ROOM.store(room() - 1, Ordering::Relaxed);
    // SAFETY: COM1 belongs to the console.
    unsafe { outb(COM1, byte) }
}

/// As many bytes as fit in the FIFO at a time, by `rep outsb`: still one VM exit per byte,
/// but the byte loop is the emulator's, not ring-0 code that kvm-pvm emulates instruction
/// by instruction (7 instead of 17 us per byte between exits, measured).
fn put_str(mut text: &[u8]) {
    while !text.is_empty() {
        let room = room();
        let count = text.len().min(room as usize);
        // SAFETY: COM1 belongs to the console.
        unsafe { outsb(COM1, &text[..count]) }
        ROOM.store(room - count as u32, Ordering::Relaxed);
        text = &text[count..];
    }
}

/// One output line. Start it with [`line`] or [`error`], add parts, and drop it (or call
/// [`Line::end`]) to emit "\r\n" and release the console.
pub struct Line {
    locked: bool,
}

/// Starts a line with `text` (normally beginning with "GUEST ").
pub fn line(text: &str) -> Line {
    LOCK.lock();
    put_str(text.as_bytes());
    Line { locked: true }
}

/// Starts a `GUEST ERROR <text>` line.
pub fn error(text: &str) -> Line {
    line("GUEST ERROR ").s(text)
}

/// Starts a line on a path that must not deadlock (panics, exceptions): if the lock stays
/// held, e.g. by this very CPU when it faulted mid-line, it writes anyway.
pub fn line_forced(text: &str) -> Line {
    let locked = LOCK.lock_bounded(200_000);
    if !locked {
        // Someone (maybe this CPU) is mid-line: start on a fresh one.
        put_str(b"\r\n");
    }
    put_str(text.as_bytes());
    Line { locked }
}

impl Line {
    pub fn s(self, text: &str) -> Self {
        put_str(text.as_bytes());
        self
    }

    /// Bytes from outside (cmdline words, table signatures); non-printable ones become '?'.
    pub fn ascii(self, bytes: &[u8]) -> Self {
        for &byte in bytes {
            put_byte(if byte.is_ascii_graphic() || byte == b' ' {
                byte
            } else {
                b'?'
            });
        }
        self
    }

    pub fn dec(self, mut value: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        put_str(&digits[at..]);
        self
    }

    /// At least `width` decimal digits (zero-padded on the left), e.g. fractions: 7 -> `007`.
    pub fn dec_width(mut self, value: u64, width: usize) -> Self {
        let mut digits = 1;
        let mut rest = value / 10;
        while rest != 0 {
            digits += 1;
            rest /= 10;
        }
        for _ in digits..width {
            self = self.s("0");
        }
        self.dec(value)
    }

    /// `0x` followed by lowercase hex digits without leading zeros.
    pub fn hex(self, value: u64) -> Self {
        let mut digits = [0u8; 16];
        let mut at = digits.len();
        let mut rest = value;
        loop {
            at -= 1;
            digits[at] = b"0123456789abcdef"[(rest & 0xf) as usize];
            rest >>= 4;
            if rest == 0 {
                break;
            }
        }
        put_str(b"0x");
        put_str(&digits[at..]);
        self
    }

    /// Exactly `width` lowercase hex digits (no prefix; higher digits are dropped), as in
    /// PCI addresses `bb:dd.f`.
    pub fn hex_digits(self, value: u64, width: usize) -> Self {
        let mut digits = [0u8; 16];
        let width = width.min(digits.len());
        for (i, digit) in digits[..width].iter_mut().enumerate() {
            let shift = 4 * (width - 1 - i);
            *digit = b"0123456789abcdef"[((value >> shift) & 0xf) as usize];
        }
        put_str(&digits[..width]);
        self
    }

    /// A value given in tenths, printed with one decimal: 1234 -> `123.4`.
    pub fn tenths(self, value: u64) -> Self {
        self.dec(value / 10).s(".").dec(value % 10)
    }

    pub fn flag(self, name: &str, value: bool) -> Self {
        self.s(name).s(if value { "1" } else { "0" })
    }

    pub fn end(self) {}
}

impl Drop for Line {
    fn drop(&mut self) {
        put_str(b"\r\n");
        if self.locked {
            LOCK.unlock();
        }
    }
}

/// For panic messages only (they arrive as `fmt::Arguments`).
impl core::fmt::Write for Line {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        put_str(text.as_bytes());
        Ok(())
    }
}
