//! The vCPUs' CPU model (ipc::CpuModel): KVM's supported CPUID with the features the
//! gateway's `--cpu host,FEATURE=off` turned off cleared, and the MSRs that belong to
//! those features taken out of the list the vCPUs' state is read and written with (KVM
//! already refuses the guest an MSR whose CPUID bit it lacks; we neither carry it in a
//! migration nor set it).

use ipc::{CpuModel, CpuidBits, CpuidReg};
use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// A feature's bit and the MSR that exists only with it (Intel's SDM; KVM gates the
/// guest's RDMSR/WRMSR of each on the bit). Features sharing an MSR with others (SPEC_CTRL
/// with AMD's IBRS/SSBD) are not here: turning one off leaves the MSR to the others.
const FEATURE_MSRS: &[(CpuidBits, u32)] = &[
    // arch-capabilities: IA32_ARCH_CAPABILITIES.
    (bits(7, 0, CpuidReg::Edx, 29), 0x10a),
    // core-capability: IA32_CORE_CAPABILITIES.
    (bits(7, 0, CpuidReg::Edx, 30), 0xcf),
    // tsc-adjust: IA32_TSC_ADJUST.
    (bits(7, 0, CpuidReg::Ebx, 1), 0x3b),
    // pdcm: IA32_PERF_CAPABILITIES.
    (bits(1, 0, CpuidReg::Ecx, 15), 0x345),
    // xsaves: IA32_XSS.
    (bits(0xd, 1, CpuidReg::Eax, 3), 0xda0),
];

const fn bits(leaf: u32, subleaf: u32, reg: CpuidReg, bit: u32) -> CpuidBits {
    CpuidBits {
        leaf,
        subleaf,
        reg,
        mask: 1 << bit,
    }
}

/// Whether `e` is the leaf (and, where the index matters, subleaf) `b` is in.
fn holds(e: &kvm_cpuid_entry2, b: &CpuidBits) -> bool {
    e.function == b.leaf && (e.index == b.subleaf || e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
}

fn reg(e: &mut kvm_cpuid_entry2, r: CpuidReg) -> &mut u32 {
    match r {
        CpuidReg::Eax => &mut e.eax,
        CpuidReg::Ebx => &mut e.ebx,
        CpuidReg::Ecx => &mut e.ecx,
        CpuidReg::Edx => &mut e.edx,
    }
}

/// `cpuid` with `model`'s features cleared.
pub fn cpuid(supported: &CpuId, model: &CpuModel) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        for b in &model.off {
            if holds(e, b) {
                *reg(e, b.reg) &= !b.mask;
            }
        }
    }
    cpuid
}

/// The first of `model`'s features turned off that `held` (a vCPU's CPUID as KVM holds
/// it, KVM_GET_CPUID2) still has, with the bits still set.
pub fn kept(held: &CpuId, model: &CpuModel) -> Option<CpuidBits> {
    model.off.iter().find_map(|b| {
        let set = (held.as_slice().iter())
            .filter(|e| holds(e, b))
            .fold(0, |acc, e| acc | (*reg(&mut e.clone(), b.reg) & b.mask));
        (set != 0).then_some(CpuidBits { mask: set, ..*b })
    })
}

/// `list` (KVM_GET_MSR_INDEX_LIST) without the MSRs of `model`'s features turned off.
pub fn msrs(list: &[u32], model: &CpuModel) -> Vec<u32> {
    let gone: Vec<u32> = (FEATURE_MSRS.iter())
        .filter(|(feature, _)| {
            (model.off.iter()).any(|b| {
                b.leaf == feature.leaf
                    && b.subleaf == feature.subleaf
                    && b.reg == feature.reg
                    && b.mask & feature.mask != 0
            })
        })
        .map(|&(_, msr)| msr)
        .collect();
    list.iter().copied().filter(|m| !gone.contains(m)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, flags: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn features_off_are_cleared_in_their_subleaf_only() {
        let supported = CpuId::from_entries(&[
            entry(7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, u32::MAX),
            entry(7, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, u32::MAX),
            entry(1, 0, 0, u32::MAX),
        ])
        .unwrap();
        let model = CpuModel {
            off: vec![bits(7, 0, CpuidReg::Edx, 29), bits(1, 0, CpuidReg::Edx, 25)],
        };
        let c = cpuid(&supported, &model);
        let edx: Vec<u32> = c.as_slice().iter().map(|e| e.edx).collect();
        assert_eq!(edx, vec![!(1 << 29), u32::MAX, !(1 << 25)]);
        assert_eq!(cpuid(&supported, &CpuModel::default()), supported);
    }

    #[test]
    fn a_feature_kvm_kept_is_found() {
        let held =
            CpuId::from_entries(&[entry(7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0x10)]).unwrap();
        let off = |bit| CpuModel {
            off: vec![bits(7, 0, CpuidReg::Edx, bit)],
        };
        assert_eq!(kept(&held, &off(29)), None);
        assert_eq!(kept(&held, &off(4)), Some(bits(7, 0, CpuidReg::Edx, 4)));
        assert_eq!(kept(&held, &CpuModel::default()), None);
    }

    #[test]
    fn a_features_msr_goes_with_it() {
        let list = [0x10, 0x10a, 0xcf, 0x3b];
        let off = |b| CpuModel { off: vec![b] };
        let arch = off(bits(7, 0, CpuidReg::Edx, 29));
        assert_eq!(msrs(&list, &arch), vec![0x10, 0xcf, 0x3b]);
        // Another bit of the same register owns no MSR.
        assert_eq!(msrs(&list, &off(bits(7, 0, CpuidReg::Edx, 28))), list);
        assert_eq!(msrs(&list, &CpuModel::default()), list);
    }
}
