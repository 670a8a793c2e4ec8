//! What the guest does after `GUEST READY`, chosen by `scenario=NAME` on the command line.
//! Each scenario ends in a power-off, a reset, or an endless halt; none returns.
//!
//! `idle` (default), `poweroff`, `reboot` and `ring3` are the ones the host tests rely on;
//! `ring3-checks`, `fault` and `panic` exercise the guest's own failure reporting;
//! `triple-fault` and `cmpxchg16b` exercise the VMM's. `pci-list` and the `blk-*` scenarios
//! (PCI, virtio-blk) live in blk_scenarios.rs, the `net-*` scenarios (virtio-net) in
//! net_scenarios.rs.

use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::cpu;
use crate::arch::user::{self, UserFault};
use crate::{blk_scenarios, console, net_scenarios};
use core::sync::atomic::Ordering;

const RING3_ITERATIONS: u64 = 100_000_000;

pub fn run(name: Option<&[u8]>, acpi: &Acpi, cmdline: &[u8]) -> ! {
    match name {
        Some(name) if blk_scenarios::handles(name) => blk_scenarios::run(name, acpi, cmdline),
        Some(name) if net_scenarios::handles(name) => net_scenarios::run(name, acpi, cmdline),
        None | Some(b"idle") => idle(acpi),
        Some(b"poweroff") => power::poweroff(acpi),
        Some(b"reboot") => power::reboot(acpi),
        Some(b"ring3") => ring3(acpi),
        Some(b"ring3-checks") => ring3_checks(acpi),
        Some(b"fault") => ring0_fault(),
        Some(b"triple-fault") => triple_fault(),
        Some(b"cmpxchg16b") => ring0_cmpxchg16b(acpi),
        Some(b"panic") => panic!("requested by scenario=panic"),
        Some(other) => {
            console::error("unknown scenario=").ascii(other).end();
            power::poweroff(acpi)
        }
    }
}

/// Arms the fixed power button (if the platform has one) and halts with interrupts on until
/// it is pressed; the APs are already halted with interrupts on.
fn idle(acpi: &Acpi) -> ! {
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

fn ring3(acpi: &Acpi) -> ! {
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
fn ring3_checks(acpi: &Acpi) -> ! {
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

/// A page fault in ring 0 (first address past the identity map): must end in `GUEST PANIC`.
fn ring0_fault() -> ! {
    // SAFETY: deliberately faults; the #PF handler reports it and halts this CPU.
    let value = unsafe { crate::arch::phys::mmio_read::<u8>(crate::arch::phys::MAPPED_END) };
    console::error("fault: read past the identity map returned ")
        .dec(u64::from(value))
        .end();
    cpu::halt_forever()
}

/// Loads an empty IDT and executes `ud2`: neither the #UD nor the double fault can be
/// delivered, so the CPU shuts down. The VMM must report that (QEMU resets instead).
fn triple_fault() -> ! {
    console::line("GUEST TRIPLE FAULT").end();
    let empty_idt = [0u16; 5];
    // SAFETY: deliberately ends this CPU's (and the VM's) execution.
    unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) &empty_idt, options(noreturn)) }
}

/// `lock cmpxchg16b` in ring 0. With hardware virtualization it just runs; on kvm-pvm ring 0
/// is emulated and the emulator lacks it, so KVM stops the VM with KVM_EXIT_INTERNAL_ERROR,
/// which the VMM must report.
fn ring0_cmpxchg16b(acpi: &Acpi) -> ! {
    #[repr(C, align(16))]
    struct Pair([u64; 2]);
    let mut pair = Pair([1, 2]);
    let (low, high): (u64, u64);
    // SAFETY: `pair` is 16-byte aligned and live; rbx (reserved by LLVM) is swapped in and
    // restored around the instruction.
    unsafe {
        core::arch::asm!(
            "xchg {new_low}, rbx",
            "lock cmpxchg16b [{pair}]",
            "xchg {new_low}, rbx",
            pair = in(reg) &mut pair,
            new_low = inout(reg) 3u64 => _,
            inout("rax") 1u64 => low,
            inout("rdx") 2u64 => high,
            in("rcx") 4u64,
        );
    }
    if (low, high, pair.0) == (1, 2, [3, 4]) {
        console::line("GUEST CMPXCHG16B OK").end();
    } else {
        console::error("cmpxchg16b gave ")
            .dec(pair.0[0])
            .s(",")
            .dec(pair.0[1])
            .end();
    }
    power::poweroff(acpi)
}
