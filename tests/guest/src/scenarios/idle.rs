//! The `idle` scenario (also the default): routes the SCI and arms the fixed power button (if
//! the platform has one), prints `GUEST IDLE[ no-power-button]`, and halts with interrupts on
//! until the button is pressed, then powers off. Before that it fills
//! [`FLOTILLA_DUMP_PATTERN`], which the host's memsave, pmemsave and dump-guest-memory tests
//! look for.

use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::cpu;
use crate::console;
use core::sync::atomic::{AtomicU64, Ordering};

/// A page in .bss (zero in the image) filled with [`dump_pattern`] at run time, so only a
/// copy of guest memory holds it: the host finds it by its symbol (tests/tests/
/// gateway_memory_dump.rs).
#[no_mangle]
#[used]
pub static FLOTILLA_DUMP_PATTERN: [AtomicU64; 512] = [const { AtomicU64::new(0) }; 512];

/// Word `i` of the pattern (the host computes the same).
fn dump_pattern(i: u64) -> u64 {
    0x464c_4f54_494c_4c41 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Arms the fixed power button (if the platform has one) and halts with interrupts on until
/// it is pressed; the APs are already halted with interrupts on.
pub fn run(acpi: &Acpi) -> ! {
    for (i, word) in FLOTILLA_DUMP_PATTERN.iter().enumerate() {
        word.store(dump_pattern(i as u64), Ordering::Relaxed);
    }
    let button = power::setup_power_button(acpi);
    console::line(if button {
        "GUEST IDLE"
    } else {
        "GUEST IDLE no-power-button"
    })
    .end();
    loop {
        cpu::disable_interrupts();
        if button && power::POWER_BUTTON.load(Ordering::Acquire) {
            break;
        }
        cpu::enable_interrupts_and_halt();
    }
    console::line("GUEST POWER BUTTON").end();
    power::poweroff(acpi)
}
