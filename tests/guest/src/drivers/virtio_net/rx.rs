//! A virtio-net receive queue ([`RxQueue`]): one device-writable buffer (one descriptor) per
//! queue entry, all posted at once and re-posted as frames are consumed. With MRG_RXBUF a
//! frame may span `num_buffers` used entries: those are copied into an assembly buffer; a frame
//! in one buffer is handed out in place. Every used entry is checked before use.

use super::spec::{F_MRG_RXBUF, HEADER, HEADER_NUM_BUFFERS, NET};
use crate::arch::memory;
use crate::console;
use crate::drivers::virtio::queue_bits::QueueBits;
use crate::drivers::virtio::transport::{Transport, F_EVENT_IDX};
use crate::drivers::virtio::virtqueue::{Desc, Virtqueue, DESC_WRITE, MAX_QUEUE_SIZE};

pub const DEFAULT_RX_BUFFER: u32 = 2048;
/// Without MRG_RXBUF every buffer must hold a whole frame: header + 1514 bytes + a VLAN tag.
pub const MIN_RX_BUFFER: u32 = 1536;
/// With MRG_RXBUF a buffer must hold at least the header; small buffers make the device merge.
pub const MIN_MERGEABLE_RX_BUFFER: u32 = 64;
pub const MAX_RX_BUFFER: u32 = 16384;
/// Largest merged frame (without the header); larger ones are dropped as `RxError::TooLong`.
const ASSEMBLY_BYTES: u64 = 16384;

/// Volatile load from a receive buffer the device has filled.
fn load<T: Copy>(addr: u64) -> T {
    // SAFETY: only `poll` calls this, on the header of a used receive buffer of this queue
    // (DMA-pool memory it owns, identity mapped) that the device has finished writing.
    unsafe { core::ptr::read_volatile(addr as usize as *const T) }
}

/// Copies part of a merged frame into the assembly buffer.
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
    posted: QueueBits,
    /// Buffer of the frame last handed out in place, re-posted by `release`.
    held: Option<u16>,
    merge: Option<Merge>,
    /// Frames that spanned more than one buffer.
    pub merged: u64,
}

impl RxQueue {
    /// Sets up receive queue `pair` (queue index 2 * pair) with one buffer of `buffer_len`
    /// bytes per entry, and the assembly buffer for merged frames. None after an error line.
    pub fn setup(transport: &mut Transport, pair: usize, buffer_len: u32) -> Option<RxQueue> {
        let at = transport.pci;
        let event_idx = transport.has(F_EVENT_IDX);
        let vq = transport.setup_queue(2 * pair as u16, MAX_QUEUE_SIZE, event_idx)?;
        let buffers = memory::dma_alloc(u64::from(vq.size) * u64::from(buffer_len), 4096);
        let assembly = memory::dma_alloc(ASSEMBLY_BYTES, 4096);
        let (Some(buffers), Some(assembly)) = (buffers, assembly) else {
            NET.error(at)
                .s("DMA pool exhausted (receive buffers)")
                .end();
            return None;
        };
        Some(RxQueue {
            vq,
            buffers,
            buffer_len,
            mergeable: transport.has(F_MRG_RXBUF),
            assembly,
            posted: QueueBits::default(),
            held: None,
            merge: None,
            merged: 0,
        })
    }

    fn buffer(&self, id: u16) -> u64 {
        self.buffers + u64::from(id) * u64::from(self.buffer_len)
    }

    fn post(&mut self, id: u16) {
        self.vq.push(id);
        self.posted.set(id, true);
    }

    /// Posts every buffer (ring 3 or 0; published by the next `kick`).
    pub fn fill(&mut self) {
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
