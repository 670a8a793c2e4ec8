//! A virtio-net transmit queue ([`TxQueue`]): fixed slots of 2 KiB (header + frame), free ones
//! kept in a bitmap (the device structures live in a static and pass through the kernel stack
//! while they are built, so they are kept small). Each frame is a chain of two descriptors
//! (header, frame): inside an indirect table per slot with INDIRECT_DESC, else two ring
//! descriptors per slot.

use super::spec::{HEADER, NET};
use crate::arch::{cpu, memory, tsc};
use crate::drivers::virtio::queue_bits::QueueBits;
use crate::drivers::virtio::transport::{Transport, F_EVENT_IDX, F_INDIRECT_DESC};
use crate::drivers::virtio::virtqueue::{
    Desc, Virtqueue, DESC_INDIRECT, DESC_NEXT, MAX_QUEUE_SIZE,
};

/// Transmit slot: header + frame.
pub const TX_SLOT: u64 = 2048;
/// Largest frame `TxQueue` sends (without the header).
pub const MAX_TX_FRAME: usize = TX_SLOT as usize - HEADER;
/// Two descriptors (header, frame) per transmit slot.
const TX_TABLE: u64 = 2 * 16;
/// How long `TxQueue::send` waits for a free slot.
const TX_SLOT_WAIT_MS: u64 = 1000;

/// Volatile store into a transmit slot's header or indirect table.
fn store<T>(addr: u64, value: T) {
    // SAFETY: only `submit` calls this, on the header and the indirect table of a slot of this
    // queue (DMA-pool memory it owns, identity mapped, aligned for T) that is not yet
    // published, so the device is not reading it.
    unsafe { core::ptr::write_volatile(addr as usize as *mut T, value) }
}

/// What [`TxQueue::send`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Submitted (published by the next `kick`).
    Queued,
    /// The builder had nothing to send (length 0, or too long): the slot is free again.
    Declined,
    /// No slot came free within TX_SLOT_WAIT_MS.
    NoSlot,
}

pub struct TxQueue {
    pub vq: Virtqueue,
    slots: u16,
    indirect: bool,
    buffers: u64,
    tables: u64,
    /// Slots neither taken nor in flight (a bitmap rather than a list keeps the device
    /// structures small: they live on the kernel stack).
    free: QueueBits,
    free_count: u16,
    busy: QueueBits,
    /// Used entries that were not one of our in-flight frames.
    pub bogus: u64,
}

impl TxQueue {
    /// Sets up transmit queue `pair` (queue index 2 * pair + 1) with its frame slots (all
    /// taken until `init_free`). None after an error line.
    pub fn setup(transport: &mut Transport, pair: usize) -> Option<TxQueue> {
        let at = transport.pci;
        let event_idx = transport.has(F_EVENT_IDX);
        let indirect = transport.has(F_INDIRECT_DESC);
        let vq = transport.setup_queue(2 * pair as u16 + 1, MAX_QUEUE_SIZE, event_idx)?;
        if vq.size < 2 {
            NET.error(at)
                .s("transmit queue ")
                .dec(2 * pair as u64 + 1)
                .s(" of size 1 cannot hold a header and a frame")
                .end();
            return None;
        }
        let slots = if indirect { vq.size } else { vq.size / 2 };
        let buffers = memory::dma_alloc(u64::from(slots) * TX_SLOT, 4096);
        let tables = if indirect {
            memory::dma_alloc(u64::from(slots) * TX_TABLE, 4096)
        } else {
            Some(0)
        };
        let (Some(buffers), Some(tables)) = (buffers, tables) else {
            NET.error(at).s("DMA pool exhausted (transmit slots)").end();
            return None;
        };
        Some(TxQueue {
            vq,
            slots,
            indirect,
            buffers,
            tables,
            free: QueueBits::default(),
            free_count: 0,
            busy: QueueBits::default(),
            bogus: 0,
        })
    }

    pub fn slots(&self) -> u16 {
        self.slots
    }

    pub fn inflight(&self) -> u16 {
        self.slots - self.free_count
    }

    /// Frees every slot (after set-up).
    pub fn init_free(&mut self) {
        for slot in 0..self.slots {
            self.free.set(slot, true);
        }
        self.free_count = self.slots;
    }

    /// Takes back the slots of completed frames; returns how many.
    pub fn reap(&mut self) -> u32 {
        let mut done = 0;
        while let Some((id, _)) = self.vq.pop() {
            let slot = match u16::try_from(id) {
                Ok(head) if self.indirect => Some(head),
                Ok(head) if head % 2 == 0 => Some(head / 2),
                _ => None,
            };
            match slot {
                Some(slot) if slot < self.slots && self.busy.get(slot) => {
                    self.busy.set(slot, false);
                    self.give_back(slot);
                    done += 1;
                }
                _ => self.bogus += 1,
            }
        }
        done
    }

    /// A free slot (reaping completions if none is free), or None.
    pub fn take_slot(&mut self) -> Option<u16> {
        if self.free_count == 0 {
            self.reap();
        }
        if self.free_count == 0 {
            return None;
        }
        let slot = self.free.first()?;
        self.free.set(slot, false);
        self.free_count -= 1;
        Some(slot)
    }

    /// Returns a taken (or completed) slot to the free ones.
    fn give_back(&mut self, slot: u16) {
        if !self.free.get(slot) {
            self.free.set(slot, true);
            self.free_count += 1;
        }
    }

    /// Where the frame of `slot` goes (MAX_TX_FRAME bytes).
    pub fn frame_addr(&self, slot: u16) -> u64 {
        self.buffers + u64::from(slot) * TX_SLOT + HEADER as u64
    }

    /// The frame buffer of `slot` as a slice.
    pub fn frame_mut(&mut self, slot: u16) -> &mut [u8] {
        let addr = self.frame_addr(slot);
        // SAFETY: the slot's buffer is DMA-pool memory of this queue that the device does not
        // read while the slot is free (taken by the caller, not yet submitted).
        unsafe { core::slice::from_raw_parts_mut(addr as usize as *mut u8, MAX_TX_FRAME) }
    }

    /// Queues the frame of `len` bytes in `slot` (taken with `take_slot`) behind a zeroed
    /// header; published by the next `kick`.
    pub fn submit(&mut self, slot: u16, len: usize) {
        let header = self.buffers + u64::from(slot) * TX_SLOT;
        store::<u64>(header, 0);
        store::<u32>(header + 8, 0);
        let parts = [
            (header, HEADER as u32),
            (header + HEADER as u64, len.min(MAX_TX_FRAME) as u32),
        ];
        let head = if self.indirect {
            let table = self.tables + u64::from(slot) * TX_TABLE;
            store(
                table,
                Desc {
                    addr: parts[0].0,
                    len: parts[0].1,
                    flags: DESC_NEXT,
                    next: 1,
                },
            );
            store(
                table + 16,
                Desc {
                    addr: parts[1].0,
                    len: parts[1].1,
                    flags: 0,
                    next: 0,
                },
            );
            self.vq.set_desc(
                slot,
                Desc {
                    addr: table,
                    len: TX_TABLE as u32,
                    flags: DESC_INDIRECT,
                    next: 0,
                },
            );
            slot
        } else {
            let first = 2 * slot;
            self.vq.set_desc(
                first,
                Desc {
                    addr: parts[0].0,
                    len: parts[0].1,
                    flags: DESC_NEXT,
                    next: first + 1,
                },
            );
            self.vq.set_desc(
                first + 1,
                Desc {
                    addr: parts[1].0,
                    len: parts[1].1,
                    flags: 0,
                    next: 0,
                },
            );
            first
        };
        self.busy.set(slot, true);
        self.vq.push(head);
    }

    /// Publishes submitted frames and rings the doorbell if the device wants it.
    pub fn kick(&mut self) -> bool {
        self.vq.kick()
    }

    /// Builds a frame with `build` (given the slot's buffer, returns the frame length; 0 or
    /// more than MAX_TX_FRAME bytes: nothing to send) in a free slot and submits it, waiting up
    /// to a second for a slot (kicking meanwhile). Runs in ring 3.
    pub fn send(&mut self, build: impl FnOnce(&mut [u8]) -> usize) -> Sent {
        let mut waited: Option<u64> = None;
        let slot = loop {
            if let Some(slot) = self.take_slot() {
                break slot;
            }
            self.kick();
            let now = cpu::rdtsc();
            let start = *waited.get_or_insert(now);
            if now - start > tsc::from_ms(TX_SLOT_WAIT_MS) {
                return Sent::NoSlot;
            }
            core::hint::spin_loop();
        };
        let len = build(self.frame_mut(slot));
        if len == 0 || len > MAX_TX_FRAME {
            self.give_back(slot);
            return Sent::Declined;
        }
        self.submit(slot, len);
        Sent::Queued
    }

    /// Waits (ring 3) until every submitted frame completed, for at most `timeout_ms`.
    pub fn drain(&mut self, timeout_ms: u64) -> bool {
        self.kick();
        let start = cpu::rdtsc();
        let limit = tsc::from_ms(timeout_ms);
        while self.inflight() != 0 {
            self.reap();
            if cpu::rdtsc() - start > limit {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    }
}
