//! Virtio-blk driver: device discovery on the PCI scan (vendor 0x1af4, device 0x1042, or the
//! transitional 0x1001 driven through its modern interface), feature negotiation (SIZE_MAX,
//! SEG_MAX, BLK_SIZE, FLUSH, MQ, DISCARD, WRITE_ZEROES and RO when offered), the configuration
//! (capacity, limits, queue count) and per-queue request engines ([`BlkQueue`]).
//!
//! A `BlkQueue` has a fixed number of request slots. The caller picks the slot for each
//! request (so it can keep per-slot buffers and bookkeeping), many slots may be in flight,
//! and completions come back as slot numbers. Each slot owns its request header, status byte
//! and either an indirect descriptor table (VIRTIO_F_INDIRECT_DESC: one ring descriptor per
//! slot, so as many slots as the queue has entries) or a fixed run of ring descriptors
//! (header, data segments, status). Everything a request touches is plain memory plus one
//! doorbell write, so the engines run in ring 3 (see blk_scenarios.rs).

use crate::arch::memory;
use crate::console;
use crate::pci::{Address, Functions};
use crate::virtio::{self, Desc, Transport, Virtqueue, DESC_INDIRECT, DESC_NEXT, DESC_WRITE};

pub const DEVICE_MODERN: u16 = 0x1042;
pub const DEVICE_TRANSITIONAL: u16 = 0x1001;
pub const MAX_DEVICES: usize = 4;
pub const MAX_QUEUES: usize = 16;
pub const SECTOR: u64 = 512;

pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;
const WANTED: u64 =
    F_SIZE_MAX | F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_MQ | F_DISCARD | F_WRITE_ZEROES;

// Device configuration (virtio 1.x, 5.2.4).
const CFG_CAPACITY: u64 = 0x00;
const CFG_SIZE_MAX: u64 = 0x08;
const CFG_SEG_MAX: u64 = 0x0c;
const CFG_BLK_SIZE: u64 = 0x14;
const CFG_NUM_QUEUES: u64 = 0x22;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
pub const S_OK: u8 = 0;
/// Written into the status byte before submission: still there at completion means the
/// device did not write this request's status (e.g. it completed it on another queue).
pub const S_NOT_WRITTEN: u8 = 0xff;
pub const ID_BYTES: u32 = 20;

/// Largest request the engines build (data bytes).
pub const MAX_REQUEST: u32 = 256 * 1024;
/// Data segments per request at most (indirect tables hold header + segments + status).
const MAX_SEGMENTS: u16 = 32;
const TABLE_ENTRIES: u64 = MAX_SEGMENTS as u64 + 2;
/// Per slot: header (16 bytes) at 0, status at 16, discard/write-zeroes segment at 32.
const META_BYTES: u64 = 64;
/// Segment size when the device gives no SIZE_MAX.
const DEFAULT_SEGMENT: u32 = 1 << 20;

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
    busy: [u64; 4],
    inflight: u16,
}

fn store<T>(addr: u64, value: T) {
    // SAFETY: callers pass addresses inside this queue's DMA-pool structures.
    unsafe { core::ptr::write_volatile(addr as usize as *mut T, value) }
}

fn load<T: Copy>(addr: u64) -> T {
    // SAFETY: as in `store`.
    unsafe { core::ptr::read_volatile(addr as usize as *const T) }
}

impl BlkQueue {
    /// Slots usable with `submit` (0..slots).
    pub fn slots(&self) -> u16 {
        self.slots
    }

    pub fn inflight(&self) -> u16 {
        self.inflight
    }

    fn is_busy(&self, slot: u16) -> bool {
        self.busy[usize::from(slot / 64)] & (1 << (slot % 64)) != 0
    }

    fn set_busy(&mut self, slot: u16, busy: bool) {
        let word = &mut self.busy[usize::from(slot / 64)];
        if busy {
            *word |= 1 << (slot % 64);
        } else {
            *word &= !(1 << (slot % 64));
        }
    }

    /// Queues `request` in `slot` (published at the next `kick`). False if the slot is out of
    /// range or busy, or the request needs more segments than the device allows.
    pub fn submit(&mut self, slot: u16, request: &Request) -> bool {
        if slot >= self.slots || self.is_busy(slot) {
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
        self.set_busy(slot, true);
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
        if slot >= self.slots || !self.is_busy(slot) {
            return bogus;
        }
        self.set_busy(slot, false);
        self.inflight -= 1;
        let status = load::<u8>(self.meta + u64::from(slot) * META_BYTES + 16);
        Some(Completion::Done { slot, status })
    }
}

pub struct BlkDevice {
    pub number: usize,
    pub transport: Transport,
    /// In 512-byte sectors.
    pub capacity: u64,
    pub blk_size: u32,
    pub size_max: u32,
    pub seg_max: u32,
    /// Largest Read/Write request the queues accept (bytes, a multiple of 512).
    pub max_request: u32,
    pub queue_count: usize,
    pub queues: [Option<BlkQueue>; MAX_QUEUES],
}

impl BlkDevice {
    pub fn pci(&self) -> Address {
        self.transport.pci
    }

    pub fn has(&self, feature: u64) -> bool {
        self.transport.has(feature)
    }

    pub fn queue(&mut self, index: usize) -> &mut BlkQueue {
        self.queues[index]
            .as_mut()
            .expect("queues below queue_count are set up")
    }

    /// Re-reads the capacity (after a configuration change).
    pub fn read_capacity(&mut self) -> u64 {
        self.capacity = self.transport.read_config(|t| t.config64(CFG_CAPACITY));
        self.capacity
    }
}

/// The virtio-blk devices found, numbered in scan order.
pub struct BlkDevices {
    pub list: [Option<BlkDevice>; MAX_DEVICES],
    pub count: usize,
}

fn error(at: Address) -> console::Line {
    at.print(console::error("virtio-blk ")).s(": ")
}

/// Probes every virtio-blk function of the scan and brings it to DRIVER_OK. Devices that fail
/// are reported and skipped.
pub fn probe_all(functions: &Functions) -> BlkDevices {
    let mut found = BlkDevices {
        list: [const { None }; MAX_DEVICES],
        count: 0,
    };
    for function in functions.iter() {
        if !virtio::is_device(function, DEVICE_MODERN, DEVICE_TRANSITIONAL, 2) {
            continue;
        }
        if found.count == MAX_DEVICES {
            error(function.addr)
                .s("more than ")
                .dec(MAX_DEVICES as u64)
                .s(" devices, ignored")
                .end();
            continue;
        }
        let Some(transport) = Transport::probe(function) else {
            continue;
        };
        if let Some(device) = bring_up(transport, found.count) {
            found.list[found.count] = Some(device);
            found.count += 1;
        }
    }
    found
}

fn bring_up(mut transport: Transport, number: usize) -> Option<BlkDevice> {
    let at = transport.pci;
    if !transport.negotiate(WANTED) {
        return None;
    }
    let (capacity, size_max, seg_max, blk_size, num_queues) = transport.read_config(|t| {
        (
            t.config64(CFG_CAPACITY),
            t.config32(CFG_SIZE_MAX),
            t.config32(CFG_SEG_MAX),
            t.config32(CFG_BLK_SIZE),
            t.config16(CFG_NUM_QUEUES),
        )
    });
    let offered_queues = if transport.has(F_MQ) { num_queues } else { 1 };
    let transport_queues = transport.max_queues();
    if offered_queues == 0 || transport_queues == 0 {
        error(at)
            .s("no queues (num_queues=")
            .dec(u64::from(offered_queues))
            .s(" common num_queues=")
            .dec(u64::from(transport_queues))
            .s(")")
            .end();
        transport.fail();
        return None;
    }
    let queue_count = usize::from(offered_queues.min(transport_queues)).min(MAX_QUEUES);
    let blk_size = if transport.has(F_BLK_SIZE) {
        blk_size
    } else {
        SECTOR as u32
    };
    if blk_size < SECTOR as u32 || !blk_size.is_power_of_two() || blk_size > 64 * 1024 {
        error(at)
            .s("impossible blk_size=")
            .dec(u64::from(blk_size))
            .end();
        transport.fail();
        return None;
    }
    // Segment size and count per request.
    let segment_bytes = if transport.has(F_SIZE_MAX) && size_max >= blk_size {
        (size_max & !(blk_size - 1)).min(DEFAULT_SEGMENT)
    } else {
        DEFAULT_SEGMENT
    };
    let device_segments = if transport.has(F_SEG_MAX) && seg_max > 0 {
        seg_max.min(u32::from(MAX_SEGMENTS)) as u16
    } else {
        1
    };
    transport.setup_msix(queue_count as u16);
    let event_idx = transport.has(virtio::F_EVENT_IDX);
    let indirect = transport.has(virtio::F_INDIRECT_DESC);
    let mut queues = [const { None }; MAX_QUEUES];
    let mut max_request = MAX_REQUEST;
    for (index, entry) in queues.iter_mut().enumerate().take(queue_count) {
        let Some(vq) = transport.setup_queue(index as u16, virtio::MAX_QUEUE_SIZE, event_idx)
        else {
            transport.fail();
            return None;
        };
        // A chain (or an indirect table) may not be longer than the queue (virtio 2.7.5.3).
        let chain_room = vq.size.saturating_sub(2);
        let needed = MAX_REQUEST.div_ceil(segment_bytes) as u16;
        let max_segments = device_segments.min(needed).min(chain_room);
        if max_segments == 0 {
            error(at)
                .s("queue ")
                .dec(index as u64)
                .s(" of size ")
                .dec(u64::from(vq.size))
                .s(" cannot hold a request")
                .end();
            transport.fail();
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
            error(at).s("DMA pool exhausted (request slots)").end();
            transport.fail();
            return None;
        };
        max_request = max_request.min(u32::from(max_segments) * segment_bytes);
        let mut queue = BlkQueue {
            vq,
            slots,
            per_slot,
            indirect,
            meta,
            tables,
            segment_bytes,
            max_segments,
            busy: [0; 4],
            inflight: 0,
        };
        // Polling is the fast path; interrupts are asked for where a scenario waits for one.
        queue.vq.set_interrupts(false);
        *entry = Some(queue);
    }
    transport.driver_ok();
    let max_request = max_request & !(blk_size - 1);
    let device = BlkDevice {
        number,
        transport,
        capacity,
        blk_size,
        size_max,
        seg_max,
        max_request,
        queue_count,
        queues,
    };
    report(&device, offered_queues);
    Some(device)
}

/// `GUEST INFO virtio-blk ...`: what was offered, negotiated and set up.
fn report(device: &BlkDevice, offered_queues: u16) {
    let t = &device.transport;
    let first = device.queues[0].as_ref();
    let line = console::line("GUEST INFO virtio-blk dev=")
        .dec(device.number as u64)
        .s(" pci=");
    device
        .pci()
        .print(line)
        .s(" id=")
        .hex(u64::from(t.device_id))
        .s(" offered=")
        .hex(t.offered)
        .s(" negotiated=")
        .hex(t.features)
        .s(" queues=")
        .dec(device.queue_count as u64)
        .s("/")
        .dec(u64::from(offered_queues))
        .s(" queue_size=")
        .dec(first.map_or(0, |q| u64::from(q.vq.size)))
        .s(" slots=")
        .dec(first.map_or(0, |q| u64::from(q.slots)))
        .s(" msix=")
        .dec(u64::from(t.msix_entries()))
        .s(" config_irq=")
        .dec(t.config_vector.map_or(0, u64::from))
        .s(" queue_irq=")
        .dec(first.and_then(|q| q.vq.vector).map_or(0, u64::from))
        .s(" max_request=")
        .dec(u64::from(device.max_request))
        .s(" blk_size=")
        .dec(u64::from(device.blk_size))
        .s(" seg_max=")
        .dec(u64::from(device.seg_max))
        .s(" size_max=")
        .dec(u64::from(device.size_max))
        .s(" capacity=")
        .dec(device.capacity)
        .end();
    if device.capacity == 0 {
        error(device.pci()).s("capacity is 0").end();
    }
}
