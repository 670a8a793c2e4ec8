//! Whole-disk sweeps over every queue (ring 3): writing pattern P(seed) over the disk, or
//! reading it back and checking it, with up to SWEEP_DEPTH requests in flight on every queue.
//! I/O errors, mismatches, bogus completions and stalls are counted and reported (a bounded
//! number of lines per sweep); blk-pattern and blk-verify-loop are built on this.

use super::pattern::{check, fill, Mismatch};
use crate::arch::{cpu, memory, tsc, user};
use crate::console;
use crate::drivers::virtio_blk::queue::{Completion, Op, Request};
use crate::drivers::virtio_blk::spec::{SECTOR, S_OK};
use crate::drivers::virtio_blk::{BlkDevice, MAX_QUEUES};

/// Requests in flight per queue in the whole-disk sweeps.
const SWEEP_DEPTH: usize = 16;
const SWEEP_CHUNK: u64 = 64 * 1024;
/// Error lines per sweep before the rest are only counted.
const ERROR_LINES: u32 = 8;

#[derive(Default)]
pub struct SweepResult {
    pub bytes: u64,
    pub ticks: u64,
    pub io_errors: u64,
    pub bad_sectors: u64,
    pub first_mismatch: Option<Mismatch>,
    pub bogus: u64,
    pub stalled: bool,
}

impl SweepResult {
    pub fn errors(&self) -> u64 {
        self.io_errors + self.bad_sectors + self.bogus + u64::from(self.stalled)
    }
}

pub struct Sweep<'a> {
    pub dev: &'a mut BlkDevice,
    queues: usize,
    depth: usize,
    chunk_sectors: u64,
    buffers: u64,
    sector: [[u64; SWEEP_DEPTH]; MAX_QUEUES],
    count: [[u64; SWEEP_DEPTH]; MAX_QUEUES],
    stall_ticks: u64,
    /// Keep waiting after reporting a stall (blk-verify-loop) instead of giving up.
    wait_forever: bool,
    /// Round number for error lines (blk-verify-loop); None: mismatches are left to the caller.
    pub round: Option<u64>,
    error_lines: u32,
}

impl<'a> Sweep<'a> {
    /// Sizes the sweep (every queue, up to SWEEP_DEPTH in flight each, SWEEP_CHUNK requests)
    /// to the DMA pool. None after an error line if not even one small buffer per queue fits.
    pub fn new(dev: &'a mut BlkDevice, stall_ms: u64, wait_forever: bool) -> Option<Sweep<'a>> {
        let queues = dev.queue_count;
        let slots = (0..queues)
            .map(|q| usize::from(dev.queue(q).slots()))
            .min()
            .unwrap_or(0);
        let mut depth = slots.min(SWEEP_DEPTH);
        let mut chunk = SWEEP_CHUNK.min(u64::from(dev.max_request));
        let room = memory::dma_remaining().saturating_sub(64 * 1024);
        while (queues * depth) as u64 * chunk > room {
            if depth > 4 {
                depth /= 2;
            } else if chunk > 4096 {
                chunk /= 2;
            } else {
                break;
            }
        }
        let total = (queues * depth) as u64 * chunk;
        let buffers = memory::dma_alloc(total, 4096);
        let (Some(buffers), true) = (buffers, depth > 0 && chunk >= SECTOR) else {
            console::error("blk: no DMA memory for ")
                .dec((queues * depth) as u64)
                .s(" buffers of ")
                .dec(chunk)
                .s(" bytes")
                .end();
            return None;
        };
        Some(Sweep {
            dev,
            queues,
            depth,
            chunk_sectors: chunk / SECTOR,
            buffers,
            sector: [[0; SWEEP_DEPTH]; MAX_QUEUES],
            count: [[0; SWEEP_DEPTH]; MAX_QUEUES],
            stall_ticks: tsc::from_ms(stall_ms),
            wait_forever,
            round: None,
            error_lines: 0,
        })
    }

    fn buffer(&self, queue: usize, slot: usize) -> u64 {
        self.buffers + (queue * self.depth + slot) as u64 * self.chunk_sectors * SECTOR
    }

    /// Whether another error line may be printed (the one that exhausts the budget says so).
    fn may_print(&mut self) -> bool {
        self.error_lines += 1;
        if self.error_lines == ERROR_LINES + 1 {
            console::error("blk: further errors of this pass are only counted").end();
        }
        self.error_lines <= ERROR_LINES
    }

    fn round_suffix(&self, line: console::Line) -> console::Line {
        match self.round {
            Some(round) => line.s(" round=").dec(round),
            None => line,
        }
    }

    /// Submits the next chunk from `next` in `slot` of `queue`; false when the disk is done
    /// (or the queue refused, after an error line).
    fn issue(&mut self, queue: usize, slot: usize, next: &mut u64, write: bool, seed: u64) -> bool {
        let capacity = self.dev.capacity;
        if *next >= capacity {
            return false;
        }
        let sectors = self.chunk_sectors.min(capacity - *next);
        let addr = self.buffer(queue, slot);
        if write {
            fill(addr, *next, sectors, seed);
        }
        let request = Request {
            op: if write { Op::Write } else { Op::Read },
            sector: *next,
            addr,
            len: (sectors * SECTOR) as u32,
        };
        if !self.dev.queue(queue).submit(slot as u16, &request) {
            console::error("blk: queue ")
                .dec(queue as u64)
                .s(" refused a request in slot ")
                .dec(slot as u64)
                .end();
            return false;
        }
        self.sector[queue][slot] = *next;
        self.count[queue][slot] = sectors;
        *next += sectors;
        true
    }

    /// Writes P(seed) over the whole disk, or reads it and checks it against P(seed), keeping
    /// `depth` requests in flight on every queue. Runs in ring 3.
    pub fn run(&mut self, write: bool, seed: u64) -> SweepResult {
        let mut result = SweepResult::default();
        self.error_lines = 0;
        let start = cpu::rdtsc();
        let mut next = 0;
        for queue in 0..self.queues {
            for slot in 0..self.depth {
                if !self.issue(queue, slot, &mut next, write, seed) {
                    break;
                }
            }
            self.dev.queue(queue).kick();
        }
        let mut last_progress = start;
        let mut stall_reported = false;
        loop {
            let mut progress = false;
            let mut outstanding = 0;
            for queue in 0..self.queues {
                let mut resubmitted = false;
                while let Some(completion) = self.dev.queue(queue).complete() {
                    progress = true;
                    match completion {
                        Completion::Done { slot, status } => {
                            let slot = usize::from(slot);
                            self.completed(queue, slot, status, write, seed, &mut result);
                            resubmitted |= self.issue(queue, slot, &mut next, write, seed);
                        }
                        Completion::Bogus { id, len } => {
                            result.bogus += 1;
                            if self.may_print() {
                                let line = console::error("blk: bogus completion queue=")
                                    .dec(queue as u64)
                                    .s(" id=")
                                    .dec(u64::from(id))
                                    .s(" len=")
                                    .dec(u64::from(len));
                                self.round_suffix(line).end();
                            }
                        }
                    }
                }
                if resubmitted {
                    self.dev.queue(queue).kick();
                }
                outstanding += usize::from(self.dev.queue(queue).inflight());
            }
            let now = cpu::rdtsc();
            if progress {
                // Reported even when this progress ends the sweep.
                if stall_reported {
                    console::line("GUEST INFO blk: I/O resumed after ")
                        .dec(tsc::to_us(now - last_progress) / 1000)
                        .s(" ms")
                        .end();
                    stall_reported = false;
                }
                last_progress = now;
            }
            if outstanding == 0 {
                break;
            }
            if progress {
                continue;
            } else if now - last_progress > self.stall_ticks && !stall_reported {
                let line = console::error("blk: no completion for ")
                    .dec(tsc::to_us(now - last_progress) / 1000)
                    .s(" ms, requests in flight=")
                    .dec(outstanding as u64);
                self.round_suffix(line).end();
                stall_reported = true;
                if !self.wait_forever {
                    result.stalled = true;
                    break;
                }
            } else {
                core::hint::spin_loop();
            }
        }
        result.ticks = cpu::rdtsc() - start;
        result
    }

    fn completed(
        &mut self,
        queue: usize,
        slot: usize,
        status: u8,
        write: bool,
        seed: u64,
        result: &mut SweepResult,
    ) {
        let (sector, sectors) = (self.sector[queue][slot], self.count[queue][slot]);
        if status != S_OK {
            result.io_errors += 1;
            if self.may_print() {
                let line = console::error("blk io error op=")
                    .s(if write { "write" } else { "read" })
                    .s(" queue=")
                    .dec(queue as u64)
                    .s(" sector=")
                    .dec(sector)
                    .s(" sectors=")
                    .dec(sectors)
                    .s(" status=")
                    .dec(u64::from(status));
                self.round_suffix(line).end();
            }
            return;
        }
        result.bytes += sectors * SECTOR;
        if write {
            return;
        }
        let (bad, first) = check(self.buffer(queue, slot), sector, sectors, seed);
        if bad == 0 {
            return;
        }
        result.bad_sectors += bad;
        // Completions arrive out of order: keep the lowest sector.
        if let Some(m) = first {
            if result.first_mismatch.is_none_or(|f| m.sector < f.sector) {
                result.first_mismatch = first;
            }
        }
        if let (Some(round), Some(m)) = (self.round, first) {
            if self.may_print() {
                m.print(console::error("blk verify mismatch round=").dec(round))
                    .s(" bad_sectors_in_request=")
                    .dec(bad)
                    .end();
            }
        }
    }
}

/// Runs one sweep in ring 3.
pub fn sweep(sweep: &mut Sweep, write: bool, seed: u64) -> SweepResult {
    let mut result = SweepResult::default();
    let mut work = || {
        result = sweep.run(write, seed);
        0
    };
    if let Err(fault) = user::call(&mut work) {
        fault.report("blk", if write { "write sweep" } else { "read sweep" });
        result.stalled = true;
    }
    result
}
