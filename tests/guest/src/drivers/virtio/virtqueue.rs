//! Split virtqueues (virtio 1.x, 2.7) in DMA-pool memory, made for use from ring 3:
//! descriptors, publishing chain heads, the doorbell (a plain MMIO write to the queue's notify
//! address, skipped when the device asked for no notification), reaping used entries, and
//! interrupt suppression (avail flags, or the used event index with EVENT_IDX). Guest memory
//! is identity mapped: addresses in descriptors are the buffers' own addresses.

use crate::arch::phys::mmio_write;
use core::sync::atomic::{fence, Ordering};

/// Largest queue the drivers set up (a larger device queue is reduced to this).
pub const MAX_QUEUE_SIZE: u16 = 256;

// Descriptor flags and ring flags (virtio 1.x, 2.7.5, 2.7.6, 2.7.8).
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
pub const DESC_INDIRECT: u16 = 4;
const AVAIL_NO_INTERRUPT: u16 = 1;
const USED_NO_NOTIFY: u16 = 1;

/// Offset of the used ring in the page shared with the available ring (which needs at most
/// 6 + 2 * 256 bytes; the used ring at most 6 + 8 * 256).
pub const USED_OFFSET: u64 = 1024;

/// One entry of a descriptor table.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// One split virtqueue. The device driver owns descriptor allocation (see virtio_blk/queue.rs);
/// this type publishes heads, rings the doorbell and reaps used entries. Usable from ring 3.
pub struct Virtqueue {
    pub index: u16,
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: u64,
    event_idx: bool,
    /// Our copy of avail.idx (the next free slot of the available ring).
    avail_idx: u16,
    /// avail.idx when the device was last considered for a notification.
    kicked_idx: u16,
    /// Used entries consumed so far.
    last_used: u16,
    interrupts: bool,
    /// IDT vector this queue's MSI-X entry raises, if it has one.
    pub vector: Option<u8>,
    /// Doorbell writes so far.
    pub notifies: u64,
}

// The ring accessors: the addresses are always inside this queue's rings (DMA-pool memory
// the transport allocated for it, identity mapped, naturally aligned), which the device reads
// and writes concurrently, hence volatile.

fn load16(addr: u64) -> u16 {
    // SAFETY: an aligned u16 inside this queue's rings (see above).
    unsafe { core::ptr::read_volatile(addr as usize as *const u16) }
}

fn store16(addr: u64, value: u16) {
    // SAFETY: an aligned u16 inside this queue's rings (see above).
    unsafe { core::ptr::write_volatile(addr as usize as *mut u16, value) }
}

fn load32(addr: u64) -> u32 {
    // SAFETY: an aligned u32 inside this queue's used ring (see above).
    unsafe { core::ptr::read_volatile(addr as usize as *const u32) }
}

impl Virtqueue {
    /// A queue the transport has just set up: `size` entries, the descriptor table at `desc`,
    /// the available ring at `rings` and the used ring at `rings + USED_OFFSET` (zeroed), the
    /// doorbell at `notify`; interrupts asked for until `set_interrupts(false)`.
    pub fn new(
        index: u16,
        size: u16,
        desc: u64,
        rings: u64,
        notify: u64,
        event_idx: bool,
        vector: Option<u8>,
    ) -> Virtqueue {
        Virtqueue {
            index,
            size,
            desc,
            avail: rings,
            used: rings + USED_OFFSET,
            notify,
            event_idx,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            interrupts: true,
            vector,
            notifies: 0,
        }
    }

    /// Writes descriptor `index` of the queue's own table.
    pub fn set_desc(&self, index: u16, desc: Desc) {
        let addr = self.desc + 16 * u64::from(index % self.size);
        // SAFETY: inside the descriptor table (DMA pool), which the device only reads.
        unsafe { core::ptr::write_volatile(addr as usize as *mut Desc, desc) }
    }

    /// Puts a chain head into the available ring (visible to the device at the next `kick`).
    pub fn push(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        store16(self.avail + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes everything pushed so far and notifies the device unless it said it does not
    /// need it (used flags, or avail_event with EVENT_IDX). Returns whether it notified.
    pub fn kick(&mut self) -> bool {
        let new = self.avail_idx;
        let old = self.kicked_idx;
        if new == old {
            return false;
        }
        // Descriptors and ring entries before the index (x86 keeps stores in order; this keeps
        // the compiler from reordering them).
        fence(Ordering::Release);
        store16(self.avail + 2, new);
        // The index store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        self.kicked_idx = new;
        let needed = if self.event_idx {
            let event = load16(self.used + 4 + 8 * u64::from(self.size));
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            load16(self.used) & USED_NO_NOTIFY == 0
        };
        if needed {
            // SAFETY: the notify address was checked against the notify region and mapped.
            unsafe { mmio_write::<u16>(self.notify, self.index) };
            self.notifies += 1;
        }
        needed
    }

    /// Whether the device has used entries we have not reaped.
    pub fn has_used(&self) -> bool {
        load16(self.used + 2) != self.last_used
    }

    /// The next used entry (head id, bytes written), if any.
    pub fn pop(&mut self) -> Option<(u32, u32)> {
        if !self.has_used() {
            return None;
        }
        // The entry is read after the index (compiler barrier; x86 loads are ordered).
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % self.size);
        let entry = self.used + 4 + 8 * slot;
        let id = load32(entry);
        let len = load32(entry + 4);
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            self.write_used_event();
        }
        Some((id, len))
    }

    /// With EVENT_IDX: interrupt at the next completion, or (suppressed) not before half the
    /// index space from here, renewed at every pop.
    fn write_used_event(&self) {
        let event = if self.interrupts {
            self.last_used
        } else {
            self.last_used.wrapping_add(0x8000)
        };
        store16(self.avail + 4 + 2 * u64::from(self.size), event);
    }

    /// Asks the device for interrupts on completions (or asks it not to send them). Polling
    /// works either way; suppression saves the interrupt's cost.
    pub fn set_interrupts(&mut self, on: bool) {
        self.interrupts = on;
        if self.event_idx {
            self.write_used_event();
        } else {
            store16(self.avail, if on { 0 } else { AVAIL_NO_INTERRUPT });
        }
        fence(Ordering::SeqCst);
    }
}
