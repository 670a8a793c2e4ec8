//! The `serial-echo` scenario: the console's input side. Prints `GUEST ECHO READY`, then
//! reads COM1 (polled, the CPU halted between looks) and prints each line it received
//! as `GUEST ECHO <line>` (non-printable bytes as '?'); with `ticks=1` it also prints
//! `GUEST TICK <n>` every 100 ms without input, so the host sees output while its
//! clients come and go. Runs until powered off.

use crate::acpi::Acpi;
use crate::arch::cpu::inb;
use crate::arch::halt::halt_until;
use crate::cmdline;
use crate::console;

const COM1: u16 = 0x3f8;
/// LSR's data-ready bit.
const LSR_DR: u8 = 0x01;
/// Longest line kept; the rest of a longer one is dropped.
const LINE_MAX: usize = 120;

fn data_ready() -> bool {
    // SAFETY: COM1 belongs to the console; reading LSR has no side effect on output.
    unsafe { inb(COM1 + 5) & LSR_DR != 0 }
}

pub fn run(_acpi: &Acpi, cmdline: &[u8]) -> ! {
    let ticks = cmdline::param(cmdline, "ticks") == Some(b"1");
    console::line("GUEST ECHO READY").end();
    let mut line = [0u8; LINE_MAX];
    let mut len = 0;
    let mut tick = 0u64;
    loop {
        if !halt_until(100, data_ready) {
            if ticks {
                tick += 1;
                console::line("GUEST TICK ").dec(tick).end();
            }
            continue;
        }
        while data_ready() {
            // SAFETY: as above; reading RBR takes the byte from the FIFO.
            let byte = unsafe { inb(COM1) };
            match byte {
                b'\r' | b'\n' => {
                    if len > 0 {
                        console::line("GUEST ECHO ").ascii(&line[..len]).end();
                    }
                    len = 0;
                }
                _ if len < LINE_MAX => {
                    line[len] = byte;
                    len += 1;
                }
                _ => {}
            }
        }
    }
}
