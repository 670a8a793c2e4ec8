//! Network scenarios: `net-info`, `net-echo`, `net-rxfilter`, `net-bench`, `net-peer` (see
//! the README for their parameters and output lines).
//!
//! Set-up (PCI scan, virtio negotiation, MSI-X, control commands) runs in ring 0. Everything
//! that touches frames (polling the receive queues, answering ARP, ICMP echo and UDP, sending,
//! timing) runs in ring 3 through `user::call`, natively even on kvm-pvm hosts. When nothing
//! arrives for a while, net-echo and net-rxfilter wait halted in ring 0 for a receive-queue
//! MSI-X interrupt, the power button or a configuration change (link status).
//!
//! Only device 0 is used (net-info lists all). The devices live in a static: they are a few
//! KiB each, and the kernel stack has no guard page.
//!
//! - info.rs, echo.rs, rxfilter.rs, bench.rs, peer.rs: the scenarios;
//! - host.rs: the little IPv4 host they share (ARP, ICMP echo, UDP, counters);
//! - serve.rs: ring-3 serving until the power button or a deadline, halting when idle;
//! - params.rs: their command-line parameters.

mod bench;
mod echo;
pub(super) mod host;
mod info;
pub(super) mod params;
mod peer;
mod rxfilter;
mod serve;

use super::pci;
use crate::acpi::power;
use crate::acpi::Acpi;
use crate::console;
use crate::drivers::virtio_net::rx;
use crate::drivers::virtio_net::{self, NetDevices, Options};
use crate::sync::Global;
use params::{number, number_opt};

/// Largest `queue_pairs=` accepted (virtio's limit; the driver uses at most MAX_QUEUE_PAIRS).
const MAX_PAIRS_PARAM: u16 = 0x8000;

/// The virtio-net devices (too big for the kernel stack); only `run` uses them.
static DEVICES: Global<NetDevices> = Global::new(NetDevices::EMPTY);

pub fn handles(name: &[u8]) -> bool {
    matches!(
        name,
        b"net-info" | b"net-echo" | b"net-rxfilter" | b"net-bench" | b"net-peer"
    )
}

pub fn run(name: &[u8], acpi: &Acpi, cmdline: &[u8]) -> ! {
    let functions = pci::setup(acpi, cmdline);
    pci::dma_info();
    let queue_pairs = number_opt(cmdline, "queue_pairs", 1..=u64::from(MAX_PAIRS_PARAM));
    let rx_buffer = number(
        cmdline,
        "rx_buf",
        u64::from(rx::DEFAULT_RX_BUFFER),
        u64::from(rx::MIN_MERGEABLE_RX_BUFFER)..=u64::from(rx::MAX_RX_BUFFER),
    );
    let (Ok(queue_pairs), Ok(rx_buffer)) = (queue_pairs, rx_buffer) else {
        power::poweroff(acpi)
    };
    let options = Options {
        queue_pairs: queue_pairs.map(|q| q as u16),
        rx_buffer: rx_buffer as u32,
    };
    // SAFETY: `run` is entered once, on the BSP, and never returns; nothing else uses DEVICES.
    let devices = unsafe { DEVICES.get_mut() };
    virtio_net::probe_all(&functions, &options, devices);
    if name == b"net-info" {
        info::run(devices);
        power::poweroff(acpi);
    }
    let Some(dev) = devices.list[0].as_mut() else {
        console::error("net: no usable virtio-net device").end();
        power::poweroff(acpi)
    };
    match name {
        b"net-echo" => echo::run(dev, acpi, cmdline),
        b"net-rxfilter" => rxfilter::run(dev, acpi, cmdline),
        b"net-bench" => bench::run(dev, cmdline),
        b"net-peer" => peer::run(dev, cmdline),
        _ => console::error("unknown scenario=").ascii(name).end(),
    }
    power::poweroff(acpi)
}
