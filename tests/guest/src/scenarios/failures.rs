//! Scenarios that end in a failure on purpose, to test how it is reported: `fault` (a ring-0
//! page fault: the guest's `GUEST PANIC exception=14 ...`), `triple-fault` and `cmpxchg16b`
//! (the VMM's report of a CPU shutdown and of an instruction kvm-pvm cannot emulate). The
//! `panic` scenario is a plain `panic!` in the dispatcher.

use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::cpu;
use crate::console;

/// A page fault in ring 0 (first address past the identity map): must end in `GUEST PANIC`.
pub fn ring0_fault() -> ! {
    // SAFETY: deliberately faults; the #PF handler reports it and halts this CPU.
    let value = unsafe { crate::arch::phys::mmio_read::<u8>(crate::arch::phys::MAPPED_END) };
    console::error("fault: read past the identity map returned ")
        .dec(u64::from(value))
        .end();
    cpu::halt_forever()
}

/// Loads an empty IDT and executes `ud2`: neither the #UD nor the double fault can be
/// delivered, so the CPU shuts down. The VMM must report that (QEMU resets instead).
pub fn triple_fault() -> ! {
    console::line("GUEST TRIPLE FAULT").end();
    let empty_idt = [0u16; 5];
    // SAFETY: deliberately ends this CPU's (and the VM's) execution.
    unsafe { core::arch::asm!("lidt [{}]", "ud2", in(reg) &empty_idt, options(noreturn)) }
}

/// `lock cmpxchg16b` in ring 0. With hardware virtualization it just runs; on kvm-pvm ring 0
/// is emulated and the emulator lacks it, so KVM stops the VM with KVM_EXIT_INTERNAL_ERROR,
/// which the VMM must report.
pub fn ring0_cmpxchg16b(acpi: &Acpi) -> ! {
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
