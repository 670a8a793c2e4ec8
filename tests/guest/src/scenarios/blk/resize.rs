//! `blk-resize`: waits (halted) for the configuration-change interrupt of a capacity change
//! and prints the capacity before and after.

use super::params::param;
use crate::arch::halt::halt_until;
use crate::arch::{cpu, interrupts};
use crate::console;
use crate::drivers::virtio_blk::BlkDevice;

const RESIZE_TIMEOUT_MS: u64 = 60_000;

pub fn run(dev: &mut BlkDevice, cmdline: &[u8]) {
    let timeout_ms = param(cmdline, "timeout_ms", RESIZE_TIMEOUT_MS);
    let Some(vector) = dev.transport.config_vector else {
        console::error("blk: no MSI-X vector for configuration changes").end();
        return;
    };
    cpu::take_pending_interrupts();
    let before = interrupts::count(vector);
    console::line("GUEST BLK RESIZE WAIT capacity=")
        .dec(dev.capacity)
        .end();
    if !halt_until(timeout_ms, || interrupts::count(vector) != before) {
        console::error("blk: no configuration-change interrupt within ")
            .dec(timeout_ms)
            .s(" ms")
            .end();
        return;
    }
    let capacity = dev.read_capacity();
    console::line("GUEST BLK RESIZED capacity=")
        .dec(capacity)
        .s(" irq=config")
        .end();
}
