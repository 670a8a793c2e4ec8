//! The data-integrity scenarios, both whole-disk sweeps over every queue:
//! - `blk-pattern seed=<hex> [check_only=1]`: the disk must hold P(seed); then (unless
//!   check_only, which a read-only disk takes) P(seed + 1) is written over it and flushed,
//!   then DISCARD [8, 16) and WRITE_ZEROES [16, 24) where negotiated;
//! - `blk-verify-loop seed=<hex> [rounds=R] [stall_ms=T]`: rounds of write P(seed + round),
//!   flush, read back and check, riding out stalls (a daemon restart) instead of failing.

use super::io::{flush, flush_with, single, usable, Patience, STALL_MS};
use super::params::{param, seed};
use super::sweep::{sweep, Sweep};
use crate::arch::{cpu, tsc};
use crate::console;
use crate::drivers::virtio_blk::queue::{Op, Request};
use crate::drivers::virtio_blk::spec::{F_DISCARD, F_WRITE_ZEROES, SECTOR, S_OK};
use crate::drivers::virtio_blk::BlkDevice;

const DEFAULT_VERIFY_STALL_MS: u64 = 30_000;

pub fn pattern(dev: &mut BlkDevice, cmdline: &[u8]) {
    let Some(seed) = seed(cmdline) else {
        return;
    };
    let check_only = param(cmdline, "check_only", 0) != 0;
    if !usable(dev, !check_only) {
        return;
    }
    let capacity = dev.capacity;
    let discard = dev.has(F_DISCARD);
    let write_zeroes = dev.has(F_WRITE_ZEROES);
    let Some(mut plan) = Sweep::new(dev, STALL_MS, false) else {
        return;
    };
    // (a) the whole disk must hold P(seed).
    let read = sweep(&mut plan, false, seed);
    if let Some(m) = read.first_mismatch {
        m.print(console::error("blk pattern mismatch")).end();
    }
    if check_only {
        if read.errors() == 0 {
            console::line("GUEST BLK PATTERN OK sectors=")
                .dec(capacity)
                .s(" read_mib_s=")
                .tenths(tsc::mib_s_tenths(read.bytes, read.ticks))
                .s(" check_only")
                .end();
        } else {
            console::error("blk pattern failed mismatched_sectors=")
                .dec(read.bad_sectors)
                .s(" io_errors=")
                .dec(read.io_errors)
                .end();
        }
        return;
    }
    // (b) P(seed + 1) over the whole disk, flushed.
    let write = sweep(&mut plan, true, seed.wrapping_add(1));
    let dev = plan.dev;
    let flush_start = cpu::rdtsc();
    let mut failures = u64::from(!flush(dev));
    let write_ticks = write.ticks + (cpu::rdtsc() - flush_start);
    // (c) DISCARD [8, 16) and WRITE_ZEROES [16, 24), flushed.
    if capacity >= 24 {
        let ranges = [
            (Op::Discard, discard, 8, "GUEST BLK DISCARD "),
            (Op::WriteZeroes, write_zeroes, 16, "GUEST BLK WRITE_ZEROES "),
        ];
        for (op, offered, sector, label) in ranges {
            if !offered {
                console::line(label).s("unsupported").end();
                continue;
            }
            let request = Request {
                op,
                sector,
                addr: 0,
                len: (8 * SECTOR) as u32,
            };
            match single(dev, 0, request) {
                Ok(S_OK) => console::line(label).s("done").end(),
                Ok(status) => {
                    failures += 1;
                    console::error("blk io error op=")
                        .s(op.name())
                        .s(" queue=0 sector=")
                        .dec(sector)
                        .s(" sectors=8 status=")
                        .dec(u64::from(status))
                        .end();
                }
                Err(why) => {
                    failures += 1;
                    console::error("blk ").s(op.name()).s(": ").s(why).end();
                }
            }
        }
        failures += u64::from(!flush(dev));
    } else {
        console::error("blk: capacity ")
            .dec(capacity)
            .s(" is below 24 sectors: no DISCARD/WRITE_ZEROES step")
            .end();
        failures += 1;
    }
    let errors = read.errors() + write.errors() + failures;
    if errors == 0 {
        console::line("GUEST BLK PATTERN OK sectors=")
            .dec(capacity)
            .s(" read_mib_s=")
            .tenths(tsc::mib_s_tenths(read.bytes, read.ticks))
            .s(" write_mib_s=")
            .tenths(tsc::mib_s_tenths(write.bytes, write_ticks))
            .end();
    } else {
        console::error("blk pattern failed mismatched_sectors=")
            .dec(read.bad_sectors)
            .s(" io_errors=")
            .dec(read.io_errors + write.io_errors)
            .s(" other=")
            .dec(read.bogus + write.bogus + u64::from(read.stalled || write.stalled) + failures)
            .end();
    }
}

pub fn verify_loop(dev: &mut BlkDevice, cmdline: &[u8]) {
    let Some(seed) = seed(cmdline) else {
        return;
    };
    if !usable(dev, true) {
        return;
    }
    let rounds = param(cmdline, "rounds", 0);
    let stall_ms = param(cmdline, "stall_ms", DEFAULT_VERIFY_STALL_MS).max(1);
    let Some(mut plan) = Sweep::new(dev, stall_ms, true) else {
        return;
    };
    let mut total_errors = 0;
    let mut round = 1;
    loop {
        plan.round = Some(round);
        let pattern = seed.wrapping_add(round);
        let write = sweep(&mut plan, true, pattern);
        // A restart may land on the flush too: waited out like the sweeps' requests.
        let flushed = flush_with(
            plan.dev,
            Patience::RideOut {
                stall_ms,
                round: Some(round),
            },
        );
        let read = sweep(&mut plan, false, pattern);
        let errors = write.errors() + read.errors() + u64::from(!flushed);
        total_errors += errors;
        if errors == 0 {
            console::line("GUEST BLK ROUND ")
                .dec(round)
                .s(" OK errors=0")
                .end();
        } else {
            console::line("GUEST BLK ROUND ")
                .dec(round)
                .s(" FAILED errors=")
                .dec(errors)
                .end();
        }
        if rounds != 0 && round >= rounds {
            break;
        }
        round += 1;
    }
    console::line("GUEST BLK VERIFY DONE rounds=")
        .dec(round)
        .s(" errors=")
        .dec(total_errors)
        .end();
}
