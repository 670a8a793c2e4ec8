//! The `cpuid` scenario: what the vCPU's CPUID says of features a -cpu line can turn off,
//! and whether the MSR that exists only with one can be read: prints
//! `GUEST CPUID arch-capabilities=<0|1> msr-0x10a=<read|gp> kvm-steal-time=<0|1>
//! lahf-lm=<0|1>` (CPUID.07H:EDX[29] and IA32_ARCH_CAPABILITIES, CPUID.40000001H:EAX[5],
//! CPUID.80000001H:ECX[0]), then idles as `idle` does.

use core::arch::x86_64::{__cpuid, __cpuid_count};

use crate::acpi::Acpi;
use crate::arch::interrupts;
use crate::console;
use crate::scenarios::idle;

const LEAF_EXT_FEATURES: u32 = 7;
const EDX_ARCH_CAPABILITIES: u32 = 1 << 29;
const IA32_ARCH_CAPABILITIES: u32 = 0x10a;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const EAX_KVM_STEAL_TIME: u32 = 1 << 5;
const LEAF_AMD_EXT_FEATURES: u32 = 0x8000_0001;
const ECX_LAHF_LM: u32 = 1;

/// Bit `mask` of a register of `leaf` (0 when the leaf is beyond its range's highest).
fn bit(leaf: u32, read: fn(core::arch::x86_64::CpuidResult) -> u32, mask: u32) -> u64 {
    let highest = __cpuid(leaf & 0xffff_0000).eax;
    u64::from(highest >= leaf && read(__cpuid_count(leaf, 0)) & mask != 0)
}

pub fn run(acpi: &Acpi) -> ! {
    let has = bit(LEAF_EXT_FEATURES, |r| r.edx, EDX_ARCH_CAPABILITIES);
    let msr = match interrupts::rdmsr_checked(IA32_ARCH_CAPABILITIES) {
        Some(_) => "read",
        None => "gp",
    };
    console::line("GUEST CPUID arch-capabilities=")
        .dec(has)
        .s(" msr-0x10a=")
        .s(msr)
        .s(" kvm-steal-time=")
        .dec(bit(LEAF_KVM_FEATURES, |r| r.eax, EAX_KVM_STEAL_TIME))
        .s(" lahf-lm=")
        .dec(bit(LEAF_AMD_EXT_FEATURES, |r| r.ecx, ECX_LAHF_LM))
        .end();
    idle::run(acpi)
}
