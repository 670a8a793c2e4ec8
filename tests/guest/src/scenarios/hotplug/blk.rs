//! A hot-added virtio-blk device: P(seed) (the block scenarios' pattern, blk/pattern.rs) is
//! written over the first 64 KiB, read back and checked, then FLUSH and GET_ID:
//! `GUEST HOTPLUG BLK OK ...` or `GUEST ERROR hotplug blk slot=S <what>`. Requests go one at a
//! time on queue 0, polled from ring 3 (blk/io.rs), each given up on after 10 s. Before the
//! eject, [`quiesce`] waits (1 s at most) for anything still in flight and resets the device.
//! At the power button, [`kept`] checks a disk again: its data still there, more I/O taken.

use super::super::blk::io::single;
use super::super::blk::pattern;
use crate::arch::{cpu, memory, tsc, user};
use crate::console;
use crate::drivers::virtio_blk::queue::{Completion, Op, Request};
use crate::drivers::virtio_blk::spec::{F_FLUSH, F_RO, ID_BYTES, SECTOR, S_OK};
use crate::drivers::virtio_blk::BlkDevice;
use crate::sync::Global;

/// The checked span: 128 sectors (64 KiB) from sector 0.
const SECTORS: u64 = 128;
const QUIESCE_MS: u64 = 1000;

/// Starts a `GUEST ERROR hotplug blk slot=S ` line.
fn error(slot: u8) -> console::Line {
    console::error("hotplug blk slot=")
        .dec(u64::from(slot))
        .s(" ")
}

/// The data buffer (64 KiB) and the GET_ID buffer after it, from the DMA pool once (not from
/// a slot's arena: they outlive the devices).
static BUFFER: Global<Option<u64>> = Global::new(None);

fn buffer() -> Option<u64> {
    // SAFETY: only the BSP's hotplug scenario uses BUFFER, one call at a time.
    let buffer = unsafe { BUFFER.get_mut() };
    if buffer.is_none() {
        memory::end_arena();
        *buffer = memory::dma_alloc(SECTORS * SECTOR + 4096, 4096);
    }
    *buffer
}

/// Runs `work` in ring 3; None after an error line if it faulted.
fn in_ring3(what: &str, mut work: impl FnMut()) -> Option<()> {
    let mut call = || {
        work();
        0
    };
    user::call_reported("hotplug blk", what, &mut call).map(drop)
}

/// One request at a time over [0, SECTORS), in chunks the device takes; false after an
/// error line.
fn transfer(dev: &mut BlkDevice, slot: u8, op: Op, addr: u64) -> bool {
    let chunk = (u64::from(dev.max_request) / SECTOR).clamp(1, SECTORS);
    let mut sector = 0;
    while sector < SECTORS {
        let count = chunk.min(SECTORS - sector);
        let request = Request {
            op,
            sector,
            addr: addr + sector * SECTOR,
            len: (count * SECTOR) as u32,
        };
        let result = single(dev, 0, request);
        if result != Ok(S_OK) {
            let line = error(slot)
                .s(op.name())
                .s(" sector=")
                .dec(sector)
                .s(" sectors=")
                .dec(count);
            match result {
                Ok(status) => line.s(" status=").dec(u64::from(status)),
                Err(why) => line.s(": ").s(why),
            }
            .end();
            return false;
        }
        sector += count;
    }
    true
}

/// One FLUSH, GET_ID or (`len` bytes from sector 0) read; false after an error line.
fn request(dev: &mut BlkDevice, slot: u8, op: Op, addr: u64) -> bool {
    let len = match op {
        Op::GetId => ID_BYTES,
        Op::Read => SECTOR as u32,
        _ => 0,
    };
    let request = Request {
        op,
        sector: 0,
        addr,
        len,
    };
    match single(dev, 0, request) {
        Ok(S_OK) => true,
        Ok(status) => {
            error(slot)
                .s(op.name())
                .s(" status=")
                .dec(u64::from(status))
                .end();
            false
        }
        Err(why) => {
            error(slot).s(op.name()).s(": ").s(why).end();
            false
        }
    }
}

/// Writes, reads back and checks P(seed), FLUSH, GET_ID: the serial (GET_ID up to the first
/// NUL), or None after an error line.
fn check(dev: &mut BlkDevice, slot: u8, seed: u64, buffer: u64) -> Option<&'static [u8]> {
    let id_buffer = buffer + SECTORS * SECTOR;
    let refuse = |why: &str| {
        error(slot).s(why).end();
        None
    };
    if dev.capacity < SECTORS {
        return refuse("capacity is below 128 sectors");
    }
    if dev.has(F_RO) {
        return refuse("is read-only (VIRTIO_BLK_F_RO)");
    }
    // The first I/O on the new disk, on its own line: the hotplug benchmark times
    // device_add to here.
    if !request(dev, slot, Op::Read, buffer) {
        return None;
    }
    console::line("GUEST HOTPLUG BLK FIRST IO slot=")
        .dec(u64::from(slot))
        .end();
    in_ring3("pattern fill", || pattern::fill(buffer, 0, SECTORS, seed))?;
    if !transfer(dev, slot, Op::Write, buffer) {
        return None;
    }
    if !read_check(dev, slot, seed, buffer, "pattern mismatch") {
        return None;
    }
    if dev.has(F_FLUSH) && !request(dev, slot, Op::Flush, 0) {
        return None;
    }
    memory::zero(id_buffer, 4096);
    if !request(dev, slot, Op::GetId, id_buffer) {
        return None;
    }
    // SAFETY: the GET_ID buffer is ours (BUFFER, never handed out again) and the device
    // completed the request that wrote it; nothing writes it until the next check.
    let id =
        unsafe { core::slice::from_raw_parts(id_buffer as usize as *const u8, ID_BYTES as usize) };
    Some(&id[..id.iter().position(|&b| b == 0).unwrap_or(id.len())])
}

/// The hot-add check of a virtio-blk device in `slot`, data from P(`seed`); whether it
/// passed.
pub fn exercise(dev: &mut BlkDevice, slot: u8, seed: u64) -> bool {
    let Some(buffer) = buffer() else {
        error(slot).s("no DMA memory for the data buffer").end();
        return false;
    };
    let Some(serial) = check(dev, slot, seed, buffer) else {
        return false;
    };
    console::line("GUEST HOTPLUG BLK OK slot=")
        .dec(u64::from(slot))
        .s(" capacity=")
        .dec(dev.capacity)
        .s(" seed=")
        .hex(seed)
        .s(" serial=")
        .ascii(serial)
        .end();
    true
}

/// Reads [0, SECTORS) and checks P(seed) there; false after an error line (`what` names
/// the check).
fn read_check(dev: &mut BlkDevice, slot: u8, seed: u64, buffer: u64, what: &str) -> bool {
    memory::zero(buffer, SECTORS * SECTOR);
    if !transfer(dev, slot, Op::Read, buffer) {
        return false;
    }
    let mut outcome = (0, None);
    if in_ring3("pattern check", || {
        outcome = pattern::check(buffer, 0, SECTORS, seed)
    })
    .is_none()
    {
        return false;
    }
    if let (bad, Some(first)) = outcome {
        first
            .print(error(slot).s(what))
            .s(" bad_sectors=")
            .dec(bad)
            .end();
        return false;
    }
    true
}

/// At the power button, a disk whose check passed (`seed`: its data): it still holds
/// P(seed), and takes more I/O: P(seed + 1) written, read back and checked, flushed.
/// `GUEST HOTPLUG BLK KEPT ...` says a migration or live upgrade in between kept the disk's
/// data and its queue.
pub fn kept(dev: &mut BlkDevice, slot: u8, seed: u64) {
    let Some(buffer) = buffer() else {
        error(slot).s("no DMA memory for the data buffer").end();
        return;
    };
    if !read_check(dev, slot, seed, buffer, "kept pattern mismatch") {
        return;
    }
    let next = seed.wrapping_add(1);
    if in_ring3("pattern fill", || pattern::fill(buffer, 0, SECTORS, next)).is_none()
        || !transfer(dev, slot, Op::Write, buffer)
        || !read_check(dev, slot, next, buffer, "pattern mismatch")
        || (dev.has(F_FLUSH) && !request(dev, slot, Op::Flush, 0))
    {
        return;
    }
    console::line("GUEST HOTPLUG BLK KEPT slot=")
        .dec(u64::from(slot))
        .s(" seed=")
        .hex(seed)
        .s(" next=")
        .hex(next)
        .s(" ok")
        .end();
}

/// Before the eject: lets requests still in flight complete (QUIESCE_MS at most), then shuts
/// the device down (reset, MSI-X and memory decoding off).
pub fn quiesce(dev: &mut BlkDevice, slot: u8) {
    let limit = tsc::from_ms(QUIESCE_MS);
    let mut left = 0;
    for index in 0..dev.queue_count {
        let queue = dev.queue(index);
        in_ring3("quiesce", || {
            let start = cpu::rdtsc();
            while queue.inflight() != 0 && cpu::rdtsc() - start < limit {
                if let Some(Completion::Bogus { .. }) = queue.complete() {
                    break;
                }
            }
            left += u64::from(queue.inflight());
        });
    }
    if left != 0 {
        console::line("GUEST INFO hotplug blk slot=")
            .dec(u64::from(slot))
            .s(" resets the device with ")
            .dec(left)
            .s(" requests still in flight")
            .end();
    }
    dev.transport.shut_down();
}
