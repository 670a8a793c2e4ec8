//! The `cpuid` scenario: what the vCPU's CPUID says of features a -cpu line can turn off,
//! and whether the MSR that exists only with one can be read: prints
//! `GUEST CPUID arch-capabilities=<0|1> msr-0x10a=<read|gp> kvm-steal-time=<0|1>
//! lahf-lm=<0|1>` (CPUID.07H:EDX[29] and IA32_ARCH_CAPABILITIES, CPUID.40000001H:EAX[5],
//! CPUID.80000001H:ECX[0]), then the raw leaves QEMU's feature names cover, as the
//! CPUID instruction returns them (what the guest really has, whatever the VMM says):
//! `GUEST CPUID LEAVES 1.0=EAX:EBX:ECX:EDX 7.0=... ...` in hex, a leaf beyond its range's
//! highest left out; then idles as `idle` does.

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

/// The leaves and subleaves whose bits QEMU names as features (flotilla's table).
const FEATURE_LEAVES: &[(u32, u32)] = &[
    (1, 0),
    (6, 0),
    (7, 0),
    (7, 1),
    (0xd, 1),
    (0x4000_0001, 0),
    (0x8000_0001, 0),
    (0x8000_0007, 0),
    (0x8000_0008, 0),
    (0x8000_000a, 0),
    (0xc000_0001, 0),
];

/// Whether `leaf` is within its range (KVM's leaves: within what 0x40000000 says). A
/// range the CPU does not have answers with another leaf's data (Intel: the highest
/// basic leaf's), so its highest must also be in the range.
fn within(leaf: u32) -> bool {
    let highest = __cpuid(leaf & 0xffff_0000).eax;
    highest >= leaf && highest & 0xffff_0000 == leaf & 0xffff_0000
}

/// Bit `mask` of a register of `leaf` (0 when the leaf is beyond its range's highest).
fn bit(leaf: u32, read: fn(core::arch::x86_64::CpuidResult) -> u32, mask: u32) -> u64 {
    u64::from(within(leaf) && read(__cpuid_count(leaf, 0)) & mask != 0)
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
    let mut line = console::line("GUEST CPUID LEAVES");
    for &(leaf, subleaf) in FEATURE_LEAVES.iter().filter(|(l, _)| within(*l)) {
        let r = __cpuid_count(leaf, subleaf);
        line = line
            .s(" ")
            .hex(leaf.into())
            .s(".")
            .dec(subleaf.into())
            .s("=");
        for (i, reg) in [r.eax, r.ebx, r.ecx, r.edx].into_iter().enumerate() {
            line = if i == 0 { line } else { line.s(":") };
            line = line.hex(reg.into());
        }
    }
    line.end();
    idle::run(acpi)
}
