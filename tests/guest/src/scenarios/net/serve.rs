//! Serving in ring 3 until stopped: the frame loops of the scenarios run in ring 3
//! ([`in_ring3`]); [`serve_until_stopped`] answers ARP, ICMP and UDP in ring-3 slices and,
//! when nothing arrives for a while, halts in ring 0 until a receive interrupt, the power
//! button, a configuration change (link status) or the deadline.

use super::host::Host;
use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::halt::halt_until;
use crate::arch::{cpu, interrupts, tsc, user};
use crate::console;
use crate::drivers::virtio_net::{NetDevice, MAX_QUEUE_PAIRS};
use core::sync::atomic::Ordering;

/// A ring-3 serving slice ends after this long without a frame (then the CPU halts until an
/// interrupt) or after SLICE_MS in any case (to look at the power button and link changes).
const IDLE_MS: u64 = 20;
const SLICE_MS: u64 = 100;
/// Longest halt between looks at the clock (the APIC timer also wakes the CPU every 10 ms).
const HALT_MS: u64 = 1000;

/// Runs `work` in ring 3; false after an error line if it faulted.
pub fn in_ring3(what: &str, mut work: impl FnMut()) -> bool {
    let mut call = || {
        work();
        0
    };
    user::call_reported("net", what, &mut call).is_some()
}

/// Serves (ARP, ICMP echo, UDP echo if the host has it on; other frames counted as dropped)
/// until the power button, or until `stop_ms` passed if given. Busy phases poll in ring 3;
/// idle phases halt in ring 0 with the receive queues' interrupts on. Prints
/// `GUEST NET LINK up|down` whenever the link status read after a configuration-change
/// interrupt (or, without a configuration vector, at every look) differs from the last one
/// reported; `link` is the status reported before.
pub fn serve_until_stopped(
    dev: &mut NetDevice,
    host: &mut Host,
    button: bool,
    stop_ms: Option<u64>,
    mut link: bool,
) {
    let config_vector = dev.transport.config_vector;
    let config_count = || config_vector.map_or(0, interrupts::count);
    let mut config_seen = config_count();
    let start = cpu::rdtsc();
    let stop = stop_ms.map(tsc::from_ms);
    let pressed = || button && power::POWER_BUTTON.load(Ordering::Acquire);
    loop {
        let mut idle = false;
        if !in_ring3("net serve", || {
            let begin = cpu::rdtsc();
            let mut last_frame = begin;
            loop {
                let now = cpu::rdtsc();
                if host.serve(dev, &mut |_| false) != 0 {
                    last_frame = now;
                } else if now - last_frame > tsc::from_ms(IDLE_MS) {
                    idle = true;
                    return;
                }
                if now - begin > tsc::from_ms(SLICE_MS) {
                    return;
                }
            }
        }) {
            return;
        }
        cpu::take_pending_interrupts();
        let config_now = config_count();
        if config_vector.is_none() || config_now != config_seen {
            config_seen = config_now;
            let up = dev.link_up();
            if up != link {
                link = up;
                console::line(if up {
                    "GUEST NET LINK up"
                } else {
                    "GUEST NET LINK down"
                })
                .end();
            }
        }
        if pressed() {
            console::line("GUEST POWER BUTTON").end();
            return;
        }
        let elapsed = cpu::rdtsc() - start;
        if stop.is_some_and(|stop| elapsed >= stop) {
            return;
        }
        if !idle {
            continue;
        }
        // Nothing for a while: halt until a frame's interrupt (or the button, a configuration
        // change, the stop time). Without a configuration vector the link is looked at after
        // every halt (at most HALT_MS).
        let mut counts = [0u32; MAX_QUEUE_PAIRS];
        for (queue, count) in counts.iter_mut().enumerate().take(dev.pairs) {
            let rx = dev.rx(queue);
            rx.vq.set_interrupts(true);
            *count = rx.vq.vector.map_or(0, interrupts::count);
        }
        let wait_ms = match stop {
            Some(stop) => tsc::to_us(stop.saturating_sub(elapsed)) / 1000 + 1,
            None => HALT_MS,
        }
        .min(HALT_MS);
        let pairs = dev.pairs;
        halt_until(wait_ms, || {
            pressed()
                || config_count() != config_seen
                || dev.rx[..pairs]
                    .iter()
                    .zip(counts)
                    .any(|(rx, count)| match rx {
                        Some(rx) => {
                            rx.vq.has_used() || rx.vq.vector.map_or(0, interrupts::count) != count
                        }
                        None => false,
                    })
        });
        for queue in 0..dev.pairs {
            dev.rx(queue).vq.set_interrupts(false);
        }
    }
}

/// Arms the power button; says so when there is none and nothing else will end the scenario.
pub fn power_button(acpi: &Acpi, stop_ms: Option<u64>) -> bool {
    let button = power::setup_power_button(acpi);
    if !button {
        let line = console::line("GUEST INFO net: no ACPI power button");
        match stop_ms {
            Some(ms) => line.s(", stopping after ms=").dec(ms),
            None => line.s(" (hardware-reduced ACPI?): serving until the VM is stopped"),
        }
        .end();
    }
    button
}
