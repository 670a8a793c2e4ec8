//! The `idle` scenario (also the default): routes the SCI and arms the fixed power button (if
//! the platform has one), prints `GUEST IDLE[ no-power-button]`, and halts with interrupts on
//! until the button is pressed, then powers off.

use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::cpu;
use crate::console;
use core::sync::atomic::Ordering;

/// Arms the fixed power button (if the platform has one) and halts with interrupts on until
/// it is pressed; the APs are already halted with interrupts on.
pub fn run(acpi: &Acpi) -> ! {
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
