//! Single requests on a block device (slot 0 of one queue): polled from ring 3, or completed
//! by the queue's MSI-X interrupt with the CPU halted in ring 0; FLUSH; and the checks every
//! scenario makes before its first request.

use crate::arch::halt::halt_until;
use crate::arch::{cpu, interrupts, tsc, user};
use crate::console;
use crate::drivers::virtio_blk::queue::{Completion, Op, Request};
use crate::drivers::virtio_blk::spec::{F_FLUSH, F_RO, S_OK};
use crate::drivers::virtio_blk::BlkDevice;

/// A request outstanding this long (without any completion) is reported.
pub const STALL_MS: u64 = 10_000;
const IRQ_TIMEOUT_MS: u64 = 5_000;

/// Whether device 0 can run the scenario (`writes`: one that writes); an error line if not.
pub fn usable(dev: &BlkDevice, writes: bool) -> bool {
    if dev.capacity == 0 {
        console::error("blk: device 0 has capacity 0").end();
        return false;
    }
    if writes && dev.has(F_RO) {
        console::error("blk: device 0 is read-only (VIRTIO_BLK_F_RO)").end();
        return false;
    }
    true
}

/// How long a single request is waited for.
#[derive(Clone, Copy)]
pub enum Patience {
    /// Given up on after STALL_MS (an error).
    GiveUp,
    /// Waited for as long as it takes (a daemon restart): a pause over `stall_ms` is
    /// reported once, as the sweeps report theirs (with the round), and its end too.
    RideOut { stall_ms: u64, round: Option<u64> },
}

/// One request in slot 0 of `queue`, polled from ring 3. Ok(status) or Err(why).
pub fn single(dev: &mut BlkDevice, queue: usize, request: Request) -> Result<u8, &'static str> {
    single_with(dev, queue, request, Patience::GiveUp)
}

/// `single`, with `patience`.
pub fn single_with(
    dev: &mut BlkDevice,
    queue: usize,
    request: Request,
    patience: Patience,
) -> Result<u8, &'static str> {
    let stall = tsc::from_ms(match patience {
        Patience::GiveUp => STALL_MS,
        Patience::RideOut { stall_ms, .. } => stall_ms,
    });
    let q = dev.queue(queue);
    let mut outcome = Err("not submitted");
    let mut work = || {
        if !q.submit(0, &request) {
            outcome = Err("slot 0 refused the request");
            return 0;
        }
        q.kick();
        let start = cpu::rdtsc();
        let mut reported = false;
        loop {
            match q.complete() {
                Some(Completion::Done { status, .. }) => {
                    if reported {
                        console::line("GUEST INFO blk: I/O resumed after ")
                            .dec(tsc::to_us(cpu::rdtsc() - start) / 1000)
                            .s(" ms")
                            .end();
                    }
                    outcome = Ok(status);
                    return 0;
                }
                Some(Completion::Bogus { .. }) => {
                    outcome = Err("bogus completion");
                    return 0;
                }
                None if cpu::rdtsc() - start > stall => match patience {
                    Patience::GiveUp => {
                        outcome = Err("no completion within 10 s");
                        return 0;
                    }
                    Patience::RideOut { round, .. } if !reported => {
                        reported = true;
                        let line = console::error("blk: no completion for ")
                            .dec(tsc::to_us(cpu::rdtsc() - start) / 1000)
                            .s(" ms, requests in flight=1");
                        match round {
                            Some(r) => line.s(" round=").dec(r),
                            None => line,
                        }
                        .end();
                    }
                    Patience::RideOut { .. } => core::hint::spin_loop(),
                },
                None => core::hint::spin_loop(),
            }
        }
    };
    if let Err(fault) = user::call(&mut work) {
        fault.report("blk", "single request");
        return Err("ring-3 fault");
    }
    outcome
}

/// FLUSH if the device has it; false after an error line if it failed.
pub fn flush(dev: &mut BlkDevice) -> bool {
    flush_with(dev, Patience::GiveUp)
}

/// `flush`, with `patience`.
pub fn flush_with(dev: &mut BlkDevice, patience: Patience) -> bool {
    if !dev.has(F_FLUSH) {
        return true;
    }
    let request = Request {
        op: Op::Flush,
        sector: 0,
        addr: 0,
        len: 0,
    };
    match single_with(dev, 0, request, patience) {
        Ok(S_OK) => true,
        Ok(status) => {
            console::error("blk io error op=flush queue=0 status=")
                .dec(u64::from(status))
                .end();
            false
        }
        Err(why) => {
            console::error("blk flush: ").s(why).end();
            false
        }
    }
}

/// One request in slot 0 of `queue`, waiting for its MSI-X interrupt (halted, in ring 0)
/// rather than polling. Ok(status) or Err(why).
pub fn request_by_interrupt(
    dev: &mut BlkDevice,
    queue: usize,
    request: Request,
) -> Result<u8, &'static str> {
    let q = dev.queue(queue);
    let Some(vector) = q.vq.vector else {
        return Err("the queue has no MSI-X vector");
    };
    q.vq.set_interrupts(true);
    // Interrupts raised while we polled with interrupts off (e.g. QEMU signals the first used
    // buffers even when suppressed) are pending: take them before counting.
    cpu::take_pending_interrupts();
    let before = interrupts::count(vector);
    if !q.submit(0, &request) {
        q.vq.set_interrupts(false);
        return Err("slot 0 refused the request");
    }
    q.kick();
    let interrupted = halt_until(IRQ_TIMEOUT_MS, || {
        interrupts::count(vector) != before && q.vq.has_used()
    });
    q.vq.set_interrupts(false);
    let interrupted = interrupted || interrupts::count(vector) != before;
    let completion = q.complete();
    match (interrupted, completion) {
        (true, Some(Completion::Done { status, .. })) => Ok(status),
        (true, None) => Err("interrupt arrived but no completion"),
        (_, Some(Completion::Bogus { .. })) => Err("bogus completion"),
        (false, Some(_)) => Err("completed without an interrupt within 5 s"),
        (false, None) => Err("neither interrupt nor completion within 5 s"),
    }
}
