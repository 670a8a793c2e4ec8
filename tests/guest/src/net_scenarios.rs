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

use crate::acpi::power;
use crate::acpi::Acpi;
use crate::arch::halt::halt_until;
use crate::arch::{cpu, interrupts, tsc, user};
use crate::blk_scenarios;
use crate::drivers::virtio_net::rx::{self, RxError};
use crate::drivers::virtio_net::spec::{
    CTRL_CLASS_MAC, CTRL_CLASS_RX, CTRL_CLASS_VLAN, CTRL_MAC_ADDR_SET, CTRL_MAC_TABLE_SET, CTRL_OK,
    CTRL_RX_ALLMULTI, CTRL_RX_ALLUNI, CTRL_RX_NOBCAST, CTRL_RX_NOMULTI, CTRL_RX_NOUNI,
    CTRL_RX_PROMISC, CTRL_VLAN_ADD, F_CTRL_MAC_ADDR, F_CTRL_RX, F_CTRL_RX_EXTRA, F_CTRL_VLAN,
    F_CTRL_VQ,
};
use crate::drivers::virtio_net::tx::{Sent, MAX_TX_FRAME};
use crate::drivers::virtio_net::{self, NetDevice, NetDevices, Options};
use crate::netproto::{
    self, Bad, Ipv4, Mac, UdpSpec, ARP_REPLY, ARP_REQUEST, BROADCAST, ETHERTYPE_ARP,
    ETHERTYPE_IPV4, PROTO_ICMP, PROTO_UDP,
};
use crate::sync::Global;
use crate::{cmdline, console};
use core::ops::RangeInclusive;
use core::sync::atomic::Ordering;

/// Ethertype of net-peer's data frames (IEEE 802 local experimental ethertype 1).
const PEER_ETHERTYPE: u16 = 0x88b5;
/// Ethertype of net-peer's acknowledgements (local experimental ethertype 2).
const PEER_ACK_ETHERTYPE: u16 = 0x88b6;
/// net-peer data payload: 4-byte sequence number + 60 pattern bytes.
const PEER_PAYLOAD: usize = 64;
const PEER_WINDOW: u32 = 32;
const PEER_RETRANSMIT_MS: u64 = 100;
/// How long the receiver keeps acknowledging after it has every frame (the sender's last
/// acknowledgement may have been lost).
const PEER_LINGER_MS: u64 = 300;
const DEFAULT_PEER_COUNT: u64 = 1000;
const MAX_PEER_COUNT: u64 = 100_000_000;
const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// net-echo's UDP payload: 8-byte sequence number, then pattern bytes up to this length.
const ECHO_UDP_PAYLOAD: usize = 1000;
const DEFAULT_ECHO_COUNT: u64 = 100;
const ARP_RETRY_MS: u64 = 250;
const ARP_TIMEOUT_MS: u64 = 10_000;
/// A ring-3 serving slice ends after this long without a frame (then the CPU halts until an
/// interrupt) or after SLICE_MS in any case (to look at the power button and link changes).
const IDLE_MS: u64 = 20;
const SLICE_MS: u64 = 100;
/// Longest halt between looks at the clock (the APIC timer also wakes the CPU every 10 ms).
const HALT_MS: u64 = 1000;

const DEFAULT_BENCH_MS: u64 = 2000;
const DEFAULT_BENCH_SIZE: u64 = 1400;
/// Largest UDP payload in one standard Ethernet frame (1500 - 20 - 8).
const MAX_UDP_PAYLOAD: usize = 1472;
/// Frames the bench puts on one queue before moving to the next.
const BENCH_BATCH: u32 = 32;
const DRAIN_MS: u64 = 2000;
/// Error lines about bad receive entries before they are only counted.
const RX_ERROR_LINES: u64 = 8;
/// Longest `ms=`, `wait_ms=`, `timeout_ms=` (a day).
const MAX_MS: u64 = 86_400_000;
const MAX_ECHO_COUNT: u64 = 1_000_000_000;
/// Largest `queue_pairs=` accepted (virtio's limit; the driver uses at most MAX_QUEUE_PAIRS).
const MAX_PAIRS_PARAM: u16 = 0x8000;
const MAX_TABLE_MACS: usize = 32;
const MAX_VLANS: usize = 16;

/// The virtio-net devices (too big for the kernel stack); only `run` uses them.
static DEVICES: Global<NetDevices> = Global::new(NetDevices::EMPTY);

pub fn handles(name: &[u8]) -> bool {
    matches!(
        name,
        b"net-info" | b"net-echo" | b"net-rxfilter" | b"net-bench" | b"net-peer"
    )
}

pub fn run(name: &[u8], acpi: &Acpi, cmdline: &[u8]) -> ! {
    let functions = blk_scenarios::pci_setup(acpi, cmdline);
    blk_scenarios::dma_info();
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
        info(devices);
        power::poweroff(acpi);
    }
    let Some(dev) = devices.list[0].as_mut() else {
        console::error("net: no usable virtio-net device").end();
        power::poweroff(acpi)
    };
    match name {
        b"net-echo" => echo(dev, acpi, cmdline),
        b"net-rxfilter" => rxfilter(dev, acpi, cmdline),
        b"net-bench" => bench(dev, cmdline),
        b"net-peer" => peer(dev, cmdline),
        _ => console::error("unknown scenario=").ascii(name).end(),
    }
    power::poweroff(acpi)
}

/// A numeric parameter (decimal, or hex with 0x): Ok(None) if absent; Err after an error
/// line if it does not parse or is outside `range`.
fn number_opt(cmdline: &[u8], key: &str, range: RangeInclusive<u64>) -> Result<Option<u64>, ()> {
    let Some(text) = cmdline::param(cmdline, key) else {
        return Ok(None);
    };
    match cmdline::parse_u64(text) {
        Some(value) if range.contains(&value) => Ok(Some(value)),
        _ => {
            console::error("net: bad ")
                .s(key)
                .s("=")
                .ascii(text)
                .s(" (a number from ")
                .dec(*range.start())
                .s(" to ")
                .dec(*range.end())
                .s(")")
                .end();
            Err(())
        }
    }
}

/// As [`number_opt`], `default` if absent.
fn number(cmdline: &[u8], key: &str, default: u64, range: RangeInclusive<u64>) -> Result<u64, ()> {
    number_opt(cmdline, key, range).map(|value| value.unwrap_or(default))
}

/// A parameter that must parse if present: Ok(None) if absent, Err after an error line.
fn parsed<T>(
    cmdline: &[u8],
    key: &str,
    what: &str,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> Result<Option<T>, ()> {
    match cmdline::param(cmdline, key) {
        None => Ok(None),
        Some(text) => match parse(text) {
            Some(value) => Ok(Some(value)),
            None => {
                console::error("net: bad ")
                    .s(key)
                    .s("=")
                    .ascii(text)
                    .s(" (")
                    .s(what)
                    .s(")")
                    .end();
                Err(())
            }
        },
    }
}

fn required<T>(value: Option<T>, key: &str, scenario: &str) -> Result<T, ()> {
    value.ok_or_else(|| {
        console::error("net: ")
            .s(scenario)
            .s(" needs ")
            .s(key)
            .s("=")
            .end();
    })
}

fn port(text: &[u8]) -> Option<u16> {
    cmdline::parse_u64(text)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
}

/// Runs `work` in ring 3; false after an error line if it faulted.
fn in_ring3(what: &str, mut work: impl FnMut()) -> bool {
    let mut call = || {
        work();
        0
    };
    match user::call(&mut call) {
        Ok(_) => true,
        Err(fault) => {
            fault.report("net", what);
            false
        }
    }
}

fn info(devices: &NetDevices) {
    if devices.count == 0 {
        console::error("net: no usable virtio-net device").end();
        return;
    }
    for dev in devices.list.iter().flatten() {
        let line = console::line("GUEST NET dev=")
            .dec(dev.number as u64)
            .s(" pci=");
        let line = dev.pci().print(line).s(" mac=");
        netproto::print_mac(line, dev.mac)
            .s(" status=")
            .s(if dev.link_up() { "up" } else { "down" })
            .s(" queue_pairs=")
            .dec(dev.pairs as u64)
            .s(" features=")
            .hex(dev.transport.features)
            .end();
    }
}

// --- The little IP host (ring 3) ---------------------------------------------------------------

/// What a frame turned out to be, for the caller of [`Host::serve`].
enum Delivery<'a> {
    /// Consumed (ARP, ICMP echo) or dropped: nothing for the caller.
    Handled,
    /// A UDP datagram to our address.
    Udp(Datagram<'a>),
}

/// A received UDP datagram to our address, with where it came from.
struct Datagram<'a> {
    src_mac: Mac,
    vlan: Option<u16>,
    src_ip: Ipv4,
    udp: netproto::Udp<'a>,
}

/// Received frames by destination address (before any protocol handling).
#[derive(Default)]
struct ByDestination {
    /// To our MAC.
    own: u64,
    broadcast: u64,
    /// Group addresses other than broadcast.
    multicast: u64,
    /// Unicast to another MAC (promiscuous mode, or a MAC from the unicast table).
    other: u64,
    /// Frames (any destination) with an 802.1Q tag.
    tagged: u64,
}

/// Our side of the network: MAC, optional IPv4 address, the peer's address and (once learnt)
/// MAC, counters, and the round-robin position over the transmit queues.
struct Host {
    mac: Mac,
    ip: Option<Ipv4>,
    peer_ip: Option<Ipv4>,
    peer_mac: Option<Mac>,
    ip_id: u16,
    next_tx: usize,
    rx: u64,
    tx: u64,
    dropped: u64,
    rx_errors: u64,
    /// Frames received and sent per queue pair.
    rx_queue: [u64; virtio_net::MAX_QUEUE_PAIRS],
    tx_queue: [u64; virtio_net::MAX_QUEUE_PAIRS],
    by_destination: ByDestination,
    /// Echo UDP datagrams that nobody else wanted back to their sender (net-echo).
    udp_echo: bool,
    udp_echoed: u64,
    tx_stuck: bool,
    /// Sent frames were still in flight DRAIN_MS after the last one.
    undrained: bool,
}

impl Host {
    fn new(mac: Mac, ip: Option<Ipv4>, peer_ip: Option<Ipv4>) -> Host {
        Host {
            mac,
            ip,
            peer_ip,
            peer_mac: None,
            ip_id: 0,
            next_tx: 0,
            rx: 0,
            tx: 0,
            dropped: 0,
            rx_errors: 0,
            rx_queue: [0; virtio_net::MAX_QUEUE_PAIRS],
            tx_queue: [0; virtio_net::MAX_QUEUE_PAIRS],
            by_destination: ByDestination::default(),
            udp_echo: false,
            udp_echoed: 0,
            tx_stuck: false,
            undrained: false,
        }
    }

    /// Sends one frame on the next transmit queue (round robin) and notifies the device.
    /// False if nothing was sent (no slot for a second: reported once; or `build` had nothing).
    fn transmit(&mut self, dev: &mut NetDevice, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        let queue = self.next_tx % dev.pairs;
        self.next_tx = (queue + 1) % dev.pairs;
        let tx = dev.tx(queue);
        match tx.send(build) {
            Sent::Queued => {}
            Sent::Declined => return false,
            Sent::NoSlot => {
                if !self.tx_stuck {
                    console::error("net: transmit queue ")
                        .dec(2 * queue as u64 + 1)
                        .s(" has had no free slot for 1 s (the device does not complete frames)")
                        .end();
                }
                self.tx_stuck = true;
                return false;
            }
        }
        tx.kick();
        self.tx += 1;
        self.tx_queue[queue] += 1;
        true
    }

    fn rx_error(&mut self, queue: usize, error: RxError) {
        self.rx_errors += 1;
        self.dropped += 1;
        if self.rx_errors <= RX_ERROR_LINES {
            let line = console::error("net: receive queue ")
                .dec(2 * queue as u64)
                .s(": ");
            error.describe(line).end();
        }
    }

    fn send_arp(&mut self, dev: &mut NetDevice, op: u16, to: Mac, vlan: Option<u16>, ip: Ipv4) {
        let (Some(our_ip), mac) = (self.ip, self.mac) else {
            return;
        };
        let eth_dst = if op == ARP_REQUEST { BROADCAST } else { to };
        let target_mac = if op == ARP_REQUEST { [0; 6] } else { to };
        self.transmit(dev, |out| {
            netproto::build_arp(out, eth_dst, vlan, op, mac, our_ip, target_mac, ip)
        });
    }

    /// Handles one received frame: answers ARP requests for our address and ICMP echo
    /// requests to it, learns the peer's MAC from its ARP packets, and hands UDP datagrams
    /// to our address to the caller. Everything else is counted as dropped.
    fn deliver<'a>(&mut self, dev: &mut NetDevice, frame: &'a [u8]) -> Delivery<'a> {
        self.rx += 1;
        let Some(eth) = netproto::parse_eth(frame) else {
            self.dropped += 1;
            return Delivery::Handled;
        };
        let counts = &mut self.by_destination;
        if eth.dst == self.mac {
            counts.own += 1;
        } else if eth.dst == BROADCAST {
            counts.broadcast += 1;
        } else if eth.dst[0] & 1 != 0 {
            counts.multicast += 1;
        } else {
            counts.other += 1;
        }
        if eth.vlan.is_some() {
            counts.tagged += 1;
        }
        let Some(our_ip) = self.ip else {
            self.dropped += 1;
            return Delivery::Handled;
        };
        if eth.dst != self.mac && eth.dst != BROADCAST {
            self.dropped += 1;
            return Delivery::Handled;
        }
        match eth.ethertype {
            ETHERTYPE_ARP => {
                if let Some(arp) = netproto::parse_arp(eth.payload) {
                    if Some(arp.sender_ip) == self.peer_ip && arp.sender_ip != [0; 4] {
                        self.peer_mac = Some(arp.sender_mac);
                    }
                    if arp.op == ARP_REQUEST && arp.target_ip == our_ip {
                        self.send_arp(dev, ARP_REPLY, arp.sender_mac, eth.vlan, arp.sender_ip);
                        return Delivery::Handled;
                    }
                    if arp.op == ARP_REPLY && Some(arp.sender_ip) == self.peer_ip {
                        return Delivery::Handled;
                    }
                }
            }
            ETHERTYPE_IPV4 if eth.dst == self.mac => match netproto::parse_ipv4(eth.payload) {
                Ok(ip) if ip.dst == our_ip => match ip.protocol {
                    PROTO_ICMP => {
                        if let Ok(true) = netproto::is_echo_request(ip.payload) {
                            let (mac, id) = (self.mac, self.ip_id);
                            self.ip_id = self.ip_id.wrapping_add(1);
                            self.transmit(dev, |out| {
                                netproto::build_echo_reply(
                                    out, mac, eth.src, eth.vlan, our_ip, ip.src, ip.payload, id,
                                )
                                .unwrap_or(0)
                            });
                            return Delivery::Handled;
                        }
                    }
                    PROTO_UDP => {
                        if let Ok(udp) = netproto::parse_udp(&ip) {
                            return Delivery::Udp(Datagram {
                                src_mac: eth.src,
                                vlan: eth.vlan,
                                src_ip: ip.src,
                                udp,
                            });
                        }
                    }
                    _ => {}
                },
                Ok(_) | Err(Bad::Truncated | Bad::Checksum | Bad::Fragment) => {}
            },
            _ => {}
        }
        self.dropped += 1;
        Delivery::Handled
    }

    /// Polls every receive queue once and handles what arrived; UDP datagrams to our address
    /// go to `udp`, which returns whether it used the datagram; unused ones are echoed back to
    /// their sender if `udp_echo` is on, else dropped. Returns the number of frames seen.
    fn serve(&mut self, dev: &mut NetDevice, udp: &mut impl FnMut(&Datagram) -> bool) -> u64 {
        let mut frames = 0;
        for queue in 0..dev.pairs {
            while let Some(polled) = dev.rx(queue).poll() {
                frames += 1;
                self.rx_queue[queue] += 1;
                match polled {
                    Ok(frame) => {
                        if let Delivery::Udp(datagram) = self.deliver(dev, frame.bytes()) {
                            if udp(&datagram) {
                                continue;
                            }
                            if !self.udp_echo || !self.echo_udp(dev, &datagram) {
                                self.dropped += 1;
                            }
                        }
                    }
                    Err(error) => {
                        self.rx += 1;
                        self.rx_error(queue, error);
                    }
                }
            }
            let rx = dev.rx(queue);
            rx.release();
            rx.kick();
        }
        for queue in 0..dev.pairs {
            dev.tx(queue).reap();
        }
        frames
    }

    /// Sends `datagram`'s payload back to its sender (ports swapped, same VLAN tag).
    fn echo_udp(&mut self, dev: &mut NetDevice, datagram: &Datagram) -> bool {
        let Some(our_ip) = self.ip else {
            return false;
        };
        let payload = datagram.udp.payload;
        let spec = UdpSpec {
            src_mac: self.mac,
            dst_mac: datagram.src_mac,
            vlan: datagram.vlan,
            src_ip: our_ip,
            dst_ip: datagram.src_ip,
            src_port: datagram.udp.dst_port,
            dst_port: datagram.udp.src_port,
            payload_len: payload.len(),
            ip_id: self.ip_id,
        };
        self.ip_id = self.ip_id.wrapping_add(1);
        let sent = self.transmit(dev, |out| {
            let Some(layout) = netproto::build_udp_headers(out, &spec) else {
                return 0;
            };
            out[layout.payload..layout.payload + payload.len()].copy_from_slice(payload);
            netproto::finish_udp_checksum(out, &layout, spec.src_ip, spec.dst_ip);
            layout.frame_len
        });
        if sent {
            self.udp_echoed += 1;
        }
        sent
    }

    /// Resolves the peer's MAC: an ARP request every ARP_RETRY_MS, up to ARP_TIMEOUT_MS,
    /// serving meanwhile. Ring 3.
    fn resolve(&mut self, dev: &mut NetDevice) -> Option<Mac> {
        let peer = self.peer_ip?;
        let start = cpu::rdtsc();
        let mut last_request: Option<u64> = None;
        loop {
            if let Some(mac) = self.peer_mac {
                return Some(mac);
            }
            let now = cpu::rdtsc();
            if now - start > tsc::from_ms(ARP_TIMEOUT_MS) {
                return None;
            }
            if last_request.is_none_or(|t| now - t > tsc::from_ms(ARP_RETRY_MS)) {
                self.send_arp(dev, ARP_REQUEST, BROADCAST, None, peer);
                last_request = Some(now);
            }
            self.serve(dev, &mut |_| false);
        }
    }
}

/// `GUEST NET STATS ...`, `GUEST NET RX ...` and one `GUEST NET QUEUE ...` per queue pair.
fn stats(dev: &NetDevice, host: &Host) {
    console::line("GUEST NET STATS rx=")
        .dec(host.rx)
        .s(" tx=")
        .dec(host.tx)
        .s(" dropped=")
        .dec(host.dropped)
        .s(" rx_errors=")
        .dec(host.rx_errors)
        .s(" udp_echoed=")
        .dec(host.udp_echoed)
        .end();
    let counts = &host.by_destination;
    console::line("GUEST NET RX own=")
        .dec(counts.own)
        .s(" broadcast=")
        .dec(counts.broadcast)
        .s(" multicast=")
        .dec(counts.multicast)
        .s(" other=")
        .dec(counts.other)
        .s(" tagged=")
        .dec(counts.tagged)
        .end();
    for pair in 0..dev.pairs {
        console::line("GUEST NET QUEUE pair=")
            .dec(pair as u64)
            .s(" rx=")
            .dec(host.rx_queue[pair])
            .s(" tx=")
            .dec(host.tx_queue[pair])
            .s(" merged=")
            .dec(dev.rx[pair].as_ref().map_or(0, |rx| rx.merged))
            .end();
    }
}

/// Serves (ARP, ICMP echo, UDP echo if the host has it on; other frames counted as dropped)
/// until the power button, or until `stop_ms` passed if given. Busy phases poll in ring 3;
/// idle phases halt in ring 0 with the receive queues' interrupts on. Prints
/// `GUEST NET LINK up|down` whenever the link status read after a configuration-change
/// interrupt (or, without a configuration vector, at every look) differs from the last one
/// reported; `link` is the status reported before.
fn serve_until_stopped(
    dev: &mut NetDevice,
    host: &mut Host,
    button: bool,
    stop_ms: Option<u64>,
    mut link: bool,
) {
    let config_vector = dev.transport.config_vector;
    let config_count = || config_vector.map_or(0, interrupts::count);
    let mut config_seen = config_count();
    let start = cpu::rdtsc();
    let stop = stop_ms.map(tsc::from_ms);
    let pressed = || button && power::POWER_BUTTON.load(Ordering::Acquire);
    loop {
        let mut idle = false;
        if !in_ring3("net serve", || {
            let begin = cpu::rdtsc();
            let mut last_frame = begin;
            loop {
                let now = cpu::rdtsc();
                if host.serve(dev, &mut |_| false) != 0 {
                    last_frame = now;
                } else if now - last_frame > tsc::from_ms(IDLE_MS) {
                    idle = true;
                    return;
                }
                if now - begin > tsc::from_ms(SLICE_MS) {
                    return;
                }
            }
        }) {
            return;
        }
        cpu::take_pending_interrupts();
        let config_now = config_count();
        if config_vector.is_none() || config_now != config_seen {
            config_seen = config_now;
            let up = dev.link_up();
            if up != link {
                link = up;
                console::line(if up {
                    "GUEST NET LINK up"
                } else {
                    "GUEST NET LINK down"
                })
                .end();
            }
        }
        if pressed() {
            console::line("GUEST POWER BUTTON").end();
            return;
        }
        let elapsed = cpu::rdtsc() - start;
        if stop.is_some_and(|stop| elapsed >= stop) {
            return;
        }
        if !idle {
            continue;
        }
        // Nothing for a while: halt until a frame's interrupt (or the button, a configuration
        // change, the stop time). Without a configuration vector the link is looked at after
        // every halt (at most HALT_MS).
        let mut counts = [0u32; virtio_net::MAX_QUEUE_PAIRS];
        for (queue, count) in counts.iter_mut().enumerate().take(dev.pairs) {
            let rx = dev.rx(queue);
            rx.vq.set_interrupts(true);
            *count = rx.vq.vector.map_or(0, interrupts::count);
        }
        let wait_ms = match stop {
            Some(stop) => tsc::to_us(stop.saturating_sub(elapsed)) / 1000 + 1,
            None => HALT_MS,
        }
        .min(HALT_MS);
        let pairs = dev.pairs;
        halt_until(wait_ms, || {
            pressed()
                || config_count() != config_seen
                || dev.rx[..pairs]
                    .iter()
                    .zip(counts)
                    .any(|(rx, count)| match rx {
                        Some(rx) => {
                            rx.vq.has_used() || rx.vq.vector.map_or(0, interrupts::count) != count
                        }
                        None => false,
                    })
        });
        for queue in 0..dev.pairs {
            dev.rx(queue).vq.set_interrupts(false);
        }
    }
}

/// Default prefix length of `ip=` without `/NN`.
const DEFAULT_PREFIX: u8 = 24;

/// An address with its prefix length (`A.B.C.D/NN`).
type Interface = (Ipv4, u8);

/// `A.B.C.D[/NN]` (prefix length 0-32, default 24).
fn parse_ip_prefix(text: &[u8]) -> Option<Interface> {
    let mut parts = text.splitn(2, |&b| b == b'/');
    let ip = netproto::parse_ip(parts.next()?)?;
    let prefix = match parts.next() {
        None => DEFAULT_PREFIX,
        Some(bits) if !bits.is_empty() && bits.len() <= 2 => cmdline::parse_u64(bits)
            .filter(|&b| b <= 32)
            .map(|b| b as u8)?,
        Some(_) => return None,
    };
    Some((ip, prefix))
}

/// Reads `ip=A.B.C.D[/NN]` and `peer=A.B.C.D` (which must be inside ip's subnet: there is no
/// routing); Err after an error line.
fn addresses(cmdline: &[u8]) -> Result<(Option<Interface>, Option<Ipv4>), ()> {
    let ip = parsed(cmdline, "ip", "A.B.C.D or A.B.C.D/NN", parse_ip_prefix)?;
    let peer = parsed(cmdline, "peer", "A.B.C.D", netproto::parse_ip)?;
    if let (Some((ip, prefix)), Some(peer)) = (ip, peer) {
        if !netproto::same_subnet(ip, peer, netproto::mask(prefix)) {
            let line = console::error("net: peer=");
            let line = netproto::print_ip(line, peer).s(" is not in ");
            let line = netproto::print_ip(line, ip);
            line.s("/").dec(u64::from(prefix)).s(" (no routing)").end();
            return Err(());
        }
    }
    Ok((ip, peer))
}

fn arp_failed(peer: Ipv4) {
    let line = console::error("net arp: no reply from ");
    netproto::print_ip(line, peer)
        .s(" within ")
        .dec(ARP_TIMEOUT_MS)
        .s(" ms")
        .end();
}

/// net-echo, also the tail of net-rxfilter with `ip=`.
fn echo(dev: &mut NetDevice, acpi: &Acpi, cmdline: &[u8]) {
    let Ok((ip, peer)) = addresses(cmdline) else {
        return;
    };
    let Ok((ip, prefix)) = required(ip, "ip", "net-echo") else {
        return;
    };
    let Ok(udp_port) = parsed(cmdline, "port", "UDP port 1-65535", port) else {
        return;
    };
    if peer.is_some() != udp_port.is_some() {
        console::error("net: net-echo needs both peer= and port= to send").end();
        return;
    }
    let count = number(cmdline, "count", DEFAULT_ECHO_COUNT, 0..=MAX_ECHO_COUNT);
    let size = number(
        cmdline,
        "size",
        ECHO_UDP_PAYLOAD as u64,
        8..=MAX_UDP_PAYLOAD as u64,
    );
    let stop_ms = number_opt(cmdline, "ms", 1..=MAX_MS);
    let (Ok(count), Ok(size), Ok(stop_ms)) = (count, size, stop_ms) else {
        return;
    };
    let button = power_button(acpi, stop_ms);
    let mut host = Host::new(dev.mac, Some(ip), peer);
    host.udp_echo = true;
    let link = dev.link_up();
    let line = console::line("GUEST NET ECHO READY ip=");
    let line = netproto::print_ip(line, ip)
        .s("/")
        .dec(u64::from(prefix))
        .s(" mac=");
    netproto::print_mac(line, dev.mac)
        .s(" link=")
        .s(if link { "up" } else { "down" })
        .s(" queue_pairs=")
        .dec(dev.pairs as u64)
        .end();
    if let (Some(peer), Some(udp_port)) = (peer, udp_port) {
        let mut sent = 0;
        let mut resolved = None;
        if !in_ring3("net-echo send", || {
            resolved = host.resolve(dev);
            if let Some(peer_mac) = resolved {
                let datagrams = Datagrams {
                    peer_mac,
                    peer,
                    port: udp_port,
                    count,
                    size: size as usize,
                };
                sent = send_datagrams(dev, &mut host, &datagrams);
            }
        }) {
            return;
        }
        if resolved.is_none() {
            arp_failed(peer);
        } else if host.undrained {
            console::error("net: datagrams still in flight ")
                .dec(DRAIN_MS)
                .s(" ms after the last one was sent")
                .end();
        } else if sent == count {
            let line = console::line("GUEST NET SENT count=")
                .dec(sent)
                .s(" size=")
                .dec(size)
                .s(" to=");
            netproto::print_ip(line, peer)
                .s(":")
                .dec(u64::from(udp_port))
                .end();
        } else {
            console::error("net: sent ")
                .dec(sent)
                .s(" of ")
                .dec(count)
                .s(" datagrams")
                .end();
        }
    }
    serve_until_stopped(dev, &mut host, button, stop_ms, link);
    stats(dev, &host);
}

/// Arms the power button; says so when there is none and nothing else will end the scenario.
fn power_button(acpi: &Acpi, stop_ms: Option<u64>) -> bool {
    let button = power::setup_power_button(acpi);
    if !button {
        let line = console::line("GUEST INFO net: no ACPI power button");
        match stop_ms {
            Some(ms) => line.s(", stopping after ms=").dec(ms),
            None => line.s(" (hardware-reduced ACPI?): serving until the VM is stopped"),
        }
        .end();
    }
    button
}

/// What net-echo sends: `count` datagrams of `size` bytes to `peer`:`port`.
struct Datagrams {
    peer_mac: Mac,
    peer: Ipv4,
    port: u16,
    count: u64,
    size: usize,
}

/// Byte `i` of net-echo's datagram `seq`: the 8-byte little-endian sequence number, then
/// (seq + i) & 0xff.
fn echo_payload_byte(seq: u64, i: usize) -> u8 {
    match i {
        0..8 => seq.to_le_bytes()[i],
        _ => seq.wrapping_add(i as u64) as u8,
    }
}

/// Sends the datagrams (see [`echo_payload_byte`]; source port = destination port) round
/// robin over the transmit queues, serving received frames meanwhile, and waits for the
/// device to complete them. Returns how many were sent. Ring 3.
fn send_datagrams(dev: &mut NetDevice, host: &mut Host, what: &Datagrams) -> u64 {
    let our_ip = host.ip.unwrap_or([0; 4]);
    for seq in 0..what.count {
        let spec = UdpSpec {
            src_mac: host.mac,
            dst_mac: what.peer_mac,
            vlan: None,
            src_ip: our_ip,
            dst_ip: what.peer,
            src_port: what.port,
            dst_port: what.port,
            payload_len: what.size,
            ip_id: host.ip_id,
        };
        host.ip_id = host.ip_id.wrapping_add(1);
        let sent = host.transmit(dev, |out| {
            let Some(layout) = netproto::build_udp_headers(out, &spec) else {
                return 0;
            };
            let payload = &mut out[layout.payload..layout.payload + spec.payload_len];
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte = echo_payload_byte(seq, i);
            }
            netproto::finish_udp_checksum(out, &layout, spec.src_ip, spec.dst_ip);
            layout.frame_len
        });
        if !sent {
            return seq;
        }
        if seq % 64 == 63 {
            host.serve(dev, &mut |_| false);
        }
    }
    let mut drained = true;
    for queue in 0..dev.pairs {
        drained &= dev.tx(queue).drain(DRAIN_MS);
    }
    if !drained {
        host.undrained = true;
    }
    what.count
}

// --- net-rxfilter ------------------------------------------------------------------------------

/// `xx:xx:xx:xx:xx:xx` joined by `+`; empty: an empty table.
fn parse_mac_list(text: &[u8]) -> Option<([Mac; MAX_TABLE_MACS], usize)> {
    let mut macs = [[0u8; 6]; MAX_TABLE_MACS];
    let mut count = 0;
    if text.is_empty() {
        return Some((macs, 0));
    }
    for part in text.split(|&b| b == b'+') {
        if count == MAX_TABLE_MACS {
            return None;
        }
        macs[count] = netproto::parse_mac(part)?;
        count += 1;
    }
    Some((macs, count))
}

fn parse_vlans(text: &[u8]) -> Option<([u16; MAX_VLANS], usize)> {
    let mut vids = [0u16; MAX_VLANS];
    let mut count = 0;
    for part in text.split(|&b| b == b'+') {
        if count == MAX_VLANS {
            return None;
        }
        vids[count] = cmdline::parse_u64(part)
            .filter(|&v| v < 4096)
            .map(|v| v as u16)?;
        count += 1;
    }
    Some((vids, count))
}

/// A VIRTIO_NET_CTRL_RX command and its `key=0|1` parameter.
struct RxMode {
    key: &'static str,
    name: &'static str,
    command: u8,
    /// Needs VIRTIO_NET_F_CTRL_RX_EXTRA.
    extra: bool,
}

/// In the order they are sent.
const RX_MODES: [RxMode; 6] = [
    RxMode {
        key: "promisc",
        name: "rx-promisc",
        command: CTRL_RX_PROMISC,
        extra: false,
    },
    RxMode {
        key: "allmulti",
        name: "rx-allmulti",
        command: CTRL_RX_ALLMULTI,
        extra: false,
    },
    RxMode {
        key: "alluni",
        name: "rx-alluni",
        command: CTRL_RX_ALLUNI,
        extra: true,
    },
    RxMode {
        key: "nomulti",
        name: "rx-nomulti",
        command: CTRL_RX_NOMULTI,
        extra: true,
    },
    RxMode {
        key: "nouni",
        name: "rx-nouni",
        command: CTRL_RX_NOUNI,
        extra: true,
    },
    RxMode {
        key: "nobcast",
        name: "rx-nobcast",
        command: CTRL_RX_NOBCAST,
        extra: true,
    },
];

fn flag(text: &[u8]) -> Option<u8> {
    match text {
        b"0" => Some(0),
        b"1" => Some(1),
        _ => None,
    }
}

/// `struct virtio_net_ctrl_mac`: le32 entries, then the MACs.
fn mac_table(macs: &[Mac], out: &mut [u8; 4 + 6 * MAX_TABLE_MACS]) -> usize {
    out[..4].copy_from_slice(&(macs.len() as u32).to_le_bytes());
    for (i, mac) in macs.iter().enumerate() {
        out[4 + 6 * i..10 + 6 * i].copy_from_slice(mac);
    }
    4 + 6 * macs.len()
}

/// Sends one control command and prints `GUEST NET CTRL cmd=<name> ack=<n> <detail>`, or an
/// error line. Returns whether the device acknowledged it with VIRTIO_NET_OK.
fn ctrl_command(
    dev: &mut NetDevice,
    name: &str,
    class: u8,
    command: u8,
    parts: &[&[u8]],
    detail: impl FnOnce(console::Line) -> console::Line,
) -> bool {
    match dev.ctrl(class, command, parts) {
        Ok(ack) => {
            let line = console::line("GUEST NET CTRL cmd=")
                .s(name)
                .s(" ack=")
                .dec(u64::from(ack))
                .s(" ");
            detail(line).end();
            ack == CTRL_OK
        }
        Err(why) => {
            console::error("net ctrl cmd=").s(name).s(": ").s(why).end();
            false
        }
    }
}

fn missing_feature(name: &str, feature: &str) {
    console::error("net ctrl cmd=")
        .s(name)
        .s(": VIRTIO_NET_F_")
        .s(feature)
        .s(" not negotiated")
        .end();
}

fn rxfilter(dev: &mut NetDevice, acpi: &Acpi, cmdline: &[u8]) {
    if !dev.has(F_CTRL_VQ) || !dev.has(F_CTRL_RX) {
        console::error(
            "net-rxfilter needs VIRTIO_NET_F_CTRL_VQ and VIRTIO_NET_F_CTRL_RX (features=",
        )
        .hex(dev.transport.features)
        .s(")")
        .end();
        return;
    }
    // Parse everything first: a bad parameter sends nothing.
    let mut rx_modes = [None; RX_MODES.len()];
    for (mode, value) in RX_MODES.iter().zip(rx_modes.iter_mut()) {
        let Ok(parsed) = parsed(cmdline, mode.key, "0 or 1", flag) else {
            return;
        };
        *value = parsed;
    }
    let Ok(unicast) = parsed(
        cmdline,
        "macs",
        "MACs joined by +, at most 32",
        parse_mac_list,
    ) else {
        return;
    };
    let Ok(multicast) = parsed(
        cmdline,
        "mcast",
        "MACs joined by +, at most 32",
        parse_mac_list,
    ) else {
        return;
    };
    let Ok(vlans) = parsed(
        cmdline,
        "vlan",
        "VLAN IDs 0-4095 joined by +, at most 16",
        parse_vlans,
    ) else {
        return;
    };
    let Ok(new_mac) = parsed(cmdline, "mac", "xx:xx:xx:xx:xx:xx", netproto::parse_mac) else {
        return;
    };
    if addresses(cmdline).is_err() {
        return;
    }
    for (mode, value) in RX_MODES.iter().zip(rx_modes) {
        let Some(on) = value else {
            continue;
        };
        if mode.extra && !dev.has(F_CTRL_RX_EXTRA) {
            missing_feature(mode.name, "CTRL_RX_EXTRA");
            continue;
        }
        ctrl_command(
            dev,
            mode.name,
            CTRL_CLASS_RX,
            mode.command,
            &[&[on]],
            |line| line.s("value=").dec(u64::from(on)),
        );
    }
    if unicast.is_some() || multicast.is_some() {
        let (uc, uc_count) = unicast.unwrap_or(([[0; 6]; MAX_TABLE_MACS], 0));
        let (mc, mc_count) = multicast.unwrap_or(([[0; 6]; MAX_TABLE_MACS], 0));
        let mut uc_table = [0u8; 4 + 6 * MAX_TABLE_MACS];
        let mut mc_table = [0u8; 4 + 6 * MAX_TABLE_MACS];
        let uc_len = mac_table(&uc[..uc_count], &mut uc_table);
        let mc_len = mac_table(&mc[..mc_count], &mut mc_table);
        ctrl_command(
            dev,
            "mac-table-set",
            CTRL_CLASS_MAC,
            CTRL_MAC_TABLE_SET,
            &[&uc_table[..uc_len], &mc_table[..mc_len]],
            |line| {
                line.s("unicast=")
                    .dec(uc_count as u64)
                    .s(" multicast=")
                    .dec(mc_count as u64)
            },
        );
    }
    if let Some((vids, count)) = vlans {
        if dev.has(F_CTRL_VLAN) {
            for &vid in &vids[..count] {
                ctrl_command(
                    dev,
                    "vlan-add",
                    CTRL_CLASS_VLAN,
                    CTRL_VLAN_ADD,
                    &[&vid.to_le_bytes()],
                    |line| line.s("vid=").dec(u64::from(vid)),
                );
            }
        } else {
            missing_feature("vlan-add", "CTRL_VLAN");
        }
    }
    if let Some(mac) = new_mac {
        if dev.has(F_CTRL_MAC_ADDR) {
            let ok = ctrl_command(
                dev,
                "mac-addr-set",
                CTRL_CLASS_MAC,
                CTRL_MAC_ADDR_SET,
                &[&mac],
                |line| netproto::print_mac(line.s("mac="), mac),
            );
            if ok {
                dev.mac = mac;
            }
        } else {
            missing_feature("mac-addr-set", "CTRL_MAC_ADDR");
        }
    }
    console::line("GUEST NET CTRL DONE").end();
    if cmdline::param(cmdline, "ip").is_some() {
        echo(dev, acpi, cmdline);
        return;
    }
    // No address: count what arrives (filters at work) until the power button.
    let Ok(stop_ms) = number_opt(cmdline, "ms", 1..=MAX_MS) else {
        return;
    };
    let button = power_button(acpi, stop_ms);
    let mut host = Host::new(dev.mac, None, None);
    let link = dev.link_up();
    serve_until_stopped(dev, &mut host, button, stop_ms, link);
    stats(dev, &host);
}

// --- net-bench ---------------------------------------------------------------------------------

struct BenchResult {
    packets: u64,
    bytes: u64,
    ticks: u64,
}

fn bench(dev: &mut NetDevice, cmdline: &[u8]) {
    let mode = cmdline::param(cmdline, "mode");
    let transmit = match mode {
        Some(b"tx") => true,
        Some(b"rx") => false,
        _ => {
            console::error("net: net-bench needs mode=tx or mode=rx").end();
            return;
        }
    };
    let Ok((ip, peer)) = addresses(cmdline) else {
        return;
    };
    let Ok((ip, prefix)) = required(ip, "ip", "net-bench") else {
        return;
    };
    let Ok(udp_port) = parsed(cmdline, "port", "UDP port 1-65535", port)
        .and_then(|p| required(p, "port", "net-bench"))
    else {
        return;
    };
    let size = number(
        cmdline,
        "size",
        DEFAULT_BENCH_SIZE,
        8..=MAX_UDP_PAYLOAD as u64,
    );
    let ms = number(cmdline, "ms", DEFAULT_BENCH_MS, 1..=MAX_MS);
    let wait_ms = number(cmdline, "wait_ms", DEFAULT_TIMEOUT_MS, 1..=MAX_MS);
    let (Ok(size), Ok(ms), Ok(wait_ms)) = (size, ms, wait_ms) else {
        return;
    };
    if transmit && required(peer, "peer", "net-bench mode=tx").is_err() {
        return;
    }
    let mut host = Host::new(dev.mac, Some(ip), peer);
    let line = console::line("GUEST NET BENCH READY mode=")
        .s(if transmit { "tx" } else { "rx" })
        .s(" ip=");
    let line = netproto::print_ip(line, ip)
        .s("/")
        .dec(u64::from(prefix))
        .s(" mac=");
    netproto::print_mac(line, dev.mac)
        .s(" port=")
        .dec(u64::from(udp_port))
        .s(" queue_pairs=")
        .dec(dev.pairs as u64)
        .end();
    let result = match (transmit, peer) {
        (true, Some(peer)) => bench_tx(dev, &mut host, peer, udp_port, size as usize, ms),
        _ => bench_rx(dev, &mut host, udp_port, ms, wait_ms),
    };
    let Some(result) = result else {
        return;
    };
    let size = if transmit {
        size
    } else {
        result.bytes.checked_div(result.packets).unwrap_or(0)
    };
    let millis = tsc::per_second(result.bytes * 8, result.ticks) / 1_000_000;
    console::line("GUEST NET BENCH mode=")
        .s(if transmit { "tx" } else { "rx" })
        .s(" size=")
        .dec(size)
        .s(" packets=")
        .dec(result.packets)
        .s(" bytes=")
        .dec(result.bytes)
        .s(" pps=")
        .dec(tsc::per_second(result.packets, result.ticks))
        .s(" gbit_s=")
        .dec(millis / 1000)
        .s(".")
        .dec_width(millis % 1000, 3)
        .end();
}

/// mode=tx: resolves the peer, writes a datagram template into every transmit slot, then keeps
/// every transmit queue full (BENCH_BATCH frames per queue in turn) for `ms`, only the 8-byte
/// sequence number changing per datagram (no UDP checksum).
fn bench_tx(
    dev: &mut NetDevice,
    host: &mut Host,
    peer: Ipv4,
    udp_port: u16,
    size: usize,
    ms: u64,
) -> Option<BenchResult> {
    let mut resolved = None;
    let mut result = BenchResult {
        packets: 0,
        bytes: 0,
        ticks: 0,
    };
    let mut drained = true;
    let ok = in_ring3("net-bench tx", || {
        resolved = host.resolve(dev);
        let Some(peer_mac) = resolved else {
            return;
        };
        let spec = UdpSpec {
            src_mac: host.mac,
            dst_mac: peer_mac,
            vlan: None,
            src_ip: host.ip.unwrap_or([0; 4]),
            dst_ip: peer,
            src_port: udp_port,
            dst_port: udp_port,
            payload_len: size,
            ip_id: 0,
        };
        // Every slot gets zeroes; each frame then gets the headers (the same for all) and
        // its sequence number. The payload after the sequence number is zero, unless the
        // slot last carried an ARP or ICMP frame (its bytes beyond the headers): not checked.
        for queue in 0..dev.pairs {
            let tx = dev.tx(queue);
            tx.drain(DRAIN_MS);
            for slot in 0..tx.slots() {
                tx.frame_mut(slot).fill(0);
            }
        }
        let mut template = [0u8; MAX_TX_FRAME];
        let Some(layout) = netproto::build_udp_headers(&mut template, &spec) else {
            return;
        };
        let headers = &template[..layout.payload];
        let start = cpu::rdtsc();
        let deadline = start + tsc::from_ms(ms);
        let mut seq = 0u64;
        'run: loop {
            for queue in 0..dev.pairs {
                if cpu::rdtsc() >= deadline {
                    break 'run;
                }
                let tx = dev.tx(queue);
                let mut batch = 0;
                while batch < BENCH_BATCH {
                    let Some(slot) = tx.take_slot() else {
                        break;
                    };
                    let frame = tx.frame_mut(slot);
                    frame[..layout.payload].copy_from_slice(headers);
                    frame[layout.payload..layout.payload + 8].copy_from_slice(&seq.to_le_bytes());
                    tx.submit(slot, layout.frame_len);
                    seq += 1;
                    batch += 1;
                }
                tx.kick();
            }
            // Keep ARP and ICMP answered (the peer may ask for us while we send); with
            // nothing received this is one read of each used index.
            host.serve(dev, &mut |_| false);
        }
        for queue in 0..dev.pairs {
            drained &= dev.tx(queue).drain(DRAIN_MS);
        }
        result.ticks = cpu::rdtsc() - start;
        result.packets = seq;
        result.bytes = seq * size as u64;
    });
    if !ok {
        return None;
    }
    if resolved.is_none() {
        arp_failed(peer);
        return None;
    }
    if !drained {
        console::error("net-bench tx: frames still in flight ")
            .dec(DRAIN_MS)
            .s(" ms after the end")
            .end();
    }
    host.tx += result.packets;
    Some(result)
}

/// mode=rx: answers ARP and ICMP, and counts UDP datagrams to our address and `udp_port` for
/// `ms` from the first one (waiting up to `wait_ms` for it).
fn bench_rx(
    dev: &mut NetDevice,
    host: &mut Host,
    udp_port: u16,
    ms: u64,
    wait_ms: u64,
) -> Option<BenchResult> {
    let mut first: Option<u64> = None;
    let mut result = BenchResult {
        packets: 0,
        bytes: 0,
        ticks: tsc::from_ms(ms),
    };
    let ok = in_ring3("net-bench rx", || {
        let start = cpu::rdtsc();
        let window = tsc::from_ms(ms);
        let wait = tsc::from_ms(wait_ms);
        loop {
            let mut count = |datagram: &Datagram| {
                let udp = &datagram.udp;
                if udp.dst_port != udp_port {
                    return false;
                }
                let now = cpu::rdtsc();
                let begin = *first.get_or_insert(now);
                if now - begin >= window {
                    return false;
                }
                result.packets += 1;
                result.bytes += udp.payload.len() as u64;
                true
            };
            host.serve(dev, &mut count);
            let now = cpu::rdtsc();
            match first {
                Some(begin) if now - begin >= window => return,
                None if now - start > wait => return,
                _ => {}
            }
        }
    });
    if !ok {
        return None;
    }
    if first.is_none() {
        console::error("net-bench rx: no datagram to port ")
            .dec(u64::from(udp_port))
            .s(" within ")
            .dec(wait_ms)
            .s(" ms")
            .end();
        return None;
    }
    Some(result)
}

// --- net-peer ----------------------------------------------------------------------------------

fn peer_pattern(seq: u32, i: usize) -> u8 {
    seq.wrapping_add(i as u32) as u8
}

fn build_peer_frame(out: &mut [u8], mac: Mac, seq: u32) -> usize {
    let at = netproto::put_eth(out, BROADCAST, mac, None, PEER_ETHERTYPE);
    let payload = &mut out[at..at + PEER_PAYLOAD];
    payload[..4].copy_from_slice(&seq.to_le_bytes());
    for (i, byte) in payload.iter_mut().enumerate().skip(4) {
        *byte = peer_pattern(seq, i);
    }
    netproto::pad(out, at + PEER_PAYLOAD)
}

fn build_peer_ack(out: &mut [u8], mac: Mac, to: Mac, next: u32) -> usize {
    let at = netproto::put_eth(out, to, mac, None, PEER_ACK_ETHERTYPE);
    out[at..at + 4].copy_from_slice(&next.to_le_bytes());
    out[at + 4..at + 8].fill(0);
    netproto::pad(out, at + 8)
}

#[derive(Default)]
struct PeerResult {
    /// Sender: frames acknowledged; receiver: frames accepted in order.
    frames: u32,
    retransmitted: u64,
    duplicates: u64,
    out_of_order: u64,
    early: u64,
    bad_payloads: u64,
    foreign: u64,
    timed_out: bool,
}

fn peer(dev: &mut NetDevice, cmdline: &[u8]) {
    let send = match cmdline::param(cmdline, "role") {
        Some(b"send") => true,
        Some(b"recv") => false,
        _ => {
            console::error("net: net-peer needs role=send or role=recv").end();
            return;
        }
    };
    let count = number(cmdline, "count", DEFAULT_PEER_COUNT, 1..=MAX_PEER_COUNT);
    let timeout_ms = number(cmdline, "timeout_ms", DEFAULT_TIMEOUT_MS, 1..=MAX_MS);
    let (Ok(count), Ok(timeout_ms)) = (count, timeout_ms) else {
        return;
    };
    let count = count as u32;
    let line = console::line(if send {
        "GUEST NET PEER READY role=send mac="
    } else {
        "GUEST NET PEER READY role=recv mac="
    });
    netproto::print_mac(line, dev.mac).end();
    let mut result = PeerResult::default();
    let ok = in_ring3("net-peer", || {
        result = if send {
            peer_send(dev, count, timeout_ms)
        } else {
            peer_recv(dev, count, timeout_ms)
        };
    });
    if !ok {
        return;
    }
    if send {
        if result.timed_out {
            console::error("net peer send: acknowledged ")
                .dec(u64::from(result.frames))
                .s(" of ")
                .dec(u64::from(count))
                .s(" frames, no progress for ")
                .dec(timeout_ms)
                .s(" ms")
                .end();
        } else {
            console::line("GUEST NET PEER SENT frames=")
                .dec(u64::from(count))
                .s(" retransmitted=")
                .dec(result.retransmitted)
                .end();
        }
        return;
    }
    if result.timed_out {
        console::error("net peer recv: got ")
            .dec(u64::from(result.frames))
            .s(" of ")
            .dec(u64::from(count))
            .s(" frames, nothing new for ")
            .dec(timeout_ms)
            .s(" ms")
            .end();
    } else if result.bad_payloads != 0 {
        console::error("net peer recv: frames=")
            .dec(u64::from(result.frames))
            .s(" bad_payloads=")
            .dec(result.bad_payloads)
            .end();
    } else {
        console::line("GUEST NET PEER OK frames=")
            .dec(u64::from(result.frames))
            .s(" duplicates=")
            .dec(result.duplicates)
            .s(" out_of_order=")
            .dec(result.out_of_order)
            .end();
    }
    console::line("GUEST INFO net peer early=")
        .dec(result.early)
        .s(" foreign=")
        .dec(result.foreign)
        .end();
}

/// Go-back-N over transmit queue 0: up to PEER_WINDOW frames beyond the last acknowledged
/// one; on PEER_RETRANSMIT_MS without progress, resend from there. Ring 3.
fn peer_send(dev: &mut NetDevice, count: u32, timeout_ms: u64) -> PeerResult {
    let mut result = PeerResult::default();
    let mac = dev.mac;
    let retransmit = tsc::from_ms(PEER_RETRANSMIT_MS);
    let timeout = tsc::from_ms(timeout_ms);
    let mut base = 0u32;
    let mut next = 0u32;
    let mut highest = 0u32;
    let mut last_progress = cpu::rdtsc();
    let mut last_resend = last_progress;
    while base < count {
        let tx = dev.tx(0);
        while next < count && next < base.saturating_add(PEER_WINDOW) {
            if tx.send(|out| build_peer_frame(out, mac, next)) != Sent::Queued {
                result.timed_out = true;
                result.frames = base;
                return result;
            }
            if next < highest {
                result.retransmitted += 1;
            }
            next += 1;
            highest = highest.max(next);
        }
        tx.kick();
        for queue in 0..dev.pairs {
            while let Some(polled) = dev.rx(queue).poll() {
                let Ok(frame) = polled else {
                    continue;
                };
                let Some(eth) = netproto::parse_eth(frame.bytes()) else {
                    continue;
                };
                if eth.ethertype != PEER_ACK_ETHERTYPE || eth.dst != mac || eth.payload.len() < 4 {
                    result.foreign += 1;
                    continue;
                }
                let acked = u32::from_le_bytes([
                    eth.payload[0],
                    eth.payload[1],
                    eth.payload[2],
                    eth.payload[3],
                ]);
                if acked > base && acked <= highest {
                    base = acked;
                    next = next.max(base);
                    last_progress = cpu::rdtsc();
                }
            }
            let rx = dev.rx(queue);
            rx.release();
            rx.kick();
        }
        let now = cpu::rdtsc();
        if now - last_progress > timeout {
            result.timed_out = true;
            break;
        }
        if next > base && now - last_progress.max(last_resend) > retransmit {
            next = base;
            last_resend = now;
        }
    }
    dev.tx(0).drain(DRAIN_MS);
    result.frames = base;
    result
}

/// Accepts frames in sequence order, checks their payloads, acknowledges (cumulatively, to
/// the sender's MAC) after every batch, and lingers PEER_LINGER_MS after the last. Ring 3.
fn peer_recv(dev: &mut NetDevice, count: u32, timeout_ms: u64) -> PeerResult {
    let mut result = PeerResult::default();
    let mac = dev.mac;
    let timeout = tsc::from_ms(timeout_ms);
    let linger = tsc::from_ms(PEER_LINGER_MS);
    let mut expected = 0u32;
    let mut last_progress = cpu::rdtsc();
    let mut done_at: Option<u64> = None;
    loop {
        let mut ack_to: Option<Mac> = None;
        for queue in 0..dev.pairs {
            while let Some(polled) = dev.rx(queue).poll() {
                let Ok(frame) = polled else {
                    continue;
                };
                let Some(eth) = netproto::parse_eth(frame.bytes()) else {
                    continue;
                };
                if eth.ethertype != PEER_ETHERTYPE || eth.payload.len() < PEER_PAYLOAD {
                    result.foreign += 1;
                    continue;
                }
                let p = eth.payload;
                let seq = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                ack_to = Some(eth.src);
                let wrong = (4..PEER_PAYLOAD).find(|&i| p[i] != peer_pattern(seq, i));
                if let Some(i) = wrong {
                    result.bad_payloads += 1;
                    if result.bad_payloads <= RX_ERROR_LINES {
                        console::error("net peer bad payload seq=")
                            .dec(u64::from(seq))
                            .s(" offset=")
                            .dec(i as u64)
                            .s(" got=")
                            .hex(u64::from(p[i]))
                            .s(" want=")
                            .hex(u64::from(peer_pattern(seq, i)))
                            .end();
                    }
                    continue;
                }
                if seq == expected && expected < count {
                    expected += 1;
                    last_progress = cpu::rdtsc();
                } else if seq < expected {
                    result.duplicates += 1;
                } else if expected == 0 {
                    // The sender started before us: frames ahead of the first one we can
                    // accept are expected until it goes back.
                    result.early += 1;
                } else {
                    result.out_of_order += 1;
                }
            }
            let rx = dev.rx(queue);
            rx.release();
            rx.kick();
        }
        let tx = dev.tx(0);
        tx.reap();
        if let Some(to) = ack_to {
            if tx.send(|out| build_peer_ack(out, mac, to, expected)) == Sent::Queued {
                tx.kick();
            }
        }
        let now = cpu::rdtsc();
        if expected == count {
            let at = *done_at.get_or_insert(now);
            if now - at > linger {
                break;
            }
        } else if now - last_progress > timeout {
            result.timed_out = true;
            break;
        }
    }
    dev.tx(0).drain(DRAIN_MS);
    result.frames = expected;
    result
}
