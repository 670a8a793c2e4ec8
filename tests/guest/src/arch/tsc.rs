//! The TSC as a clock for rates, timeouts and benchmarks: calibrated once against the PIT
//! (pit.rs). RDTSC also works in ring 3 (CR4.TSD is clear), where the I/O loops time
//! themselves.

use crate::arch::{cpu, pit};
use crate::console;
use core::sync::atomic::{AtomicU64, Ordering};

const CALIBRATION_US: u64 = 25_000;
/// Assumed when the PIT does not count (only rates and timeouts are affected).
const FALLBACK_HZ: u64 = 1_000_000_000;

static HZ: AtomicU64 = AtomicU64::new(0);

/// Measures the TSC frequency against the PIT (about 25 ms, ring 0). Idempotent.
pub fn calibrate() -> u64 {
    let known = HZ.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let mut watch = pit::Stopwatch::start();
    let start = cpu::rdtsc();
    let mut elapsed = 0;
    while elapsed < CALIBRATION_US {
        elapsed = watch.elapsed_us();
    }
    let cycles = cpu::rdtsc().wrapping_sub(start);
    let hz = if elapsed == u64::MAX || cycles == 0 {
        console::error("tsc: calibration against the PIT failed, assuming 1 GHz").end();
        FALLBACK_HZ
    } else {
        (u128::from(cycles) * 1_000_000 / u128::from(elapsed)) as u64
    };
    HZ.store(hz, Ordering::Relaxed);
    hz
}

/// TSC ticks per second (after `calibrate`).
pub fn hz() -> u64 {
    match HZ.load(Ordering::Relaxed) {
        0 => FALLBACK_HZ,
        hz => hz,
    }
}

/// TSC ticks in `ms` milliseconds.
pub fn from_ms(ms: u64) -> u64 {
    (u128::from(hz()) * u128::from(ms) / 1000) as u64
}

/// Microseconds in `ticks` TSC ticks.
pub fn to_us(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(hz())) as u64
}

/// `bytes` moved in `ticks`, in tenths of MiB/s.
pub fn mib_s_tenths(bytes: u64, ticks: u64) -> u64 {
    if ticks == 0 {
        return 0;
    }
    (u128::from(bytes) * 10 * u128::from(hz()) / (u128::from(ticks) << 20)) as u64
}

/// `count` events in `ticks`, per second.
pub fn per_second(count: u64, ticks: u64) -> u64 {
    if ticks == 0 {
        return 0;
    }
    (u128::from(count) * u128::from(hz()) / u128::from(ticks)) as u64
}
