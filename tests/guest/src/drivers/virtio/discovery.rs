//! Finding virtio devices on the PCI scan: the vendor ID, the IDs a device type shows (its
//! modern ID, or the transitional one with the type as subsystem ID), and the probe loop
//! every virtio driver runs over the scan.

use super::transport::Transport;
use crate::console;
use crate::drivers::pci::config::Address;
use crate::drivers::pci::scan::{Function, Functions};

pub const VENDOR: u16 = 0x1af4;

/// How one virtio device type shows on PCI (virtio 1.x, 4.1.2), and its driver's name for
/// error lines.
pub struct DeviceType {
    /// `virtio-blk`, `virtio-net`...
    pub driver: &'static str,
    pub modern: u16,
    pub transitional: u16,
    /// Subsystem ID of the transitional device (the virtio device type).
    pub subsystem: u16,
}

impl DeviceType {
    /// Whether `function` is a device of this type: its modern PCI id, or the transitional id
    /// with the type as subsystem id.
    pub fn matches(&self, function: &Function) -> bool {
        function.vendor == VENDOR
            && (function.device == self.modern
                || (function.device == self.transitional && function.subsystem == self.subsystem))
    }

    /// Starts a `GUEST ERROR <driver> bb:dd.f: ` line about the device at `at`.
    pub fn error(&self, at: Address) -> console::Line {
        at.print(console::error(self.driver).s(" ")).s(": ")
    }

    /// Starts the `GUEST INFO <driver> dev=N pci=bb:dd.f id=0x.. offered=0x.. negotiated=0x..`
    /// line a driver prints once device `number` is up; the driver adds what it set up.
    pub fn info(&self, number: usize, transport: &Transport) -> console::Line {
        let line = console::line("GUEST INFO ")
            .s(self.driver)
            .s(" dev=")
            .dec(number as u64)
            .s(" pci=");
        transport
            .pci
            .print(line)
            .s(" id=")
            .hex(u64::from(transport.device_id))
            .s(" offered=")
            .hex(transport.offered)
            .s(" negotiated=")
            .hex(transport.features)
    }
}

/// Hands the transport of every function of type `kind` to `bring_up` with the number the
/// device will have (0, 1, ... in scan order, counting the devices brought up); `bring_up`
/// says whether it kept the device. Functions whose transport is unusable are skipped (after
/// an error line), and so is every device beyond `max` (with an error line each).
pub fn probe_each(
    functions: &Functions,
    kind: &DeviceType,
    max: usize,
    mut bring_up: impl FnMut(Transport, usize) -> bool,
) {
    let mut count = 0;
    for function in functions.iter() {
        if !kind.matches(function) {
            continue;
        }
        if count == max {
            kind.error(function.addr)
                .s("more than ")
                .dec(max as u64)
                .s(" devices, ignored")
                .end();
            continue;
        }
        let Some(transport) = Transport::probe(function) else {
            continue;
        };
        if bring_up(transport, count) {
            count += 1;
        }
    }
}
