//! Thin wrappers over the privileged x86 instructions the kernel uses (port I/O, MSRs, control
//! registers, halting). Only instructions that KVM's emulator handles belong here: ring 0 is
//! emulated on kvm-pvm hosts, and e.g. `int3`, `rdtscp` or `xgetbv` would end the VM.

use core::arch::asm;

/// # Safety
/// Port I/O can reconfigure any device; the caller owns the port.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller owns the port (this function's contract); `out` accesses no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// # Safety
/// See [`outb`].
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: the caller owns the port (this function's contract); `out` accesses no memory.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// # Safety
/// See [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: the caller owns the port (this function's contract); `out` accesses no memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// `rep outsb`: the bytes of `bytes` to `port`, one after the other.
///
/// # Safety
/// See [`outb`].
pub unsafe fn outsb(port: u16, bytes: &[u8]) {
    // SAFETY: the caller owns the port (this function's contract); the instruction reads
    // `bytes.len()` bytes from `bytes` (DF is clear, as asm! requires) and writes no memory.
    unsafe {
        asm!(
            "rep outsb",
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            in("dx") port,
            options(nostack, readonly, preserves_flags),
        )
    }
}

/// # Safety
/// Reading some ports has side effects (e.g. clears status); the caller owns the port.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller owns the port and expects the read's side effects (this function's
    // contract); `in` accesses no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// # Safety
/// See [`inb`].
pub unsafe fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: the caller owns the port and expects the read's side effects (this function's
    // contract); `in` accesses no memory.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// # Safety
/// See [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: the caller owns the port and expects the read's side effects (this function's
    // contract); `in` accesses no memory.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    }
    value
}

/// # Safety
/// The MSR must exist (else #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists (this function's contract), so there is
    // no #GP; rdmsr writes only EAX and EDX.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// # Safety
/// The MSR must exist and the value must be valid for it.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the MSR exists and takes this value (this function's
    // contract).
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

pub fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.TSD is clear, rdtsc has no side effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) }
}

/// Atomically enables interrupts and halts until one arrives (the `sti` shadow covers `hlt`,
/// so an interrupt that became pending just before cannot be missed). Returns with interrupts
/// enabled.
pub fn enable_interrupts_and_halt() {
    // SAFETY: the caller has installed an IDT; handlers return normally.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
}

/// Opens the interrupt window for one instruction so that interrupts pending at the local
/// APIC are delivered now, then masks them again.
pub fn take_pending_interrupts() {
    // SAFETY: the caller has installed an IDT; handlers return normally.
    unsafe { asm!("sti", "nop", "cli", options(nomem, nostack)) }
}

/// Stops this CPU for good, interrupts off.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli; hlt only stops this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
