//! A virtio-blk request engine on one queue ([`BlkQueue`]). It has a fixed number of request
//! slots; the caller picks the slot for each request (so it can keep per-slot buffers and
//! bookkeeping), many slots may be in flight, and completions come back as slot numbers. Each
//! slot owns its request header, status byte and either an indirect descriptor table
//! (VIRTIO_F_INDIRECT_DESC: one ring descriptor per slot, so as many slots as the queue has
//! entries) or a fixed run of ring descriptors (header, data segments, status). Everything a
//! request touches is plain memory plus one doorbell write, so the engines run in ring 3.

use super::spec::{BLK, SECTOR, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES};
use crate::arch::memory;
use crate::drivers::pci::config::Address;
use crate::drivers::virtio::queue_bits::QueueBits;
use crate::drivers::virtio::virtqueue::{Desc, Virtqueue, DESC_INDIRECT, DESC_NEXT, DESC_WRITE};

/// Written into the status byte before submission: still there at completion means the
/// device did not write this request's status (e.g. it completed it on another queue).
pub const S_NOT_WRITTEN: u8 = 0xff;

/// Largest request the engines build (data bytes).
pub const MAX_REQUEST: u32 = 256 * 1024;
/// Data segments per request at most (indirect tables hold header + segments + status).
pub const MAX_SEGMENTS: u16 = 32;
const TABLE_ENTRIES: u64 = MAX_SEGMENTS as u64 + 2;
/// Per slot: header (16 bytes) at 0, status at 16, discard/write-zeroes segment at 32.
const META_BYTES: u64 = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::GetId => "get-id",
            Op::Discard => "discard",
            Op::WriteZeroes => "write-zeroes",
        }
    }
}

/// One request. `addr`/`len` is the data buffer (Read, Write, GetId); for Discard and
/// WriteZeroes `len` is the size of the range in bytes; Flush uses neither.
#[derive(Clone, Copy)]
pub struct Request {
    pub op: Op,
    pub sector: u64,
    pub addr: u64,
    pub len: u32,
}

pub enum Completion {
    Done {
        slot: u16,
        status: u8,
    },
    /// The device returned a head that is not one of our in-flight chains.
    Bogus {
        id: u32,
        len: u32,
    },
}

pub struct BlkQueue {
    pub vq: Virtqueue,
    slots: u16,
    /// Ring descriptors per slot (1 with indirect tables).
    per_slot: u16,
    indirect: bool,
    meta: u64,
    tables: u64,
    segment_bytes: u32,
    max_segments: u16,
    busy: QueueBits,
    inflight: u16,
}

/// Volatile store into this queue's own DMA-pool memory (slot headers, segments, tables).
fn store<T>(addr: u64, value: T) {
    // SAFETY: only `submit` calls this, with addresses inside the slot's metadata or indirect
    // table (DMA-pool memory this queue owns, identity mapped, aligned for T) of a slot that is
    // not in flight, so the device is not reading it yet.
    unsafe { core::ptr::write_volatile(addr as usize as *mut T, value) }
}

/// Volatile load of a status byte the device wrote into this queue's DMA-pool memory.
fn load<T: Copy>(addr: u64) -> T {
    // SAFETY: only `complete` calls this, on the status byte of a slot of this queue
    // (DMA-pool memory it owns, identity mapped) whose request the device has completed.
    unsafe { core::ptr::read_volatile(addr as usize as *const T) }
}

impl BlkQueue {
    /// Lays out the request slots of queue `vq` (set up by the transport of the device at
    /// `at`): requests of at most `device_segments` segments of `segment_bytes`, in indirect
    /// tables or in runs of ring descriptors. Interrupts are suppressed: polling is the fast
    /// path, and they are asked for where a scenario waits for one. None after an error line if
    /// the queue cannot hold a request or the DMA pool is exhausted.
    pub fn new(
        vq: Virtqueue,
        at: Address,
        indirect: bool,
        device_segments: u16,
        segment_bytes: u32,
    ) -> Option<BlkQueue> {
        // A chain (or an indirect table) may not be longer than the queue (virtio 2.7.5.3).
        let chain_room = vq.size.saturating_sub(2);
        let needed = MAX_REQUEST.div_ceil(segment_bytes) as u16;
        let max_segments = device_segments.min(needed).min(chain_room);
        if max_segments == 0 {
            BLK.error(at)
                .s("queue ")
                .dec(u64::from(vq.index))
                .s(" of size ")
                .dec(u64::from(vq.size))
                .s(" cannot hold a request")
                .end();
            return None;
        }
        let per_slot = if indirect { 1 } else { 2 + max_segments };
        let slots = vq.size / per_slot;
        let meta = memory::dma_alloc(u64::from(slots) * META_BYTES, 4096);
        let tables = if indirect {
            memory::dma_alloc(u64::from(slots) * TABLE_ENTRIES * 16, 4096)
        } else {
            Some(0)
        };
        let (Some(meta), Some(tables)) = (meta, tables) else {
            BLK.error(at).s("DMA pool exhausted (request slots)").end();
            return None;
        };
        let mut queue = BlkQueue {
            vq,
            slots,
            per_slot,
            indirect,
            meta,
            tables,
            segment_bytes,
            max_segments,
            busy: QueueBits::default(),
            inflight: 0,
        };
        queue.vq.set_interrupts(false);
        Some(queue)
    }

    /// Largest Read/Write request this queue takes (data bytes).
    pub fn max_request(&self) -> u32 {
        u32::from(self.max_segments) * self.segment_bytes
    }

    /// Slots usable with `submit` (0..slots).
    pub fn slots(&self) -> u16 {
        self.slots
    }

    pub fn inflight(&self) -> u16 {
        self.inflight
    }

    /// Queues `request` in `slot` (published at the next `kick`). False if the slot is out of
    /// range or busy, or the request needs more segments than the device allows.
    pub fn submit(&mut self, slot: u16, request: &Request) -> bool {
        if slot >= self.slots || self.busy.get(slot) {
            return false;
        }
        let meta = self.meta + u64::from(slot) * META_BYTES;
        let (kind, data_write) = match request.op {
            Op::Read => (T_IN, true),
            Op::Write => (T_OUT, false),
            Op::Flush => (T_FLUSH, false),
            Op::GetId => (T_GET_ID, true),
            Op::Discard => (T_DISCARD, false),
            Op::WriteZeroes => (T_WRITE_ZEROES, false),
        };
        store::<u32>(meta, kind);
        store::<u32>(meta + 4, 0);
        store::<u64>(meta + 8, request.sector);
        store::<u8>(meta + 16, S_NOT_WRITTEN);
        // Entries: header, data segments, status.
        let mut entries = [(0u64, 0u32, 0u16); MAX_SEGMENTS as usize + 2];
        entries[0] = (meta, 16, 0);
        let mut count = 1;
        match request.op {
            Op::Flush => {}
            Op::Discard | Op::WriteZeroes => {
                store::<u64>(meta + 32, request.sector);
                store::<u32>(meta + 40, (u64::from(request.len) / SECTOR) as u32);
                store::<u32>(meta + 44, 0);
                entries[1] = (meta + 32, 16, 0);
                count = 2;
            }
            Op::Read | Op::Write | Op::GetId => {
                let segments = request.len.div_ceil(self.segment_bytes).max(1);
                if segments > u32::from(self.max_segments) {
                    return false;
                }
                let flags = if data_write { DESC_WRITE } else { 0 };
                let mut offset = 0;
                while offset < request.len {
                    let len = (request.len - offset).min(self.segment_bytes);
                    entries[count] = (request.addr + u64::from(offset), len, flags);
                    count += 1;
                    offset += len;
                }
            }
        }
        entries[count] = (meta + 16, 1, DESC_WRITE);
        count += 1;
        let head = if self.indirect {
            let table = self.tables + u64::from(slot) * TABLE_ENTRIES * 16;
            for (i, &(addr, len, flags)) in entries[..count].iter().enumerate() {
                let last = i + 1 == count;
                let desc = Desc {
                    addr,
                    len,
                    flags: flags | if last { 0 } else { DESC_NEXT },
                    next: if last { 0 } else { i as u16 + 1 },
                };
                store(table + 16 * i as u64, desc);
            }
            self.vq.set_desc(
                slot,
                Desc {
                    addr: table,
                    len: (16 * count) as u32,
                    flags: DESC_INDIRECT,
                    next: 0,
                },
            );
            slot
        } else {
            let base = slot * self.per_slot;
            for (i, &(addr, len, flags)) in entries[..count].iter().enumerate() {
                let last = i + 1 == count;
                let index = base + i as u16;
                self.vq.set_desc(
                    index,
                    Desc {
                        addr,
                        len,
                        flags: flags | if last { 0 } else { DESC_NEXT },
                        next: if last { 0 } else { index + 1 },
                    },
                );
            }
            base
        };
        self.vq.push(head);
        self.busy.set(slot, true);
        self.inflight += 1;
        true
    }

    /// Publishes submitted requests and rings the doorbell if the device wants it.
    pub fn kick(&mut self) -> bool {
        self.vq.kick()
    }

    /// The next completion, if the device has one.
    pub fn complete(&mut self) -> Option<Completion> {
        let (id, len) = self.vq.pop()?;
        // `len` (bytes the device wrote) is only reported for bogus heads: devices disagree on
        // whether it counts the status byte.
        let bogus = Some(Completion::Bogus { id, len });
        let Ok(head) = u16::try_from(id) else {
            return bogus;
        };
        let slot = if self.indirect {
            head
        } else if head % self.per_slot == 0 {
            head / self.per_slot
        } else {
            return bogus;
        };
        if slot >= self.slots || !self.busy.get(slot) {
            return bogus;
        }
        self.busy.set(slot, false);
        self.inflight -= 1;
        let status = load::<u8>(self.meta + u64::from(slot) * META_BYTES + 16);
        Some(Completion::Done { slot, status })
    }
}
