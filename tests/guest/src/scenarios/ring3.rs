//! The ring-3 scenarios: `ring3` (10^8 iterations of integer work through `user::run`, the
//! speed of unprivileged code) and `ring3-checks` (a privileged instruction comes back as a
//! fault, port I/O works through the TSS bitmap, ring 3 still works afterwards).

use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::cpu;
use crate::arch::user::{self, UserFault};
use crate::console;

const RING3_ITERATIONS: u64 = 100_000_000;

/// Integer work for ring 3 (xorshift64 accumulated): no closed form the compiler could use.
fn ring3_work(iterations: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut sum: u64 = 0;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum = sum.wrapping_add(x);
    }
    sum
}

fn report_fault(what: &str, fault: UserFault) {
    console::line(what)
        .s(" exception=")
        .dec(fault.vector)
        .s(" error=")
        .hex(fault.error)
        .s(" rip=")
        .hex(fault.rip)
        .s(" cr2=")
        .hex(fault.cr2)
        .end();
}

/// `ring3`: RING3_ITERATIONS of integer work in ring 3, timed with the TSC.
pub fn run(acpi: &Acpi) -> ! {
    let start = cpu::rdtsc();
    let result = user::run(ring3_work, RING3_ITERATIONS);
    let cycles = cpu::rdtsc().wrapping_sub(start);
    match result {
        Ok(value) => console::line("GUEST RING3 OK iterations=")
            .dec(RING3_ITERATIONS)
            .s(" result=")
            .dec(value)
            .s(" tsc=")
            .dec(cycles)
            .end(),
        Err(fault) => report_fault("GUEST ERROR ring3 fault", fault),
    }
    power::poweroff(acpi)
}

/// A privileged instruction in ring 3 (`cli` with IOPL 0: #GP).
fn ring3_privileged(_: u64) -> u64 {
    cpu::disable_interrupts();
    0
}

/// Port I/O from ring 3 (allowed by the TSS I/O bitmap): reads the UART's line status.
fn ring3_port_io(_: u64) -> u64 {
    // SAFETY: reading LSR has no side effects the console cares about.
    u64::from(unsafe { cpu::inb(0x3fd) })
}

/// Checks that a real ring-3 fault comes back as `UserFault` (not as the exit gate), that
/// ring 3 can do port I/O, and that ring 3 still works after a fault.
pub fn checks(acpi: &Acpi) -> ! {
    match user::run(ring3_privileged, 0) {
        Ok(_) => console::error("ring3-checks: privileged instruction did not fault").end(),
        Err(fault) => report_fault("GUEST RING3 FAULT", fault),
    }
    match user::run(ring3_port_io, 0) {
        Ok(value) => console::line("GUEST RING3 IO OK lsr=").hex(value).end(),
        Err(fault) => report_fault("GUEST ERROR ring3 port I/O fault", fault),
    }
    match user::run(ring3_work, 1000) {
        Ok(value) => console::line("GUEST RING3 OK iterations=1000 result=")
            .dec(value)
            .end(),
        Err(fault) => report_fault("GUEST ERROR ring3 fault", fault),
    }
    power::poweroff(acpi)
}
