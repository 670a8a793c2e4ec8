//! The little IPv4 host the network scenarios share (ring 3): our MAC and address, the
//! peer's address and (once learnt by ARP) MAC, answers to ARP requests and ICMP echo
//! requests, UDP datagrams to our address handed to the scenario (or echoed back), sending
//! round robin over the transmit queues, and the counters behind the `GUEST NET STATS`, `RX`
//! and `QUEUE` lines.

use crate::arch::{cpu, tsc};
use crate::console;
use crate::drivers::virtio_net::rx::RxError;
use crate::drivers::virtio_net::tx::Sent;
use crate::drivers::virtio_net::{NetDevice, MAX_QUEUE_PAIRS};
use crate::netproto::{
    self, Bad, Ipv4, Mac, UdpSpec, ARP_REPLY, ARP_REQUEST, BROADCAST, ETHERTYPE_ARP,
    ETHERTYPE_IPV4, PROTO_ICMP, PROTO_UDP,
};

const ARP_RETRY_MS: u64 = 250;
const ARP_TIMEOUT_MS: u64 = 10_000;

/// How long a scenario waits for its sent frames to complete.
pub const DRAIN_MS: u64 = 2000;

/// Error lines about bad receive entries before they are only counted.
pub const RX_ERROR_LINES: u64 = 8;

/// What a frame turned out to be, for the caller of [`Host::serve`].
enum Delivery<'a> {
    /// Consumed (ARP, ICMP echo) or dropped: nothing for the caller.
    Handled,
    /// A UDP datagram to our address.
    Udp(Datagram<'a>),
}

/// A received UDP datagram to our address, with where it came from.
pub struct Datagram<'a> {
    pub src_mac: Mac,
    pub vlan: Option<u16>,
    pub src_ip: Ipv4,
    pub udp: netproto::Udp<'a>,
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
pub struct Host {
    pub mac: Mac,
    pub ip: Option<Ipv4>,
    peer_ip: Option<Ipv4>,
    peer_mac: Option<Mac>,
    pub ip_id: u16,
    next_tx: usize,
    rx: u64,
    pub tx: u64,
    dropped: u64,
    rx_errors: u64,
    /// Frames received and sent per queue pair.
    rx_queue: [u64; MAX_QUEUE_PAIRS],
    tx_queue: [u64; MAX_QUEUE_PAIRS],
    by_destination: ByDestination,
    /// Echo UDP datagrams that nobody else wanted back to their sender (net-echo).
    pub udp_echo: bool,
    udp_echoed: u64,
    tx_stuck: bool,
    /// Sent frames were still in flight DRAIN_MS after the last one.
    pub undrained: bool,
}

impl Host {
    pub fn new(mac: Mac, ip: Option<Ipv4>, peer_ip: Option<Ipv4>) -> Host {
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
            rx_queue: [0; MAX_QUEUE_PAIRS],
            tx_queue: [0; MAX_QUEUE_PAIRS],
            by_destination: ByDestination::default(),
            udp_echo: false,
            udp_echoed: 0,
            tx_stuck: false,
            undrained: false,
        }
    }

    /// Sends one frame on the next transmit queue (round robin) and notifies the device.
    /// False if nothing was sent (no slot for a second: reported once; or `build` had nothing).
    pub fn transmit(
        &mut self,
        dev: &mut NetDevice,
        build: impl FnOnce(&mut [u8]) -> usize,
    ) -> bool {
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

    pub fn send_arp(&mut self, dev: &mut NetDevice, op: u16, to: Mac, vlan: Option<u16>, ip: Ipv4) {
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
    pub fn serve(&mut self, dev: &mut NetDevice, udp: &mut impl FnMut(&Datagram) -> bool) -> u64 {
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
    pub fn resolve(&mut self, dev: &mut NetDevice) -> Option<Mac> {
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

pub fn arp_failed(peer: Ipv4) {
    let line = console::error("net arp: no reply from ");
    netproto::print_ip(line, peer)
        .s(" within ")
        .dec(ARP_TIMEOUT_MS)
        .s(" ms")
        .end();
}

/// `GUEST NET STATS ...`, `GUEST NET RX ...` and one `GUEST NET QUEUE ...` per queue pair.
pub fn stats(dev: &NetDevice, host: &Host) {
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
