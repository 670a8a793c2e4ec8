//! `blk-queues`: 64 reads (4 KiB, distinct ranges) in flight on every queue at once, each
//! queue completing its own (`GUEST BLK QUEUES OK`), then one read per queue completed by that
//! queue's MSI-X interrupt (`GUEST BLK IRQ OK`).

use super::io::{request_by_interrupt, usable, STALL_MS};
use crate::arch::{cpu, memory, tsc, user};
use crate::console;
use crate::drivers::virtio_blk::queue::{BlkQueue, Completion, Op, Request};
use crate::drivers::virtio_blk::spec::{SECTOR, S_OK};
use crate::drivers::virtio_blk::{BlkDevice, MAX_QUEUES};

/// Requests in flight per queue in blk-queues.
const QUEUES_DEPTH: u16 = 64;

pub fn run(dev: &mut BlkDevice) {
    if !usable(dev, false) {
        return;
    }
    let queue_count = dev.queue_count;
    let depth = (0..queue_count)
        .map(|q| dev.queue(q).slots())
        .min()
        .unwrap_or(0)
        .min(QUEUES_DEPTH);
    let total = queue_count as u64 * u64::from(depth);
    // 4 KiB reads of distinct ranges if the disk is big enough, else single sectors.
    let sectors_each = if dev.capacity >= total * 8 { 8 } else { 1 };
    let Some(buffers) = memory::dma_alloc(total * sectors_each * SECTOR, 4096) else {
        console::error("blk: no DMA memory for blk-queues").end();
        return;
    };
    let capacity = dev.capacity;
    let stall = tsc::from_ms(STALL_MS);
    let mut counts = [0u16; MAX_QUEUES];
    let mut errors = 0u64;
    let mut work = || {
        for q in 0..queue_count {
            for slot in 0..depth {
                let index = q as u64 * u64::from(depth) + u64::from(slot);
                let request = Request {
                    op: Op::Read,
                    sector: (index * sectors_each) % capacity,
                    addr: buffers + index * sectors_each * SECTOR,
                    len: (sectors_each * SECTOR) as u32,
                };
                if !dev.queue(q).submit(slot, &request) {
                    console::error("blk: queue ")
                        .dec(q as u64)
                        .s(" refused a read")
                        .end();
                    errors += 1;
                }
            }
        }
        for q in 0..queue_count {
            dev.queue(q).kick();
        }
        let mut last = cpu::rdtsc();
        loop {
            let mut outstanding = 0;
            for (q, count) in counts.iter_mut().enumerate().take(queue_count) {
                let queue: &mut BlkQueue = dev.queue(q);
                while let Some(completion) = queue.complete() {
                    last = cpu::rdtsc();
                    match completion {
                        Completion::Done { status: S_OK, .. } => *count += 1,
                        Completion::Done { slot, status } => {
                            errors += 1;
                            console::error("blk io error op=read queue=")
                                .dec(q as u64)
                                .s(" slot=")
                                .dec(u64::from(slot))
                                .s(" status=")
                                .dec(u64::from(status))
                                .end();
                        }
                        Completion::Bogus { id, .. } => {
                            errors += 1;
                            console::error("blk: queue ")
                                .dec(q as u64)
                                .s(" returned id=")
                                .dec(u64::from(id))
                                .s(" that was not submitted on it")
                                .end();
                        }
                    }
                }
                outstanding += u64::from(queue.inflight());
            }
            if outstanding == 0 {
                break;
            }
            if cpu::rdtsc() - last > stall {
                errors += 1;
                console::error("blk: no completion for 10 s, requests in flight=")
                    .dec(outstanding)
                    .end();
                break;
            }
        }
        0
    };
    if let Err(fault) = user::call(&mut work) {
        fault.report("blk", "blk-queues");
        return;
    }
    for (q, &count) in counts.iter().enumerate().take(queue_count) {
        if count != depth {
            errors += 1;
            console::error("blk: queue ")
                .dec(q as u64)
                .s(" completed ")
                .dec(u64::from(count))
                .s(" of ")
                .dec(u64::from(depth))
                .s(" reads")
                .end();
        }
    }
    if errors == 0 {
        console::line("GUEST BLK QUEUES OK queues=")
            .dec(queue_count as u64)
            .s(" requests=")
            .dec(total)
            .end();
    }
    // Then one request per queue completed by its MSI-X interrupt.
    let mut irq_ok = 0;
    for q in 0..queue_count {
        let request = Request {
            op: Op::Read,
            sector: 0,
            addr: buffers,
            len: SECTOR as u32,
        };
        match request_by_interrupt(dev, q, request) {
            Ok(S_OK) => irq_ok += 1,
            Ok(status) => console::error("blk io error op=read queue=")
                .dec(q as u64)
                .s(" status=")
                .dec(u64::from(status))
                .s(" (interrupt check)")
                .end(),
            Err(why) => console::error("blk irq queue=")
                .dec(q as u64)
                .s(": ")
                .s(why)
                .end(),
        }
    }
    if irq_ok == queue_count {
        console::line("GUEST BLK IRQ OK queues=")
            .dec(queue_count as u64)
            .end();
    }
}
