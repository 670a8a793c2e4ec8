//! The CPU and the platform around it: the PVH entry and the boot information it hands over,
//! the GDT/TSS, the IDT and its vectors, the local APIC, I/O APIC, PIC, PIT and TSC, the other
//! CPUs (start-up, per-CPU table, their mailboxes for work, CPUID topology check), ring 3,
//! timed halts, and memory (physical access through the identity map, device mappings, the
//! DMA pool).

pub mod ap_work;
pub mod apic;
pub mod boot;
pub mod cpu;
pub mod cpus;
pub mod frame;
pub mod gdt;
pub mod halt;
pub mod interrupts;
pub mod ioapic;
pub mod memory;
pub mod phys;
pub mod pic;
pub mod pit;
pub mod smp;
pub mod start_info;
pub mod topology;
pub mod tsc;
pub mod user;
pub mod vectors;
