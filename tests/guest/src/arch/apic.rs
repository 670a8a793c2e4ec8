//! The local APIC in xAPIC (MMIO) mode: enabling it, EOI, the INIT/SIPI inter-processor
//! interrupts that start the APs, and a fixed one that wakes an AP. The register base comes from the MADT (default 0xfee00000).

use crate::arch::cpu::{rdmsr, wrmsr};
use crate::arch::phys::{mmio_read, mmio_write};
use crate::arch::vectors::SPURIOUS_VECTOR;
use core::sync::atomic::{AtomicU64, Ordering};

pub const DEFAULT_BASE: u64 = 0xfee0_0000;

const REG_ID: u64 = 0x20;
const REG_TPR: u64 = 0x80;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_TIMER: u64 = 0x320;
const REG_TIMER_INITIAL: u64 = 0x380;
const REG_TIMER_DIVIDE: u64 = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for "divide by 16".
const TIMER_DIVIDE_16: u32 = 0b0011;
const SVR_ENABLE: u32 = 0x100;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;

static BASE: AtomicU64 = AtomicU64::new(DEFAULT_BASE);

pub fn set_base(base: u64) {
    BASE.store(base, Ordering::Relaxed);
}

fn read(reg: u64) -> u32 {
    // SAFETY: the xAPIC page is identity mapped (uncached) and only holds registers.
    unsafe { mmio_read::<u32>(BASE.load(Ordering::Relaxed) + reg) }
}

fn write(reg: u64, value: u32) {
    // SAFETY: as in `read`.
    unsafe { mmio_write::<u32>(BASE.load(Ordering::Relaxed) + reg, value) }
}

/// This CPU's (8-bit xAPIC) APIC ID.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Whether firmware left this CPU's APIC in x2APIC mode, where the MMIO page is dead.
pub fn in_x2apic_mode() -> bool {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    unsafe { rdmsr(IA32_APIC_BASE) & APIC_BASE_X2APIC != 0 }
}

/// Hardware-enables (MSR) and software-enables (spurious vector register) this CPU's APIC and
/// accepts all priorities.
pub fn enable() {
    // SAFETY: setting the global enable bit of IA32_APIC_BASE keeps the current base.
    unsafe {
        let msr = rdmsr(IA32_APIC_BASE);
        if msr & APIC_BASE_ENABLE == 0 {
            wrmsr(IA32_APIC_BASE, msr | APIC_BASE_ENABLE);
        }
    }
    write(REG_TPR, 0);
    write(REG_SVR, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
}

/// Starts this CPU's timer in periodic mode on `vector`, `count` ticks of the bus clock / 16
/// apart (KVM's APIC clock is 1 GHz, so 625_000 is 10 ms there). Used only as a wake-up
/// source for timed halts: the time itself is measured with the TSC.
pub fn start_periodic_timer(vector: u8, count: u32) {
    write(REG_TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(REG_LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(vector));
    write(REG_TIMER_INITIAL, count);
}

pub fn stop_timer() {
    write(REG_LVT_TIMER, LVT_MASKED);
    write(REG_TIMER_INITIAL, 0);
}

pub fn eoi() {
    write(REG_EOI, 0);
}

/// Waits (bounded) until the previous IPI left the ICR.
fn wait_icr_idle() -> bool {
    for _ in 0..100_000 {
        if read(REG_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
            return true;
        }
    }
    false
}

fn send_ipi(apic_id: u32, low: u32) -> bool {
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, low);
    wait_icr_idle()
}

/// INIT IPI (level assert): puts the target in wait-for-SIPI.
pub fn send_init(apic_id: u32) -> bool {
    send_ipi(apic_id, ICR_INIT | ICR_LEVEL_ASSERT)
}

/// A fixed interrupt on `vector` to the CPU with `apic_id` (wakes it from HLT).
pub fn send_fixed(apic_id: u32, vector: u8) -> bool {
    send_ipi(apic_id, ICR_LEVEL_ASSERT | u32::from(vector))
}

/// STARTUP IPI: the target starts in real mode at `page << 12`.
pub fn send_startup(apic_id: u32, page: u8) -> bool {
    send_ipi(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(page))
}
