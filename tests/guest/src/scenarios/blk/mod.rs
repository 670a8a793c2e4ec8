//! Block scenarios: `blk-info`, `blk-pattern`, `blk-queues`, `blk-resize`, `blk-bench`,
//! `blk-verify-loop` (see the README for their output lines), all on virtio-blk device 0
//! except `blk-info`, which lists every device.
//!
//! Set-up (PCI scan, virtio negotiation, MSI-X) runs in ring 0. The I/O loops (submit, kick,
//! poll the used rings, fill and verify data) run in ring 3 through `user::call`, where the
//! CPU runs natively even on kvm-pvm hosts; interrupts are only waited for in ring 0, halted.
//!
//! - info.rs, integrity.rs (`blk-pattern`, `blk-verify-loop`), queues.rs, resize.rs,
//!   bench.rs: the scenarios;
//! - sweep.rs: whole-disk sweeps over every queue, with pattern.rs's data patterns;
//! - io.rs: single requests (polled or by interrupt), FLUSH, and the device checks;
//! - params.rs: their command-line parameters.

mod bench;
mod info;
mod integrity;
pub(super) mod io;
mod params;
pub(super) mod pattern;
mod queues;
mod resize;
mod sweep;

use super::pci;
use crate::acpi::power;
use crate::acpi::Acpi;
use crate::console;
use crate::drivers::virtio_blk::{self, BlkDevice, BlkDevices};

/// The scenario names this module handles.
pub fn handles(name: &[u8]) -> bool {
    matches!(
        name,
        b"blk-info"
            | b"blk-pattern"
            | b"blk-queues"
            | b"blk-resize"
            | b"blk-bench"
            | b"blk-verify-loop"
    )
}

pub fn run(name: &[u8], acpi: &Acpi, cmdline: &[u8]) -> ! {
    let functions = pci::setup(acpi, cmdline);
    pci::dma_info();
    let mut devices = virtio_blk::probe_all(&functions);
    match name {
        b"blk-info" => info::run(&mut devices),
        b"blk-pattern" => with_first(&mut devices, |dev| integrity::pattern(dev, cmdline)),
        b"blk-queues" => with_first(&mut devices, queues::run),
        b"blk-resize" => with_first(&mut devices, |dev| resize::run(dev, cmdline)),
        b"blk-bench" => with_first(&mut devices, |dev| bench::run(dev, cmdline)),
        b"blk-verify-loop" => with_first(&mut devices, |dev| integrity::verify_loop(dev, cmdline)),
        _ => console::error("unknown scenario=").ascii(name).end(),
    }
    power::poweroff(acpi)
}

fn with_first(devices: &mut BlkDevices, scenario: impl FnOnce(&mut BlkDevice)) {
    match devices.list[0].as_mut() {
        Some(dev) => scenario(dev),
        None => console::error("blk: no usable virtio-blk device").end(),
    }
}
