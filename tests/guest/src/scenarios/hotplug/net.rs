//! A hot-added virtio-net device: `GUEST HOTPLUG NET OK ...` once it is up; then, with `ip=`,
//! `peer=` and `port=`, traffic through the net scenarios' little IPv4 host (net/host.rs):
//! the peer is resolved by ARP (10 s at most) and sent ECHOES UDP datagrams from port P to
//! peer:P, which must come back unchanged from peer:P (a UDP reflector on the host), missing
//! ones resent every RESEND_MS, for ECHO_MS at most: `GUEST HOTPLUG NET TRAFFIC OK ...` or
//! `GUEST ERROR hotplug net slot=S <what>`. Everything touching frames runs in ring 3.
//!
//! Payload of datagram `seq` (PAYLOAD bytes): "FLOTHPNG", the add's seed (little-endian u64),
//! seq (u32), then byte i = (seq + i) & 0xff; the seed keeps a late echo of an earlier add
//! from counting.

use super::super::net::host::{Datagram, Host, DRAIN_MS};
use super::params::Traffic;
use crate::arch::{cpu, tsc, user};
use crate::console;
use crate::drivers::virtio_net::NetDevice;
use crate::netproto::{self, UdpSpec};

const ECHOES: u32 = 16;
const PAYLOAD: usize = 64;
const ECHO_MS: u64 = 10_000;
const RESEND_MS: u64 = 1000;
const MAGIC: &[u8; 8] = b"FLOTHPNG";

/// Starts a `GUEST ERROR hotplug net slot=S ` line.
fn error(slot: u8) -> console::Line {
    console::error("hotplug net slot=")
        .dec(u64::from(slot))
        .s(" ")
}

fn payload_byte(seed: u64, seq: u32, i: usize) -> u8 {
    match i {
        0..8 => MAGIC[i],
        8..16 => seed.to_le_bytes()[i - 8],
        16..20 => seq.to_le_bytes()[i - 16],
        _ => (seq as usize + i) as u8,
    }
}

/// The sequence number of an echo of one of our datagrams, if `datagram` is one.
fn echoed(datagram: &Datagram, traffic: &Traffic, seed: u64) -> Option<u32> {
    let payload = datagram.udp.payload;
    if datagram.src_ip != traffic.peer
        || datagram.udp.src_port != traffic.port
        || datagram.udp.dst_port != traffic.port
        || payload.len() != PAYLOAD
    {
        return None;
    }
    let seq = u32::from_le_bytes([payload[16], payload[17], payload[18], payload[19]]);
    let intact = seq < ECHOES
        && payload
            .iter()
            .enumerate()
            .all(|(i, &byte)| byte == payload_byte(seed, seq, i));
    intact.then_some(seq)
}

/// Why the traffic check failed.
enum Failure {
    Arp,
    Send,
    Echoes(u32),
}

/// Ring 3: ARP, then the datagrams until all are echoed or ECHO_MS pass.
fn traffic(dev: &mut NetDevice, traffic: &Traffic, seed: u64) -> Result<(), Failure> {
    let mut host = Host::new(dev.mac, Some(traffic.ip), Some(traffic.peer));
    let peer_mac = host.resolve(dev).ok_or(Failure::Arp)?;
    let mut echoed_mask = 0u32;
    let all = (1u32 << ECHOES) - 1;
    let start = cpu::rdtsc();
    let mut last_send: Option<u64> = None;
    while echoed_mask != all {
        let now = cpu::rdtsc();
        if now - start > tsc::from_ms(ECHO_MS) {
            return Err(Failure::Echoes(echoed_mask.count_ones()));
        }
        if last_send.is_none_or(|t| now - t > tsc::from_ms(RESEND_MS)) {
            last_send = Some(now);
            for seq in (0..ECHOES).filter(|&seq| echoed_mask & (1 << seq) == 0) {
                let spec = UdpSpec {
                    src_mac: host.mac,
                    dst_mac: peer_mac,
                    vlan: None,
                    src_ip: traffic.ip,
                    dst_ip: traffic.peer,
                    src_port: traffic.port,
                    dst_port: traffic.port,
                    payload_len: PAYLOAD,
                    ip_id: host.ip_id,
                };
                host.ip_id = host.ip_id.wrapping_add(1);
                let sent = host.transmit(dev, |out| {
                    let Some(layout) = netproto::build_udp_headers(out, &spec) else {
                        return 0;
                    };
                    for (i, byte) in out[layout.payload..layout.payload + PAYLOAD]
                        .iter_mut()
                        .enumerate()
                    {
                        *byte = payload_byte(seed, seq, i);
                    }
                    netproto::finish_udp_checksum(out, &layout, spec.src_ip, spec.dst_ip);
                    layout.frame_len
                });
                if !sent {
                    return Err(Failure::Send);
                }
            }
        }
        host.serve(dev, &mut |datagram| match echoed(datagram, traffic, seed) {
            Some(seq) => {
                echoed_mask |= 1 << seq;
                true
            }
            None => false,
        });
    }
    Ok(())
}

/// The hot-add check of a virtio-net device in `slot`: NET OK, then the traffic check if
/// the command line asks for it.
pub fn exercise(dev: &mut NetDevice, slot: u8, seed: u64, check: Option<Traffic>) {
    let line = console::line("GUEST HOTPLUG NET OK slot=")
        .dec(u64::from(slot))
        .s(" mac=");
    netproto::print_mac(line, dev.mac).end();
    let Some(check) = check else {
        return;
    };
    let mut result = Err(Failure::Send);
    let mut work = || {
        result = traffic(dev, &check, seed);
        0
    };
    if user::call_reported("hotplug net", "the traffic check", &mut work).is_none() {
        return;
    }
    match result {
        Ok(()) => console::line("GUEST HOTPLUG NET TRAFFIC OK slot=")
            .dec(u64::from(slot))
            .s(" echoed=")
            .dec(u64::from(ECHOES))
            .end(),
        Err(Failure::Arp) => {
            let line = error(slot).s("no ARP reply from ");
            netproto::print_ip(line, check.peer).end();
        }
        Err(Failure::Send) => error(slot).s("the device took no frame to send").end(),
        Err(Failure::Echoes(got)) => error(slot)
            .s("echoed ")
            .dec(u64::from(got))
            .s(" of ")
            .dec(u64::from(ECHOES))
            .s(" datagrams within ")
            .dec(ECHO_MS)
            .s(" ms")
            .end(),
    }
}

/// Before the eject: lets the frames handed to the device complete (DRAIN_MS at most per
/// queue), then shuts the device down (reset, MSI-X and memory decoding off).
pub fn quiesce(dev: &mut NetDevice, slot: u8) {
    let mut left = 0;
    let mut drain = || {
        for pair in 0..dev.pairs {
            let tx = dev.tx(pair);
            if !tx.drain(DRAIN_MS) {
                left += u64::from(tx.inflight());
            }
        }
        0
    };
    // A fault is reported; the device is reset below all the same.
    let _ = user::call_reported("hotplug net", "draining the transmit queues", &mut drain);
    if left != 0 {
        console::line("GUEST INFO hotplug net slot=")
            .dec(u64::from(slot))
            .s(" resets the device with ")
            .dec(left)
            .s(" frames still in flight")
            .end();
    }
    dev.transport.shut_down();
}
