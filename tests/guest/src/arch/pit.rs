//! Time: the i8254 PIT's channel 0 counter as the timebase for delays and timeouts (AP
//! start-up, ACPI enable, power-off). Channel 0 needs no gate (microvm may have no port 0x61
//! to gate channel 2) and is present on QEMU microvm, q35 and Flotilla's in-kernel PIT.
//!
//! Channel 0 runs in mode 0 with a count of 65536, so it counts down and wraps freely; we
//! latch and read it and accumulate the differences. The one interrupt it raises on the first
//! terminal count is masked at the PIC and never routed through the I/O APIC.

use crate::arch::cpu::{inb, outb};
use crate::console;
use core::sync::atomic::{AtomicBool, Ordering};

const CHANNEL0: u16 = 0x40;
const COMMAND: u16 = 0x43;
pub const HZ: u64 = 1_193_182;
/// Consecutive identical reads after which the PIT is considered absent (reads of a missing
/// device return the same value forever; a running counter changes every ~0.84 us).
const STUCK_READS: u32 = 2_000;

static DEAD_REPORTED: AtomicBool = AtomicBool::new(false);

pub fn init() {
    // SAFETY: the PIT belongs to this module.
    unsafe {
        outb(COMMAND, 0x30); // channel 0, lobyte/hibyte, mode 0, binary
        outb(CHANNEL0, 0);
        outb(CHANNEL0, 0);
    }
}

fn read_counter() -> u16 {
    // SAFETY: as in `init`; latching does not disturb counting.
    unsafe {
        outb(COMMAND, 0x00); // latch channel 0
        let low = inb(CHANNEL0);
        let high = inb(CHANNEL0);
        u16::from_le_bytes([low, high])
    }
}

/// Elapsed-time measurement from its creation.
pub struct Stopwatch {
    last: u16,
    ticks: u64,
    unchanged: u32,
    dead: bool,
}

impl Stopwatch {
    pub fn start() -> Self {
        Self {
            last: read_counter(),
            ticks: 0,
            unchanged: 0,
            dead: false,
        }
    }

    /// Microseconds since `start`. Polls must come at least every 55 ms (one counter period)
    /// to be exact; slower polling only makes waits longer, never shorter. A PIT that does not
    /// count is reported once and makes every wait expire at once rather than hang the guest.
    pub fn elapsed_us(&mut self) -> u64 {
        if self.dead {
            return u64::MAX;
        }
        let now = read_counter();
        if now == self.last {
            self.unchanged += 1;
            if self.unchanged >= STUCK_READS {
                self.dead = true;
                if !DEAD_REPORTED.swap(true, Ordering::Relaxed) {
                    console::error("pit channel 0 is not counting: timeouts expire at once").end();
                }
                return u64::MAX;
            }
        } else {
            self.unchanged = 0;
            // Counting down: the elapsed ticks are last - now, modulo the 65536 period.
            self.ticks += u64::from(self.last.wrapping_sub(now));
            self.last = now;
        }
        self.ticks * 1_000_000 / HZ
    }
}

/// Polls `done` until it returns true (-> true) or `timeout_us` passes (-> false).
pub fn wait_until(timeout_us: u64, mut done: impl FnMut() -> bool) -> bool {
    let mut watch = Stopwatch::start();
    loop {
        if done() {
            return true;
        }
        if watch.elapsed_us() >= timeout_us {
            return done();
        }
    }
}

pub fn delay_us(us: u64) {
    wait_until(us, || false);
}
