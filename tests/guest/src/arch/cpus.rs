//! The CPU table: CPU index (0 = the BSP) <-> local APIC ID, which CPUs are online, and
//! [`MAX_CPUS`], which sizes every per-CPU array (stacks, TSSs, ring-3 contexts). smp.rs fills
//! it as it starts the APs; everything per-CPU looks itself up here.

use crate::arch::apic;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// CPUs this kernel can run (index 0 = BSP). Sizes the per-CPU stacks and TSSs.
pub const MAX_CPUS: usize = 32;
const NO_APIC_ID: u32 = u32::MAX;

static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NO_APIC_ID) }; MAX_CPUS];
static ONLINE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static ONLINE_COUNT: AtomicU32 = AtomicU32::new(0);

/// Index of the CPU running this (0 if its APIC ID is unknown, which only the BSP can be
/// before `register_bsp`).
pub fn current_cpu() -> usize {
    let id = apic::id();
    APIC_IDS
        .iter()
        .position(|slot| slot.load(Ordering::Relaxed) == id)
        .unwrap_or(0)
}

pub fn online_count() -> u32 {
    ONLINE_COUNT.load(Ordering::Acquire)
}

/// Records the BSP as CPU 0 (call once its APIC is enabled).
pub fn register_bsp() {
    APIC_IDS[0].store(apic::id(), Ordering::Relaxed);
    ONLINE[0].store(true, Ordering::Relaxed);
    ONLINE_COUNT.store(1, Ordering::Release);
}

/// Gives CPU `index` (an AP about to be started) its APIC ID.
pub fn assign(index: usize, apic_id: u32) {
    APIC_IDS[index].store(apic_id, Ordering::Relaxed);
}

/// The lowest index (not the BSP's) with no APIC ID yet, for a CPU started later.
pub fn free_index() -> Option<usize> {
    (1..MAX_CPUS).find(|&i| APIC_IDS[i].load(Ordering::Relaxed) == NO_APIC_ID)
}

/// The APIC ID of CPU `index`, if it has one.
pub fn apic_id(index: usize) -> Option<u32> {
    let id = APIC_IDS.get(index)?.load(Ordering::Relaxed);
    (id != NO_APIC_ID).then_some(id)
}

/// The index of the CPU with this APIC ID, if it has one.
pub fn index_of(apic_id: u32) -> Option<usize> {
    APIC_IDS
        .iter()
        .position(|slot| slot.load(Ordering::Relaxed) == apic_id)
}

/// Forgets the APIC ID of CPU `index` (an AP that never started).
pub fn unassign(index: usize) {
    APIC_IDS[index].store(NO_APIC_ID, Ordering::Relaxed);
}

/// Called by CPU `index` itself once it is ready.
pub fn mark_online(index: usize) {
    ONLINE[index].store(true, Ordering::Release);
    ONLINE_COUNT.fetch_add(1, Ordering::AcqRel);
}

pub fn is_online(index: usize) -> bool {
    ONLINE[index].load(Ordering::Acquire)
}
