//! Work for the APs: a mailbox per CPU that the AP's idle loop (smp.rs) serves. The BSP
//! posts a function and its argument ([`post`]) and wakes the AP with an IPI; the AP runs
//! the function in ring 3 (natively, even where ring 0 is emulated), records the result and
//! its own APIC ID, and halts again; the BSP waits for it with a bound ([`wait`]).

use crate::arch::cpus::MAX_CPUS;
use crate::arch::vectors::WAKE_VECTOR;
use crate::arch::{apic, pit, user};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

struct Mailbox {
    /// Requests posted so far; the AP serves while `done` is behind.
    posted: AtomicU64,
    done: AtomicU64,
    /// `fn(u64) -> u64` as an address (0: none yet).
    function: AtomicUsize,
    arg: AtomicU64,
    result: AtomicU64,
    /// 0: returned; else the exception vector + 1 that ended it in ring 3.
    fault: AtomicU64,
    /// The APIC ID of the CPU that served the request.
    apic_id: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Mailbox = Mailbox {
    posted: AtomicU64::new(0),
    done: AtomicU64::new(0),
    function: AtomicUsize::new(0),
    arg: AtomicU64::new(0),
    result: AtomicU64::new(0),
    fault: AtomicU64::new(0),
    apic_id: AtomicU32::new(0),
};

static MAILBOXES: [Mailbox; MAX_CPUS] = [EMPTY; MAX_CPUS];

/// What an AP did with a request.
#[derive(Clone, Copy)]
pub struct Outcome {
    /// The function's result, or the exception vector that ended it in ring 3.
    pub result: Result<u64, u64>,
    /// Who ran it.
    pub apic_id: u32,
}

/// Posts `function(arg)` to CPU `index` (an AP that is online, whose APIC ID is `apic_id`)
/// and wakes it; returns the request's number for [`wait`]. One request at a time per CPU.
pub fn post(index: usize, apic_id: u32, function: fn(u64) -> u64, arg: u64) -> Option<u64> {
    let mailbox = MAILBOXES.get(index)?;
    mailbox.function.store(function as usize, Ordering::Relaxed);
    mailbox.arg.store(arg, Ordering::Relaxed);
    let number = mailbox.posted.fetch_add(1, Ordering::AcqRel) + 1;
    // A lost wake-up only delays the work until the next interrupt: report it all the same.
    apic::send_fixed(apic_id, WAKE_VECTOR).then_some(number)
}

/// Waits (at most `timeout_us`) until CPU `index` served request `number`.
pub fn wait(index: usize, number: u64, timeout_us: u64) -> Option<Outcome> {
    let mailbox = MAILBOXES.get(index)?;
    if !pit::wait_until(timeout_us, || {
        mailbox.done.load(Ordering::Acquire) >= number
    }) {
        return None;
    }
    let fault = mailbox.fault.load(Ordering::Relaxed);
    Some(Outcome {
        result: match fault {
            0 => Ok(mailbox.result.load(Ordering::Relaxed)),
            vector => Err(vector - 1),
        },
        apic_id: mailbox.apic_id.load(Ordering::Relaxed),
    })
}

/// The AP's part (CPU `index`, interrupts off): serves what was posted since it last looked.
pub fn serve(index: usize) {
    let Some(mailbox) = MAILBOXES.get(index) else {
        return;
    };
    let posted = mailbox.posted.load(Ordering::Acquire);
    if posted == mailbox.done.load(Ordering::Relaxed) {
        return;
    }
    let address = mailbox.function.load(Ordering::Relaxed);
    let arg = mailbox.arg.load(Ordering::Relaxed);
    let outcome = match address {
        0 => Err(0),
        // SAFETY: `post` stored this address from a `fn(u64) -> u64`; nothing else writes it.
        _ => user::run(
            unsafe { core::mem::transmute::<usize, fn(u64) -> u64>(address) },
            arg,
        )
        .map_err(|fault| fault.vector),
    };
    let (result, fault) = match outcome {
        Ok(value) => (value, 0),
        Err(vector) => (0, vector + 1),
    };
    mailbox.result.store(result, Ordering::Relaxed);
    mailbox.fault.store(fault, Ordering::Relaxed);
    mailbox.apic_id.store(apic::id(), Ordering::Relaxed);
    mailbox.done.store(posted, Ordering::Release);
}
