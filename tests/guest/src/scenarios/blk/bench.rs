//! `blk-bench [bench_ms=T] [workload=K] [repeat=N]`: random and sequential reads and writes
//! on queue 0 at fixed block sizes and queue depths, each for `bench_ms`, one `GUEST BENCH
//! ...` line each (rates from the TSC, counting only requests that succeeded; failed ones
//! are counted apart, in `errors=`). `workload=K` runs only the K-th (from 1), `repeat=N`
//! runs each N times in a row: short slices of one workload give the host its rate over
//! time (during a block job, say). The loops run in ring 3.

use super::io::{usable, STALL_MS};
use super::params::param;
use crate::arch::{cpu, memory, tsc, user};
use crate::console;
use crate::drivers::virtio_blk::queue::{BlkQueue, Completion, Op, Request};
use crate::drivers::virtio_blk::spec::{SECTOR, S_OK};
use crate::drivers::virtio_blk::BlkDevice;

const DEFAULT_BENCH_MS: u64 = 2000;

struct BenchSpec {
    rw: &'static str,
    write: bool,
    random: bool,
    bs: u32,
    qd: u16,
}

const BENCHES: [BenchSpec; 6] = [
    BenchSpec {
        rw: "randread",
        write: false,
        random: true,
        bs: 4096,
        qd: 1,
    },
    BenchSpec {
        rw: "randread",
        write: false,
        random: true,
        bs: 4096,
        qd: 32,
    },
    BenchSpec {
        rw: "randwrite",
        write: true,
        random: true,
        bs: 4096,
        qd: 1,
    },
    BenchSpec {
        rw: "randwrite",
        write: true,
        random: true,
        bs: 4096,
        qd: 32,
    },
    BenchSpec {
        rw: "seqread",
        write: false,
        random: false,
        bs: 128 * 1024,
        qd: 8,
    },
    BenchSpec {
        rw: "seqwrite",
        write: true,
        random: false,
        bs: 128 * 1024,
        qd: 8,
    },
];

#[derive(Default)]
struct BenchResult {
    /// Requests that completed with S_OK: only these count as I/Os.
    ios: u64,
    /// Requests that completed with another status, or chains the device returned that
    /// were not in flight.
    ticks: u64,
    errors: u64,
    stalled: bool,
}

/// One benchmark on queue 0 (ring 3): keeps `qd` requests of `bs` bytes in flight for
/// `duration` TSC ticks, then drains.
fn bench_run(
    q: &mut BlkQueue,
    capacity: u64,
    spec: &BenchSpec,
    buffers: u64,
    bs: u32,
    qd: u16,
    duration: u64,
) -> BenchResult {
    let mut result = BenchResult::default();
    let per_io = u64::from(bs) / SECTOR;
    let blocks = capacity / per_io;
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next_seq = 0u64;
    let mut offset = || {
        if spec.random {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % blocks) * per_io
        } else {
            let sector = next_seq;
            next_seq += per_io;
            if next_seq + per_io > capacity {
                next_seq = 0;
            }
            sector
        }
    };
    let op = if spec.write { Op::Write } else { Op::Read };
    let start = cpu::rdtsc();
    let deadline = start + duration;
    let stall = tsc::from_ms(STALL_MS);
    for slot in 0..qd {
        let request = Request {
            op,
            sector: offset(),
            addr: buffers + u64::from(slot) * u64::from(bs),
            len: bs,
        };
        q.submit(slot, &request);
    }
    q.kick();
    let mut last = start;
    loop {
        let mut resubmitted = false;
        while let Some(completion) = q.complete() {
            last = cpu::rdtsc();
            match completion {
                Completion::Done { slot, status } => {
                    if status == S_OK {
                        result.ios += 1;
                    } else {
                        result.errors += 1;
                    }
                    if last < deadline {
                        let request = Request {
                            op,
                            sector: offset(),
                            addr: buffers + u64::from(slot) * u64::from(bs),
                            len: bs,
                        };
                        resubmitted |= q.submit(slot, &request);
                    }
                }
                Completion::Bogus { .. } => result.errors += 1,
            }
        }
        if resubmitted {
            q.kick();
        }
        if q.inflight() == 0 {
            break;
        }
        if cpu::rdtsc() - last > stall {
            result.stalled = true;
            break;
        }
    }
    result.ticks = cpu::rdtsc() - start;
    result
}

pub fn run(dev: &mut BlkDevice, cmdline: &[u8]) {
    if !usable(dev, true) {
        return;
    }
    let bench_ms = param(cmdline, "bench_ms", DEFAULT_BENCH_MS).max(1);
    let capacity = dev.capacity;
    let max_request = dev.max_request;
    let slots = dev.queue(0).slots();
    let Some(buffers) = memory::dma_alloc(2 << 20, 4096) else {
        console::error("blk: no DMA memory for blk-bench").end();
        return;
    };
    let only = param(cmdline, "workload", 0);
    let repeat = param(cmdline, "repeat", 1).max(1);
    for (index, spec) in BENCHES.iter().enumerate() {
        if only != 0 && only != index as u64 + 1 {
            continue;
        }
        let bs = spec.bs.min(max_request);
        let qd = spec.qd.min(slots);
        if capacity < u64::from(bs) / SECTOR || u64::from(bs) * u64::from(qd) > 2 << 20 {
            console::error("blk-bench: disk too small for rw=")
                .s(spec.rw)
                .end();
            continue;
        }
        for _ in 0..repeat {
            if !bench_once(dev, spec, buffers, capacity, bs, qd, bench_ms) {
                return;
            }
        }
    }
}

/// One run of `spec` for `bench_ms`, with its START and result lines; false if the
/// device stalled or the run faulted (the scenario ends).
fn bench_once(
    dev: &mut BlkDevice,
    spec: &BenchSpec,
    buffers: u64,
    capacity: u64,
    bs: u32,
    qd: u16,
    bench_ms: u64,
) -> bool {
    // Marks the start for the host, which samples the backend's CPU time between this
    // line and the result line.
    console::line("GUEST BENCH START rw=")
        .s(spec.rw)
        .s(" bs=")
        .dec(u64::from(bs))
        .s(" qd=")
        .dec(u64::from(qd))
        .end();
    let q = dev.queue(0);
    let mut result = BenchResult::default();
    let duration = tsc::from_ms(bench_ms);
    let mut work = || {
        result = bench_run(q, capacity, spec, buffers, bs, qd, duration);
        0
    };
    if let Err(fault) = user::call(&mut work) {
        fault.report("blk", "blk-bench");
        return false;
    }
    if result.errors != 0 || result.stalled {
        console::error("blk-bench rw=")
            .s(spec.rw)
            .s(" errors=")
            .dec(result.errors)
            .s(if result.stalled { " stalled" } else { "" })
            .end();
        if result.stalled {
            return false;
        }
    }
    console::line("GUEST BENCH rw=")
        .s(spec.rw)
        .s(" bs=")
        .dec(u64::from(bs))
        .s(" qd=")
        .dec(u64::from(qd))
        .s(" iops=")
        .dec(tsc::per_second(result.ios, result.ticks))
        .s(" mib_s=")
        .tenths(tsc::mib_s_tenths(result.ios * u64::from(bs), result.ticks))
        .s(" ios=")
        .dec(result.ios)
        .s(" errors=")
        .dec(result.errors)
        .end();
    true
}
