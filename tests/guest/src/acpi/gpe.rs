//! General-purpose events (ACPI 6.5, 4.8.4.1) of the FADT's GPE0 block (GPE0_BLK or
//! X_GPE0_BLK, GPE0_BLK_LEN bytes: the status register in the first half, the enable register
//! in the second, one bit per event; status bits are cleared by writing 1). Registers are
//! accessed a byte at a time, which the specification allows for every GPE register.
//!
//! [`enable`] turns on exactly the events asked for (the ones with `_Exx` methods). The SCI,
//! level-triggered and shared with the PM1 events, stays asserted while an enabled event's
//! status is set, so the SCI handler (power.rs) calls [`sci_event`] before the EOI: it clears
//! the status bits of the enabled events it sees and records them for [`take_pending`]. A
//! status bit already set when an event is enabled is kept: the SCI then reports it at once,
//! so an event raised before the guest was ready is not lost. Events 0-255 only (the `_Exx`
//! range), of GPE0 only.

use super::fadt::Fadt;
use super::gas::Gas;
use crate::arch::cpu;
use crate::console;
use crate::sync::Global;
use core::sync::atomic::{AtomicU64, Ordering};

/// A set of GPE numbers: bit N % 64 of word N / 64.
pub type GpeSet = [u64; 4];
/// Register bytes that hold GPEs 0-255.
const MAX_BYTES: usize = 32;

struct Block {
    base: Gas,
    /// Bytes of each register (half of GPE0_BLK_LEN), at most MAX_BYTES used.
    half: u8,
    enabled: [u8; MAX_BYTES],
}

impl Block {
    fn status(&self, byte: usize) -> Gas {
        self.base.sub_register(byte as u64, 8)
    }

    fn enable(&self, byte: usize) -> Gas {
        self.base
            .sub_register(u64::from(self.half) + byte as u64, 8)
    }

    fn bytes(&self) -> usize {
        usize::from(self.half).min(MAX_BYTES)
    }
}

/// Written by [`enable`] with interrupts off on the BSP (the only CPU the SCI is routed to),
/// read by the SCI handler.
static BLOCK: Global<Option<Block>> = Global::new(None);
static PENDING: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// The GPE numbers in `set`, ascending.
pub fn numbers(set: &GpeSet) -> impl Iterator<Item = u8> + '_ {
    (0..=255u8).filter(|&n| set[usize::from(n / 64)] & (1 << (n % 64)) != 0)
}

/// Enables exactly the GPE0 events in `wanted` (every other one is disabled) and returns the
/// ones enabled: those beyond the block are left out after an error line. None after an error
/// line if there is no usable GPE0 block. Interrupts are off on return.
pub fn enable(fadt: &Fadt, wanted: &GpeSet) -> Option<GpeSet> {
    let Some(base) = fadt.gpe0 else {
        console::error("acpi: the FADT has no GPE0 block").end();
        return None;
    };
    if fadt.gpe0_len < 2 || !fadt.gpe0_len.is_multiple_of(2) {
        console::error("acpi: GPE0_BLK_LEN=")
            .dec(u64::from(fadt.gpe0_len))
            .s(" is not a positive even number")
            .end();
        return None;
    }
    let mut block = Block {
        base,
        half: fadt.gpe0_len / 2,
        enabled: [0; MAX_BYTES],
    };
    let mut enabled: GpeSet = [0; 4];
    for gpe in numbers(wanted) {
        let byte = usize::from(gpe / 8);
        if byte >= block.bytes() {
            console::error("acpi: GPE ")
                .dec(u64::from(gpe))
                .s(" has a method but is beyond the GPE0 block (")
                .dec(u64::from(block.half) * 8)
                .s(" events)")
                .end();
            continue;
        }
        block.enabled[byte] |= 1 << (gpe % 8);
        enabled[usize::from(gpe / 64)] |= 1 << (gpe % 64);
    }
    cpu::disable_interrupts();
    // SAFETY: interrupts are off on the BSP, the only CPU the SCI handler runs on, so nothing
    // reads BLOCK meanwhile.
    let slot = unsafe { BLOCK.get_mut() };
    for byte in 0..block.bytes() {
        if let Err(err) = block.enable(byte).write(u64::from(block.enabled[byte])) {
            console::error("acpi: GPE0 enable register: ")
                .s(err.describe())
                .end();
            *slot = None;
            return None;
        }
    }
    *slot = Some(block);
    Some(enabled)
}

/// SCI handler's part (interrupts off): clears the status of every enabled GPE found set and
/// records it for [`take_pending`].
pub fn sci_event() {
    // SAFETY: only `enable` writes BLOCK, with interrupts off on this CPU.
    let Some(block) = (unsafe { BLOCK.get() }) else {
        return;
    };
    for byte in 0..block.bytes() {
        let mask = block.enabled[byte];
        if mask == 0 {
            continue;
        }
        let status = block.status(byte);
        let Ok(value) = status.read() else {
            continue;
        };
        let seen = value as u8 & mask;
        if seen != 0 {
            let _ = status.write(u64::from(seen));
            PENDING[byte / 8].fetch_or(u64::from(seen) << (8 * (byte % 8)), Ordering::AcqRel);
        }
    }
}

/// The GPEs whose events arrived since the last call.
pub fn take_pending() -> GpeSet {
    PENDING
        .each_ref()
        .map(|word| word.swap(0, Ordering::AcqRel))
}
