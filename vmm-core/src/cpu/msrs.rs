//! MSR values every vCPU gets at power-on and at each reset.

use kvm_bindings::{kvm_msr_entry, Msrs};

const IA32_SYSENTER_CS: u32 = 0x174;
const IA32_SYSENTER_ESP: u32 = 0x175;
const IA32_SYSENTER_EIP: u32 = 0x176;
const IA32_MISC_ENABLE: u32 = 0x1a0;
const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
// KVM paravirtual MSRs: a reset must switch off kvmclock, async PF, steal time and PV EOI
// a previous boot enabled, or KVM keeps writing into the new boot's memory.
const MSR_KVM_WALL_CLOCK: u32 = 0x11;
const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The boot MSRs, keeping only those this KVM knows (`supported`, from
/// KVM_GET_MSR_INDEX_LIST).
pub fn boot_msrs(supported: &[u32]) -> Result<Msrs, vmm_sys_util::fam::Error> {
    let wanted = [
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_LSTAR, 0),
        (MSR_CSTAR, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (IA32_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
        (MSR_KVM_WALL_CLOCK, 0),
        (MSR_KVM_SYSTEM_TIME, 0),
        (MSR_KVM_WALL_CLOCK_NEW, 0),
        (MSR_KVM_SYSTEM_TIME_NEW, 0),
        (MSR_KVM_ASYNC_PF_EN, 0),
        (MSR_KVM_STEAL_TIME, 0),
        (MSR_KVM_PV_EOI_EN, 0),
    ];
    let entries: Vec<kvm_msr_entry> = wanted
        .iter()
        .filter(|(index, _)| supported.contains(index))
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_msrs_are_left_out() {
        let msrs = boot_msrs(&[IA32_MISC_ENABLE, MSR_LSTAR]).unwrap();
        let idx: Vec<u32> = msrs.as_slice().iter().map(|e| e.index).collect();
        assert_eq!(idx, vec![MSR_LSTAR, IA32_MISC_ENABLE]);
    }
}
