//! Checks that what CPUID tells each CPU about itself matches its local APIC: the initial
//! APIC ID (leaf 1) and the x2APIC ID (leaf 0xB), so a VMM that hands every vCPU the same
//! CPUID, or numbers them differently from the MADT, is caught.

use core::arch::x86_64::{__cpuid, __cpuid_count};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::arch::apic;
use crate::arch::cpus::MAX_CPUS;
use crate::console;

const LEAF_EXT_TOPOLOGY: u32 = 0xb;

struct Seen {
    checked: AtomicBool,
    apic_id: AtomicU32,
    leaf1_id: AtomicU32,
    /// u32::MAX when leaf 0xB is absent.
    leaf_b_id: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const UNSEEN: Seen = Seen {
    checked: AtomicBool::new(false),
    apic_id: AtomicU32::new(0),
    leaf1_id: AtomicU32::new(0),
    leaf_b_id: AtomicU32::new(u32::MAX),
};
static SEEN: [Seen; MAX_CPUS] = [UNSEEN; MAX_CPUS];

/// Records this CPU's view; called by each CPU for itself (index as in smp).
pub fn check_this_cpu(index: usize) {
    let Some(seen) = SEEN.get(index) else { return };
    let max_leaf = __cpuid(0).eax;
    seen.apic_id.store(apic::id(), Ordering::Relaxed);
    seen.leaf1_id.store(__cpuid(1).ebx >> 24, Ordering::Relaxed);
    if max_leaf >= LEAF_EXT_TOPOLOGY {
        let id = __cpuid_count(LEAF_EXT_TOPOLOGY, 0).edx;
        seen.leaf_b_id.store(id, Ordering::Relaxed);
    }
    seen.checked.store(true, Ordering::Release);
}

/// Prints one `GUEST ERROR cpuid ...` line per CPU whose CPUID disagrees with its APIC.
pub fn report() {
    for seen in SEEN.iter().filter(|s| s.checked.load(Ordering::Acquire)) {
        let apic_id = seen.apic_id.load(Ordering::Relaxed);
        let leaf1 = seen.leaf1_id.load(Ordering::Relaxed);
        let leaf_b = seen.leaf_b_id.load(Ordering::Relaxed);
        let leaf_b_ok = leaf_b == u32::MAX || leaf_b == apic_id;
        if leaf1 != apic_id & 0xff || !leaf_b_ok {
            console::error("cpuid apic_id=")
                .dec(u64::from(apic_id))
                .s(" leaf1_apic_id=")
                .dec(u64::from(leaf1))
                .s(" leaf0xb_x2apic_id=")
                .dec(u64::from(leaf_b))
                .end();
        }
    }
}
