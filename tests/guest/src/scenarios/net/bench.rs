//! `net-bench mode=tx|rx`: UDP throughput. tx keeps every transmit queue full for `ms=` with
//! datagrams to the peer; rx counts datagrams to our port for `ms=` from the first one. One
//! `GUEST NET BENCH ...` result line (rates from the TSC).

use super::host::{arp_failed, Datagram, Host, DRAIN_MS};
use super::params::{addresses, number, parsed, port, required, DEFAULT_TIMEOUT_MS, MAX_MS};
use super::serve::in_ring3;
use crate::arch::{cpu, tsc};
use crate::cmdline;
use crate::console;
use crate::drivers::virtio_net::tx::MAX_TX_FRAME;
use crate::drivers::virtio_net::NetDevice;
use crate::netproto::{self, Ipv4, UdpSpec, MAX_UDP_PAYLOAD};

const DEFAULT_BENCH_MS: u64 = 2000;
const DEFAULT_BENCH_SIZE: u64 = 1400;
/// Frames the bench puts on one queue before moving to the next.
const BENCH_BATCH: u32 = 32;

struct BenchResult {
    packets: u64,
    bytes: u64,
    ticks: u64,
}

pub fn run(dev: &mut NetDevice, cmdline: &[u8]) {
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
