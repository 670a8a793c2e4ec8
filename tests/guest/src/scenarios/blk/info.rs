//! `blk-info`: one `GUEST BLK dev=...` line per virtio-blk device, then GET_ID on device 0's
//! queue 0, completed by its MSI-X interrupt (polled without one): `GUEST BLK ID <serial>`.

use super::io::{request_by_interrupt, single};
use crate::arch::memory;
use crate::console;
use crate::drivers::virtio_blk::queue::{Op, Request};
use crate::drivers::virtio_blk::spec::{ID_BYTES, S_OK};
use crate::drivers::virtio_blk::BlkDevices;

pub fn run(devices: &mut BlkDevices) {
    if devices.count == 0 {
        console::error("blk: no usable virtio-blk device").end();
        return;
    }
    for dev in devices.list.iter().flatten() {
        let line = console::line("GUEST BLK dev=")
            .dec(dev.number as u64)
            .s(" pci=");
        dev.pci()
            .print(line)
            .s(" capacity=")
            .dec(dev.capacity)
            .s(" queues=")
            .dec(dev.queue_count as u64)
            .s(" features=")
            .hex(dev.transport.features)
            .end();
    }
    let Some(dev) = devices.list[0].as_mut() else {
        return;
    };
    let Some(buffer) = memory::dma_alloc_zeroed(4096, 4096) else {
        console::error("blk: no DMA memory for GET_ID").end();
        return;
    };
    let request = Request {
        op: Op::GetId,
        sector: 0,
        addr: buffer,
        len: ID_BYTES,
    };
    // Completion by interrupt where the queue has a vector, else polled.
    let (result, how) = if dev.queue(0).vq.vector.is_some() {
        (request_by_interrupt(dev, 0, request), "irq")
    } else {
        (single(dev, 0, request), "poll")
    };
    match result {
        Ok(S_OK) => {
            // SAFETY: the device wrote at most ID_BYTES into our buffer.
            let id = unsafe { memory_bytes(buffer, ID_BYTES as usize) };
            let len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
            console::line("GUEST BLK ID ").ascii(&id[..len]).end();
            console::line("GUEST INFO blk GET_ID completion=")
                .s(how)
                .end();
        }
        Ok(status) => console::error("blk GET_ID status=")
            .dec(u64::from(status))
            .end(),
        Err(why) => console::error("blk GET_ID: ").s(why).end(),
    }
}

/// # Safety
/// `[addr, addr + len)` must be RAM we own and nobody writes while the slice lives.
unsafe fn memory_bytes(addr: u64, len: usize) -> &'static [u8] {
    // SAFETY: the caller guarantees RAM it owns that nobody writes while the slice lives
    // (this function's contract).
    unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) }
}
