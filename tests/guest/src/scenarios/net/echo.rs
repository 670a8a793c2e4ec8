//! `net-echo`: a minimal IPv4 host at `ip=` answering ARP, ICMP echo and UDP echo; with
//! `peer=` and `port=` it first resolves the peer and sends it `count` datagrams of a known
//! pattern; it serves until the power button or `ms=`, then prints its counters.

use super::host::{arp_failed, stats, Host, DRAIN_MS};
use super::params::{addresses, number, number_opt, parsed, port, required, MAX_MS};
use super::serve::{in_ring3, power_button, serve_until_stopped};
use crate::acpi::Acpi;
use crate::console;
use crate::drivers::virtio_net::NetDevice;
use crate::netproto::{self, Ipv4, Mac, UdpSpec, MAX_UDP_PAYLOAD};

/// net-echo's UDP payload: 8-byte sequence number, then pattern bytes up to this length.
const ECHO_UDP_PAYLOAD: usize = 1000;
const DEFAULT_ECHO_COUNT: u64 = 100;
const MAX_ECHO_COUNT: u64 = 1_000_000_000;

/// net-echo, also the tail of net-rxfilter with `ip=`.
pub fn run(dev: &mut NetDevice, acpi: &Acpi, cmdline: &[u8]) {
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
    check_drained(dev);
    stats(dev, &host);
}

/// Every frame handed to the device comes back: a device that lost one (say, a backend
/// restarted while the frame was in flight) is reported, by queue.
fn check_drained(dev: &mut NetDevice) {
    for pair in 0..dev.pairs {
        let mut left = 0;
        let ran = in_ring3("net-echo drain", || {
            let tx = dev.tx(pair);
            if !tx.drain(DRAIN_MS) {
                left = tx.inflight();
            }
        });
        if ran && left > 0 {
            console::error("net: transmit queue ")
                .dec(2 * pair as u64 + 1)
                .s(": ")
                .dec(u64::from(left))
                .s(" frames never completed")
                .end();
        }
    }
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
