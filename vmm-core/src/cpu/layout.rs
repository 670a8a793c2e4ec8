//! Which vCPUs a VM may have and which it has. A vCPU's index is its KVM vCPU id, its APIC
//! ID and its ACPI processor UID (one socket of `max` cores, one thread each, as QEMU lays
//! out `-smp N,maxcpus=M`); the ACPI tables list every possible one, the present ones
//! enabled, and the CPUID topology counts `max` cores.

use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuLayout {
    max: u32,
    present: BTreeSet<u32>,
}

impl CpuLayout {
    /// `max` possible vCPUs, those of `present` there (indexes at or beyond `max` are left
    /// out: callers check them first).
    pub fn new(max: u32, present: impl IntoIterator<Item = u32>) -> CpuLayout {
        CpuLayout {
            max,
            present: present.into_iter().filter(|&i| i < max).collect(),
        }
    }

    /// `count` vCPUs, all there (no hotplug).
    pub fn all(count: u32) -> CpuLayout {
        CpuLayout::new(count, 0..count)
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn is_present(&self, index: u32) -> bool {
        self.present.contains(&index)
    }

    /// The present vCPUs' indexes, ascending.
    pub fn present(&self) -> impl Iterator<Item = u32> + '_ {
        self.present.iter().copied()
    }

    pub fn count(&self) -> usize {
        self.present.len()
    }
}
