//! CPUID: what KVM supports, with the topology leaves rewritten so every vCPU reports
//! its own APIC id and all agree on one package of N cores, one thread each.

use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const FEAT_ECX_HYPERVISOR: u32 = 1 << 31;
const FEAT_EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;

const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `n` items (APIC id field widths).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Returns `supported` adjusted for vCPU `apic_id` of `cpus`.
pub fn for_vcpu(supported: &CpuId, apic_id: u32, cpus: u32) -> CpuId {
    let mut cpuid = supported.clone();
    let core_bits = id_bits(cpus);
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] addressable logical ids.
                let logical = 1u32 << core_bits;
                e.ebx = (e.ebx & 0xffff) | (apic_id << 24) | ((logical & 0xff) << 16);
                e.ecx |= FEAT_ECX_HYPERVISOR;
                if cpus > 1 {
                    e.edx |= FEAT_EDX_HTT;
                } else {
                    e.edx &= !FEAT_EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26] cores per package - 1; EAX[25:14] logical cpus sharing
                // this cache - 1: the L3 is shared by the package, L1/L2 per core.
                let level = (e.eax >> 5) & 0x7;
                if e.eax & 0x1f == 0 {
                    continue;
                }
                let sharing = if level >= 3 { (1 << core_bits) - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | (((1 << core_bits) - 1) << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = cpus;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_EXT_FEATURES => {
                if cpus > 1 {
                    e.ecx |= AMD_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !AMD_ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[15:12] APIC id bits for the core, ECX[7:0] cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | (cpus - 1);
            }
            LEAF_AMD_EXT_APIC_ID => {
                e.eax = apic_id;
                // One thread per core, core id = APIC id; one node.
                e.ebx = (e.ebx & !0xffff) | apic_id;
                e.ecx &= !0x7ff;
            }
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn supported() -> CpuId {
        CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_EXT_TOPOLOGY, 2),
            entry(LEAF_AMD_SIZE_IDS, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn apic_ids_and_counts_agree() {
        for cpus in 1..=4u32 {
            for id in 0..cpus {
                let c = for_vcpu(&supported(), id, cpus);
                let f = find(&c, LEAF_FEATURES, 0);
                assert_eq!(f.ebx >> 24, id);
                assert!(((f.ebx >> 16) & 0xff) >= cpus);
                assert_eq!(f.edx & FEAT_EDX_HTT != 0, cpus > 1);
                let core = find(&c, LEAF_EXT_TOPOLOGY, 1);
                assert_eq!(core.ebx, cpus);
                assert_eq!(core.edx, id);
                assert!(1 << core.eax >= cpus);
                assert_eq!(find(&c, LEAF_EXT_TOPOLOGY, 2).ecx >> 8, 0);
                assert_eq!(find(&c, LEAF_AMD_SIZE_IDS, 0).ecx & 0xff, cpus - 1);
            }
        }
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
