//! The IDT vectors with a fixed job, in one place: the interrupt dispatcher (interrupts.rs)
//! and the code that routes interrupts to them (ACPI power, the local APIC) both read them
//! here. Vectors handed out at run time (MSI-X) come from `interrupts::alloc_vector`.

/// Vector the ACPI SCI is routed to (acpi/power.rs).
pub const SCI_VECTOR: u8 = 0x30;
/// Vector of the local APIC timer (apic.rs): only wakes a halted CPU.
pub const TIMER_VECTOR: u8 = 0x31;
/// Vector of the IPI that wakes a halted AP to look at its mailbox (ap_work.rs).
pub const WAKE_VECTOR: u8 = 0x32;
/// Vector of the APIC's spurious interrupts (its handler does nothing, no EOI).
pub const SPURIOUS_VECTOR: u8 = 0xff;
