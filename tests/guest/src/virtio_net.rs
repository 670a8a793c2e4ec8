//! Virtio-net driver: device discovery on the PCI scan (vendor 0x1af4, device 0x1041, or the
//! transitional 0x1000 with subsystem 1 driven through its modern interface), feature
//! negotiation (MAC, STATUS, CTRL_VQ, CTRL_RX, CTRL_RX_EXTRA, CTRL_VLAN, CTRL_MAC_ADDR, MQ,
//! MRG_RXBUF when offered; no checksum or segmentation offloads), the configuration (MAC,
//! link status, max_virtqueue_pairs), the receive and transmit queues of each queue pair and
//! the control queue.
//!
//! Queue layout (virtio 1.x, 5.1.2): receiveq N = 2N, transmitq N = 2N + 1, controlq =
//! 2 * max_virtqueue_pairs (2 without MQ). Every frame is preceded by the 12-byte
//! `virtio_net_hdr` (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
//! num_buffers).
//!
//! - [`RxQueue`]: one device-writable buffer (one descriptor) per queue entry, all posted at
//!   once and re-posted as frames are consumed. With MRG_RXBUF a frame may span `num_buffers`
//!   used entries: those are copied into an assembly buffer; a frame in one buffer is handed
//!   out in place.
//! - [`TxQueue`]: fixed slots of 2 KiB (header + frame), free ones kept in a bitmap (the
//!   device structures live in a static and pass through the kernel stack while they are
//!   built, so they are kept small). Each frame is a chain of two descriptors (header,
//!   frame): inside an indirect table per slot with INDIRECT_DESC, else two ring descriptors
//!   per slot.
//! - [`CtrlQueue`]: one command at a time, polled: class/command (device-readable), the
//!   command's data parts (one descriptor each, device-readable), the ack byte
//!   (device-writable).
//!
//! Set-up runs in ring 0; everything that walks the rings (posting buffers, sending, polling)
//! is plain memory plus doorbell writes and runs in ring 3 (see net_scenarios.rs).

use crate::arch::{cpu, memory, tsc, user};
use crate::console;
use crate::netproto::{self, Mac};
use crate::pci::{Address, Functions};
use crate::virtio::{self, Desc, Transport, Virtqueue, DESC_INDIRECT, DESC_NEXT, DESC_WRITE};

pub const DEVICE_MODERN: u16 = 0x1041;
pub const DEVICE_TRANSITIONAL: u16 = 0x1000;
const SUBSYSTEM_NET: u16 = 1;
pub const MAX_DEVICES: usize = 4;
/// Queue pairs the driver enables at most.
pub const MAX_QUEUE_PAIRS: usize = 8;

pub const F_MAC: u64 = 1 << 5;
pub const F_MRG_RXBUF: u64 = 1 << 15;
pub const F_STATUS: u64 = 1 << 16;
pub const F_CTRL_VQ: u64 = 1 << 17;
pub const F_CTRL_RX: u64 = 1 << 18;
pub const F_CTRL_VLAN: u64 = 1 << 19;
pub const F_CTRL_RX_EXTRA: u64 = 1 << 20;
pub const F_MQ: u64 = 1 << 22;
pub const F_CTRL_MAC_ADDR: u64 = 1 << 23;
const WANTED: u64 = F_MAC
    | F_MRG_RXBUF
    | F_STATUS
    | F_CTRL_VQ
    | F_CTRL_RX
    | F_CTRL_VLAN
    | F_CTRL_RX_EXTRA
    | F_MQ
    | F_CTRL_MAC_ADDR;
/// Features that need the control queue (virtio 1.x, 5.1.3.1).
const NEEDS_CTRL_VQ: u64 = F_CTRL_RX | F_CTRL_VLAN | F_CTRL_RX_EXTRA | F_MQ | F_CTRL_MAC_ADDR;

// Device configuration (virtio 1.x, 5.1.4).
const CFG_MAC: u64 = 0;
const CFG_STATUS: u64 = 6;
const CFG_MAX_PAIRS: u64 = 8;
pub const STATUS_LINK_UP: u16 = 1;
/// max_virtqueue_pairs may be 1 to 0x8000.
const MAX_PAIRS_LIMIT: u16 = 0x8000;

/// `struct virtio_net_hdr` with VERSION_1 (num_buffers included).
pub const HEADER: usize = 12;
const HEADER_NUM_BUFFERS: u64 = 10;
pub const DEFAULT_RX_BUFFER: u32 = 2048;
/// Without MRG_RXBUF every buffer must hold a whole frame: header + 1514 bytes + a VLAN tag.
pub const MIN_RX_BUFFER: u32 = 1536;
/// With MRG_RXBUF a buffer must hold at least the header; small buffers make the device merge.
pub const MIN_MERGEABLE_RX_BUFFER: u32 = 64;
pub const MAX_RX_BUFFER: u32 = 16384;
/// Largest merged frame (without the header); larger ones are dropped as `RxError::TooLong`.
const ASSEMBLY_BYTES: u64 = 16384;
/// Transmit slot: header + frame.
pub const TX_SLOT: u64 = 2048;
/// Largest frame `TxQueue` sends (without the header).
pub const MAX_TX_FRAME: usize = TX_SLOT as usize - HEADER;
/// Two descriptors (header, frame) per transmit slot.
const TX_TABLE: u64 = 2 * 16;
const CTRL_QUEUE_SIZE: u16 = 64;
/// How long `TxQueue::send` waits for a free slot.
const TX_SLOT_WAIT_MS: u64 = 1000;

// Control queue (virtio 1.x, 5.1.6.5).
pub const CTRL_CLASS_RX: u8 = 0;
pub const CTRL_RX_PROMISC: u8 = 0;
pub const CTRL_RX_ALLMULTI: u8 = 1;
/// The next four need VIRTIO_NET_F_CTRL_RX_EXTRA.
pub const CTRL_RX_ALLUNI: u8 = 2;
pub const CTRL_RX_NOMULTI: u8 = 3;
pub const CTRL_RX_NOUNI: u8 = 4;
pub const CTRL_RX_NOBCAST: u8 = 5;
pub const CTRL_CLASS_MAC: u8 = 1;
pub const CTRL_MAC_TABLE_SET: u8 = 0;
pub const CTRL_MAC_ADDR_SET: u8 = 1;
pub const CTRL_CLASS_VLAN: u8 = 2;
pub const CTRL_VLAN_ADD: u8 = 0;
pub const CTRL_CLASS_MQ: u8 = 4;
pub const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
/// VIRTIO_NET_OK; VIRTIO_NET_ERR is 1.
pub const CTRL_OK: u8 = 0;
/// Written into the ack byte before submission: still there means the device never wrote it.
const CTRL_ACK_UNWRITTEN: u8 = 0xff;
const CTRL_TIMEOUT_MS: u64 = 5000;
/// Per command: class and command at 0, the data parts from CTRL_DATA, the ack at CTRL_ACK.
const CTRL_DATA: u64 = 64;
const CTRL_ACK: u64 = 4032;
const CTRL_MAX_PARTS: usize = 4;

/// One bit per queue entry (queues have at most 256).
#[derive(Clone, Copy, Default)]
struct Bits([u64; 4]);

impl Bits {
    fn get(&self, i: u16) -> bool {
        self.0[usize::from(i / 64)] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: u16, on: bool) {
        let word = &mut self.0[usize::from(i / 64)];
        if on {
            *word |= 1 << (i % 64);
        } else {
            *word &= !(1 << (i % 64));
        }
    }

    /// The lowest set bit, if any.
    fn first(&self) -> Option<u16> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, &word)| word != 0)
            .map(|(i, &word)| i as u16 * 64 + word.trailing_zeros() as u16)
    }
}

fn store<T>(addr: u64, value: T) {
    // SAFETY: callers pass addresses inside this driver's DMA-pool structures.
    unsafe { core::ptr::write_volatile(addr as usize as *mut T, value) }
}

fn load<T: Copy>(addr: u64) -> T {
    // SAFETY: as in `store`.
    unsafe { core::ptr::read_volatile(addr as usize as *const T) }
}

fn copy(from: u64, to: u64, len: usize) {
    // SAFETY: both ranges are DMA-pool memory of this driver (a used receive buffer, the
    // assembly buffer) that the device no longer writes.
    unsafe {
        core::ptr::copy_nonoverlapping(from as usize as *const u8, to as usize as *mut u8, len)
    }
}

/// A received frame (without the virtio-net header), valid until the queue's next `poll` or
/// `release`.
#[derive(Clone, Copy)]
pub struct Frame {
    pub addr: u64,
    pub len: usize,
}

impl Frame {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: a used receive buffer (or the assembly buffer) that the device finished
        // writing and that is not re-posted before the queue's next poll/release.
        unsafe { core::slice::from_raw_parts(self.addr as usize as *const u8, self.len) }
    }
}

/// Something wrong with a used receive entry (the entry is consumed; counted by the caller).
#[derive(Clone, Copy)]
pub enum RxError {
    /// Used id that is not a posted buffer of this queue.
    BogusId { id: u32, len: u32 },
    /// Used length larger than the buffer.
    BadLength { id: u32, len: u32 },
    /// First buffer shorter than the header.
    Short { len: u32 },
    /// num_buffers of 0 or more than the queue holds.
    BadNumBuffers { count: u16 },
    /// Merged frame larger than the assembly buffer.
    TooLong,
}

impl RxError {
    pub fn describe(self, line: console::Line) -> console::Line {
        match self {
            RxError::BogusId { id, len } => line
                .s("used id=")
                .dec(u64::from(id))
                .s(" len=")
                .dec(u64::from(len))
                .s(" is not a posted buffer"),
            RxError::BadLength { id, len } => line
                .s("used id=")
                .dec(u64::from(id))
                .s(" len=")
                .dec(u64::from(len))
                .s(" is longer than the buffer"),
            RxError::Short { len } => line
                .s("used len=")
                .dec(u64::from(len))
                .s(" is shorter than the header"),
            RxError::BadNumBuffers { count } => line
                .s("num_buffers=")
                .dec(u64::from(count))
                .s(" is impossible"),
            RxError::TooLong => line.s("merged frame is longer than the assembly buffer"),
        }
    }
}

struct Merge {
    len: usize,
    remaining: u16,
    overflow: bool,
}

pub struct RxQueue {
    pub vq: Virtqueue,
    buffers: u64,
    buffer_len: u32,
    mergeable: bool,
    assembly: u64,
    posted: Bits,
    /// Buffer of the frame last handed out in place, re-posted by `release`.
    held: Option<u16>,
    merge: Option<Merge>,
    /// Frames that spanned more than one buffer.
    pub merged: u64,
}

impl RxQueue {
    fn buffer(&self, id: u16) -> u64 {
        self.buffers + u64::from(id) * u64::from(self.buffer_len)
    }

    fn post(&mut self, id: u16) {
        self.vq.push(id);
        self.posted.set(id, true);
    }

    /// Posts every buffer (ring 3 or 0; published by the next `kick`).
    fn fill(&mut self) {
        for id in 0..self.vq.size {
            self.vq.set_desc(
                id,
                Desc {
                    addr: self.buffer(id),
                    len: self.buffer_len,
                    flags: DESC_WRITE,
                    next: 0,
                },
            );
            self.post(id);
        }
    }

    /// Re-posts the buffer of the frame last returned in place (if any).
    pub fn release(&mut self) {
        if let Some(id) = self.held.take() {
            self.post(id);
        }
    }

    /// Publishes re-posted buffers (notifying the device if it asked for that).
    pub fn kick(&mut self) {
        self.vq.kick();
    }

    /// The next received frame, if a whole one is there. Releases the previous one first.
    pub fn poll(&mut self) -> Option<Result<Frame, RxError>> {
        self.release();
        loop {
            let (id, len) = self.vq.pop()?;
            let index = match u16::try_from(id) {
                Ok(index) if index < self.vq.size && self.posted.get(index) => index,
                _ => return Some(Err(RxError::BogusId { id, len })),
            };
            self.posted.set(index, false);
            if len > self.buffer_len {
                self.post(index);
                return Some(Err(RxError::BadLength { id, len }));
            }
            let addr = self.buffer(index);
            let bytes = len as usize;
            match self.merge.take() {
                None => {
                    if bytes < HEADER {
                        self.post(index);
                        return Some(Err(RxError::Short { len }));
                    }
                    let count = if self.mergeable {
                        load::<u16>(addr + HEADER_NUM_BUFFERS)
                    } else {
                        1
                    };
                    if count == 0 || count > self.vq.size {
                        self.post(index);
                        return Some(Err(RxError::BadNumBuffers { count }));
                    }
                    if count == 1 {
                        self.held = Some(index);
                        return Some(Ok(Frame {
                            addr: addr + HEADER as u64,
                            len: bytes - HEADER,
                        }));
                    }
                    copy(addr + HEADER as u64, self.assembly, bytes - HEADER);
                    self.post(index);
                    self.merge = Some(Merge {
                        len: bytes - HEADER,
                        remaining: count - 1,
                        overflow: false,
                    });
                }
                Some(mut merge) => {
                    if (merge.len + bytes) as u64 > ASSEMBLY_BYTES {
                        merge.overflow = true;
                    } else {
                        copy(addr, self.assembly + merge.len as u64, bytes);
                        merge.len += bytes;
                    }
                    self.post(index);
                    merge.remaining -= 1;
                    if merge.remaining == 0 {
                        if merge.overflow {
                            return Some(Err(RxError::TooLong));
                        }
                        self.merged += 1;
                        return Some(Ok(Frame {
                            addr: self.assembly,
                            len: merge.len,
                        }));
                    }
                    self.merge = Some(merge);
                }
            }
        }
    }
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
    free: Bits,
    free_count: u16,
    busy: Bits,
    /// Used entries that were not one of our in-flight frames.
    pub bogus: u64,
}

impl TxQueue {
    pub fn slots(&self) -> u16 {
        self.slots
    }

    pub fn inflight(&self) -> u16 {
        self.slots - self.free_count
    }

    fn init_free(&mut self) {
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

pub struct CtrlQueue {
    pub vq: Virtqueue,
    page: u64,
    /// A command timed out: its descriptors may still be the device's.
    stuck: bool,
}

impl CtrlQueue {
    /// Sends one command and polls for its completion (ring 3). Ok(ack byte) or Err(why).
    fn command(&mut self, class: u8, command: u8, parts: &[&[u8]]) -> Result<u8, &'static str> {
        if self.stuck {
            return Err("the control queue is stuck after an earlier timeout");
        }
        let entries = parts.len() + 2;
        if parts.len() > CTRL_MAX_PARTS || entries > usize::from(self.vq.size) {
            return Err("command has too many parts for the control queue");
        }
        let total: usize = parts.iter().map(|p| p.len().next_multiple_of(8)).sum();
        if CTRL_DATA + total as u64 > CTRL_ACK {
            return Err("command data too long");
        }
        store::<u8>(self.page, class);
        store::<u8>(self.page + 1, command);
        store::<u8>(self.page + CTRL_ACK, CTRL_ACK_UNWRITTEN);
        self.vq.set_desc(
            0,
            Desc {
                addr: self.page,
                len: 2,
                flags: DESC_NEXT,
                next: 1,
            },
        );
        let mut at = self.page + CTRL_DATA;
        for (i, part) in parts.iter().enumerate() {
            for (j, &byte) in part.iter().enumerate() {
                store::<u8>(at + j as u64, byte);
            }
            let index = i as u16 + 1;
            self.vq.set_desc(
                index,
                Desc {
                    addr: at,
                    len: part.len() as u32,
                    flags: DESC_NEXT,
                    next: index + 1,
                },
            );
            at += part.len().next_multiple_of(8) as u64;
        }
        self.vq.set_desc(
            entries as u16 - 1,
            Desc {
                addr: self.page + CTRL_ACK,
                len: 1,
                flags: DESC_WRITE,
                next: 0,
            },
        );
        self.vq.push(0);
        self.vq.kick();
        let start = cpu::rdtsc();
        let limit = tsc::from_ms(CTRL_TIMEOUT_MS);
        loop {
            if let Some((id, _)) = self.vq.pop() {
                if id != 0 {
                    self.stuck = true;
                    return Err("bogus completion on the control queue");
                }
                return match load::<u8>(self.page + CTRL_ACK) {
                    CTRL_ACK_UNWRITTEN => Err("the device did not write the ack byte"),
                    ack => Ok(ack),
                };
            }
            if cpu::rdtsc() - start > limit {
                self.stuck = true;
                return Err("no completion within 5 s");
            }
            core::hint::spin_loop();
        }
    }
}

pub struct NetDevice {
    pub number: usize,
    pub transport: Transport,
    pub mac: Mac,
    /// max_virtqueue_pairs (1 without MQ).
    pub max_pairs: u16,
    /// Queue pairs in use (receive on all, transmit on all).
    pub pairs: usize,
    pub rx_buffer: u32,
    pub rx: [Option<RxQueue>; MAX_QUEUE_PAIRS],
    pub tx: [Option<TxQueue>; MAX_QUEUE_PAIRS],
    pub ctrl: Option<CtrlQueue>,
}

impl NetDevice {
    pub fn pci(&self) -> Address {
        self.transport.pci
    }

    pub fn has(&self, feature: u64) -> bool {
        self.transport.has(feature)
    }

    pub fn rx(&mut self, pair: usize) -> &mut RxQueue {
        self.rx[pair]
            .as_mut()
            .expect("receive queues below `pairs` are set up")
    }

    pub fn tx(&mut self, pair: usize) -> &mut TxQueue {
        self.tx[pair]
            .as_mut()
            .expect("transmit queues below `pairs` are set up")
    }

    /// The status field (VIRTIO_NET_S_LINK_UP = 1); LINK_UP without VIRTIO_NET_F_STATUS.
    pub fn status(&self) -> u16 {
        if !self.has(F_STATUS) {
            return STATUS_LINK_UP;
        }
        self.transport.read_config(|t| t.config16(CFG_STATUS))
    }

    pub fn link_up(&self) -> bool {
        self.status() & STATUS_LINK_UP != 0
    }

    /// Sends a control command (ring 0: polls in ring 3). Ok(ack: 0 = VIRTIO_NET_OK,
    /// 1 = VIRTIO_NET_ERR) or Err(why).
    pub fn ctrl(&mut self, class: u8, command: u8, parts: &[&[u8]]) -> Result<u8, &'static str> {
        let Some(ctrl) = self.ctrl.as_mut() else {
            return Err("no control queue (VIRTIO_NET_F_CTRL_VQ not negotiated)");
        };
        let mut outcome = Err("not run");
        let mut work = || {
            outcome = ctrl.command(class, command, parts);
            0
        };
        if user::call(&mut work).is_err() {
            return Err("ring-3 fault while polling the control queue");
        }
        outcome
    }
}

/// The virtio-net devices found, numbered in scan order.
pub struct NetDevices {
    pub list: [Option<NetDevice>; MAX_DEVICES],
    pub count: usize,
}

/// Driver choices from the command line.
#[derive(Clone, Copy)]
pub struct Options {
    /// Queue pairs wanted (default: as many as the device has, up to MAX_QUEUE_PAIRS).
    pub queue_pairs: Option<u16>,
    /// Receive buffer size in bytes, header included (clamped to what the features allow).
    pub rx_buffer: u32,
}

fn error(at: Address) -> console::Line {
    at.print(console::error("virtio-net ")).s(": ")
}

impl NetDevices {
    pub const EMPTY: NetDevices = NetDevices {
        list: [const { None }; MAX_DEVICES],
        count: 0,
    };
}

/// Probes every virtio-net function of the scan and brings it up into `found` (a static at
/// the caller: the devices are too big for the kernel stack). Devices that fail are reported
/// and skipped.
pub fn probe_all(functions: &Functions, options: &Options, found: &mut NetDevices) {
    for function in functions.iter() {
        if !virtio::is_device(function, DEVICE_MODERN, DEVICE_TRANSITIONAL, SUBSYSTEM_NET) {
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
        if let Some(device) = bring_up(transport, found.count, options) {
            found.list[found.count] = Some(device);
            found.count += 1;
        }
    }
}

fn read_mac(transport: &Transport) -> Mac {
    transport.read_config(|t| {
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            *byte = t.config8(CFG_MAC + i as u64);
        }
        mac
    })
}

/// A locally administered unicast MAC for a device without VIRTIO_NET_F_MAC: 02:46 ('F')
/// followed by TSC bits and the device number.
fn generated_mac(number: usize) -> Mac {
    let tsc = cpu::rdtsc();
    [
        0x02,
        0x46,
        (tsc >> 24) as u8,
        (tsc >> 16) as u8,
        (tsc >> 8) as u8,
        number as u8,
    ]
}

fn setup_rx(transport: &mut Transport, pair: usize, buffer_len: u32) -> Option<RxQueue> {
    let at = transport.pci;
    let event_idx = transport.has(virtio::F_EVENT_IDX);
    let vq = transport.setup_queue(2 * pair as u16, virtio::MAX_QUEUE_SIZE, event_idx)?;
    let buffers = memory::dma_alloc(u64::from(vq.size) * u64::from(buffer_len), 4096);
    let assembly = memory::dma_alloc(ASSEMBLY_BYTES, 4096);
    let (Some(buffers), Some(assembly)) = (buffers, assembly) else {
        error(at).s("DMA pool exhausted (receive buffers)").end();
        return None;
    };
    Some(RxQueue {
        vq,
        buffers,
        buffer_len,
        mergeable: transport.has(F_MRG_RXBUF),
        assembly,
        posted: Bits::default(),
        held: None,
        merge: None,
        merged: 0,
    })
}

fn setup_tx(transport: &mut Transport, pair: usize) -> Option<TxQueue> {
    let at = transport.pci;
    let event_idx = transport.has(virtio::F_EVENT_IDX);
    let indirect = transport.has(virtio::F_INDIRECT_DESC);
    let vq = transport.setup_queue(2 * pair as u16 + 1, virtio::MAX_QUEUE_SIZE, event_idx)?;
    if vq.size < 2 {
        error(at)
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
        error(at).s("DMA pool exhausted (transmit slots)").end();
        return None;
    };
    Some(TxQueue {
        vq,
        slots,
        indirect,
        buffers,
        tables,
        free: Bits::default(),
        free_count: 0,
        busy: Bits::default(),
        bogus: 0,
    })
}

fn bring_up(mut transport: Transport, number: usize, options: &Options) -> Option<NetDevice> {
    let at = transport.pci;
    let negotiated = transport.negotiate_with(|offered| {
        if offered & F_CTRL_VQ == 0 {
            WANTED & !NEEDS_CTRL_VQ
        } else {
            WANTED
        }
    });
    if !negotiated {
        return None;
    }
    let mut mac = read_mac(&transport);
    let max_pairs = if transport.has(F_MQ) {
        transport.read_config(|t| t.config16(CFG_MAX_PAIRS))
    } else {
        1
    };
    if max_pairs == 0 || max_pairs > MAX_PAIRS_LIMIT {
        error(at)
            .s("impossible max_virtqueue_pairs=")
            .dec(u64::from(max_pairs))
            .end();
        transport.fail();
        return None;
    }
    let wanted_pairs = options
        .queue_pairs
        .unwrap_or(MAX_QUEUE_PAIRS as u16)
        .clamp(1, MAX_QUEUE_PAIRS as u16);
    let mut pairs = usize::from(wanted_pairs.min(max_pairs));
    let transport_queues = usize::from(transport.max_queues());
    let ctrl_index = transport
        .has(F_CTRL_VQ)
        .then_some(2 * usize::from(max_pairs));
    if transport_queues < 2 * pairs || ctrl_index.is_some_and(|i| i >= transport_queues) {
        error(at)
            .s("common num_queues=")
            .dec(transport_queues as u64)
            .s(" is too small for max_virtqueue_pairs=")
            .dec(u64::from(max_pairs))
            .s(if ctrl_index.is_some() {
                " and the control queue"
            } else {
                ""
            })
            .end();
        transport.fail();
        return None;
    }
    let buffer_len = if transport.has(F_MRG_RXBUF) {
        options
            .rx_buffer
            .clamp(MIN_MERGEABLE_RX_BUFFER, MAX_RX_BUFFER)
    } else {
        options.rx_buffer.clamp(MIN_RX_BUFFER, MAX_RX_BUFFER)
    };
    // Entry 0: configuration changes; entries 1..=2 * pairs: rx0, tx0, rx1, tx1, ... (or one
    // shared entry if the table is too small). The control queue is polled: no vector.
    transport.setup_msix(2 * pairs as u16);
    let mut rx = [const { None }; MAX_QUEUE_PAIRS];
    let mut tx = [const { None }; MAX_QUEUE_PAIRS];
    for pair in 0..pairs {
        let (Some(r), Some(t)) = (
            setup_rx(&mut transport, pair, buffer_len),
            setup_tx(&mut transport, pair),
        ) else {
            transport.fail();
            return None;
        };
        rx[pair] = Some(r);
        tx[pair] = Some(t);
    }
    let ctrl = match ctrl_index {
        Some(index) => {
            let event_idx = transport.has(virtio::F_EVENT_IDX);
            let Some(vq) = transport.setup_polled_queue(index as u16, CTRL_QUEUE_SIZE, event_idx)
            else {
                transport.fail();
                return None;
            };
            if vq.size < 2 + CTRL_MAX_PARTS as u16 {
                error(at)
                    .s("control queue size ")
                    .dec(u64::from(vq.size))
                    .s(" is below ")
                    .dec(2 + CTRL_MAX_PARTS as u64)
                    .end();
                transport.fail();
                return None;
            }
            let Some(page) = memory::dma_alloc(4096, 4096) else {
                error(at).s("DMA pool exhausted (control queue)").end();
                transport.fail();
                return None;
            };
            Some(CtrlQueue {
                vq,
                page,
                stuck: false,
            })
        }
        None => None,
    };
    // Post every receive buffer and free every transmit slot (ring 3); polling is the fast
    // path, interrupts are asked for only while a scenario waits halted.
    let mut fill = || {
        for queue in rx.iter_mut().flatten() {
            queue.fill();
            queue.vq.set_interrupts(false);
        }
        for queue in tx.iter_mut().flatten() {
            queue.init_free();
            queue.vq.set_interrupts(false);
        }
        0
    };
    if user::call(&mut fill).is_err() {
        error(at)
            .s("ring-3 fault while posting receive buffers")
            .end();
        transport.fail();
        return None;
    }
    transport.driver_ok();
    for queue in rx.iter_mut().flatten() {
        queue.kick();
    }
    let mut device = NetDevice {
        number,
        transport,
        mac: [0; 6],
        max_pairs,
        pairs,
        rx_buffer: buffer_len,
        rx,
        tx,
        ctrl,
    };
    if device.has(F_MQ) {
        let value = (pairs as u16).to_le_bytes();
        match device.ctrl(CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET, &[&value]) {
            Ok(CTRL_OK) => {}
            outcome => {
                let line = error(at)
                    .s("VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET ")
                    .dec(pairs as u64)
                    .s(": ");
                match outcome {
                    Ok(ack) => line.s("ack=").dec(u64::from(ack)),
                    Err(why) => line.s(why),
                }
                .s("; using 1 queue pair")
                .end();
                pairs = 1;
            }
        }
    }
    device.pairs = pairs;
    if !device.has(F_MAC) {
        mac = generated_mac(number);
        if device.has(F_CTRL_MAC_ADDR) {
            match device.ctrl(CTRL_CLASS_MAC, CTRL_MAC_ADDR_SET, &[&mac]) {
                Ok(CTRL_OK) => {}
                Ok(ack) => error(at)
                    .s("VIRTIO_NET_CTRL_MAC_ADDR_SET of the generated MAC: ack=")
                    .dec(u64::from(ack))
                    .end(),
                Err(why) => error(at)
                    .s("VIRTIO_NET_CTRL_MAC_ADDR_SET of the generated MAC: ")
                    .s(why)
                    .end(),
            }
        }
    }
    device.mac = mac;
    report(&device);
    Some(device)
}

/// `GUEST INFO virtio-net ...`: what was offered, negotiated and set up.
fn report(device: &NetDevice) {
    let t = &device.transport;
    let rx0 = device.rx[0].as_ref();
    let tx0 = device.tx[0].as_ref();
    let line = console::line("GUEST INFO virtio-net dev=")
        .dec(device.number as u64)
        .s(" pci=");
    let line = device
        .pci()
        .print(line)
        .s(" id=")
        .hex(u64::from(t.device_id))
        .s(" offered=")
        .hex(t.offered)
        .s(" negotiated=")
        .hex(t.features)
        .s(" mac=");
    netproto::print_mac(line, device.mac)
        .s(" queue_pairs=")
        .dec(device.pairs as u64)
        .s("/")
        .dec(u64::from(device.max_pairs))
        .s(" rx_size=")
        .dec(rx0.map_or(0, |q| u64::from(q.vq.size)))
        .s(" tx_size=")
        .dec(tx0.map_or(0, |q| u64::from(q.vq.size)))
        .s(" tx_slots=")
        .dec(tx0.map_or(0, |q| u64::from(q.slots)))
        .s(" ctrl_size=")
        .dec(device.ctrl.as_ref().map_or(0, |q| u64::from(q.vq.size)))
        .s(" rx_buf=")
        .dec(u64::from(device.rx_buffer))
        .s(" msix=")
        .dec(u64::from(t.msix_entries()))
        .s(" config_irq=")
        .dec(t.config_vector.map_or(0, u64::from))
        .s(" rx0_irq=")
        .dec(rx0.and_then(|q| q.vq.vector).map_or(0, u64::from))
        .end();
}
