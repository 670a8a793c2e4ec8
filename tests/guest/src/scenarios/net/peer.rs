//! `net-peer role=send|recv`: two guests on one L2 link. The sender sends numbered frames of
//! a known pattern (ethertype 0x88b5) go-back-N; the receiver accepts them in order, checks
//! every payload and acknowledges cumulatively (ethertype 0x88b6). Ring 3.

use super::host::{DRAIN_MS, RX_ERROR_LINES};
use super::params::{number, DEFAULT_TIMEOUT_MS, MAX_MS};
use super::serve::in_ring3;
use crate::arch::{cpu, tsc};
use crate::drivers::virtio_net::tx::Sent;
use crate::drivers::virtio_net::NetDevice;
use crate::netproto::{self, Eth, Mac, BROADCAST};
use crate::{cmdline, console};

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

pub fn run(dev: &mut NetDevice, cmdline: &[u8]) {
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
            gave_up(
                "net peer send: acknowledged ",
                &result,
                count,
                "no progress",
                timeout_ms,
            );
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
        gave_up(
            "net peer recv: got ",
            &result,
            count,
            "nothing new",
            timeout_ms,
        );
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

/// `GUEST ERROR <what>N of M frames, <stalled> for T ms`: one side gave up.
fn gave_up(what: &str, result: &PeerResult, count: u32, stalled: &str, timeout_ms: u64) {
    console::error(what)
        .dec(u64::from(result.frames))
        .s(" of ")
        .dec(u64::from(count))
        .s(" frames, ")
        .s(stalled)
        .s(" for ")
        .dec(timeout_ms)
        .s(" ms")
        .end();
}

/// Hands every Ethernet frame waiting on the receive queues to `each` and re-posts the buffers
/// (bad receive entries and frames too short for Ethernet are skipped). Ring 3.
fn each_frame(dev: &mut NetDevice, mut each: impl FnMut(&Eth)) {
    for queue in 0..dev.pairs {
        while let Some(polled) = dev.rx(queue).poll() {
            let Ok(frame) = polled else {
                continue;
            };
            if let Some(eth) = netproto::parse_eth(frame.bytes()) {
                each(&eth);
            }
        }
        let rx = dev.rx(queue);
        rx.release();
        rx.kick();
    }
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
        each_frame(dev, |eth| {
            if eth.ethertype != PEER_ACK_ETHERTYPE || eth.dst != mac || eth.payload.len() < 4 {
                result.foreign += 1;
                return;
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
        });
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
        each_frame(dev, |eth| {
            if eth.ethertype != PEER_ETHERTYPE || eth.payload.len() < PEER_PAYLOAD {
                result.foreign += 1;
                return;
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
                return;
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
        });
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
