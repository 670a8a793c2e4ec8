//! The `pci-hotplug` scenario's parameters: the `pci_assign=` window, `hotplug-ignore-eject=`,
//! `boot-blk=`, the traffic check's `ip=`, `peer=` and `port=` (all or none), and the
//! virtio-net set-up's `queue_pairs=` (default 1 here: a slot's DMA arena holds about three)
//! and `rx_buf=`. A bad value is an error line and the scenario runs nothing.

use super::super::net::params::{addresses, parsed, port};
use super::super::pci;
use crate::drivers::virtio_net::rx;
use crate::drivers::virtio_net::Options;
use crate::netproto::Ipv4;
use crate::{cmdline, console};

/// The traffic check's parameters (`ip=`, `peer=`, `port=`).
#[derive(Clone, Copy)]
pub struct Traffic {
    pub ip: Ipv4,
    pub peer: Ipv4,
    pub port: u16,
}

/// What the command line asks of the scenario.
pub struct Params {
    pub window: Option<(u64, u64)>,
    pub ignore_eject: bool,
    /// `boot-blk=1`: the virtio-blk devices there at boot are checked as hot-added ones.
    pub boot_blk: bool,
    pub traffic: Option<Traffic>,
    pub net: Options,
}

/// Reads the parameters; Err after an error line.
pub fn parse(cmdline: &[u8]) -> Result<Params, ()> {
    let window = pci::assign_window(cmdline)?;
    let ignore_eject = cmdline::number_in(cmdline, "hotplug-ignore-eject", 0..=1, "hotplug")?;
    let boot_blk = cmdline::number_in(cmdline, "boot-blk", 0..=1, "hotplug")?;
    let (ip, peer) = addresses(cmdline)?;
    let udp_port = parsed(cmdline, "port", "UDP port 1-65535", port)?;
    let traffic = match (ip, peer, udp_port) {
        (Some((ip, _)), Some(peer), Some(port)) => Some(Traffic { ip, peer, port }),
        (None, None, None) => None,
        _ => {
            console::error("hotplug: the traffic check needs all of ip=, peer= and port=").end();
            return Err(());
        }
    };
    let queue_pairs = cmdline::number_in(cmdline, "queue_pairs", 1..=8, "hotplug")?;
    let rx_buffer = cmdline::number_in(
        cmdline,
        "rx_buf",
        u64::from(rx::MIN_MERGEABLE_RX_BUFFER)..=u64::from(rx::MAX_RX_BUFFER),
        "hotplug",
    )?;
    Ok(Params {
        window,
        ignore_eject: ignore_eject == Some(1),
        boot_blk: boot_blk == Some(1),
        traffic,
        net: Options {
            // One pair by default: a slot's DMA arena holds about three.
            queue_pairs: Some(queue_pairs.unwrap_or(1) as u16),
            rx_buffer: rx_buffer.map_or(rx::DEFAULT_RX_BUFFER, |b| b as u32),
        },
    })
}
