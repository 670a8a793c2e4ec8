//! Timed halts: waiting for an interrupt-driven condition with the CPU halted (in ring 0,
//! where waiting costs nothing on kvm-pvm hosts) rather than polling. The local APIC timer is
//! the wake-up source that bounds each halt; the time itself is measured with the TSC.

use crate::arch::vectors::TIMER_VECTOR;
use crate::arch::{apic, cpu, tsc};

/// APIC timer period for timed halts (bus clock / 16; 10 ms on KVM's 1 GHz APIC clock).
const WAKE_TICKS: u32 = 625_000;

/// Halts (interrupts on) until `done()` holds, checked with interrupts off after every wake-up,
/// or `timeout_ms` passes. The local APIC timer wakes the CPU every ~10 ms to look at the TSC.
pub fn halt_until(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    apic::start_periodic_timer(TIMER_VECTOR, WAKE_TICKS);
    let start = cpu::rdtsc();
    let limit = tsc::from_ms(timeout_ms);
    let reached = loop {
        cpu::disable_interrupts();
        if done() {
            break true;
        }
        if cpu::rdtsc() - start > limit {
            break false;
        }
        cpu::enable_interrupts_and_halt();
    };
    cpu::disable_interrupts();
    apic::stop_timer();
    reached
}
