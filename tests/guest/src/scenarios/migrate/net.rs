//! `mig-net=1`: frames echoed by a peer while the pages are dirtied, through queue pair 0 of
//! virtio-net device 0, never waited for: the dirtying loop calls [`NetLoad::poll`] between
//! pages. Every GAP_MS the guest sends one frame to ff:ff:ff:ff:ff:ff, ethertype 0x88b5,
//! payload (64 bytes) = "FLOTMIG1", the sequence number (little-endian u64, from 1), then byte
//! i = (seq + i) & 0xff; the peer must send it back to the guest's MAC with ethertype 0x88b6
//! and the payload unchanged (the host tests' reflector swaps the addresses). One frame is
//! outstanding at a time; it is resent every RESEND_MS until its echo arrives (frames in
//! flight when a migration switches over are lost), and no echo for TIMEOUT_MS, or an echo
//! with a changed payload, is an error. Ring 3, except `new`.

use crate::arch::{cpu, tsc};
use crate::console;
use crate::drivers::virtio_net::tx::Sent;
use crate::drivers::virtio_net::NetDevice;
use crate::netproto::{self, Mac, BROADCAST};

const REQUEST_ETHERTYPE: u16 = 0x88b5;
const ECHO_ETHERTYPE: u16 = 0x88b6;
const MAGIC: &[u8; 8] = b"FLOTMIG1";
const PAYLOAD: usize = 64;
const GAP_MS: u64 = 10;
const RESEND_MS: u64 = 200;
const TIMEOUT_MS: u64 = 30_000;
const REPORT_MS: u64 = 1000;

fn payload_byte(seq: u64, i: usize) -> u8 {
    match i {
        0..8 => MAGIC[i],
        8..16 => seq.to_le_bytes()[i - 8],
        _ => seq.wrapping_add(i as u64) as u8,
    }
}

fn build(out: &mut [u8], mac: Mac, seq: u64) -> usize {
    let at = netproto::put_eth(out, BROADCAST, mac, None, REQUEST_ETHERTYPE);
    for (i, byte) in out[at..at + PAYLOAD].iter_mut().enumerate() {
        *byte = payload_byte(seq, i);
    }
    netproto::pad(out, at + PAYLOAD)
}

/// What a received frame was.
enum Received {
    /// The echo of `seq`, intact.
    Echo(u64),
    /// The echo of `seq` with byte `offset` changed.
    Bad { seq: u64, offset: usize, got: u8 },
    /// Anything else (other ethertypes, other destinations, QEMU's announcements).
    Foreign,
}

fn classify(frame: &[u8], mac: Mac) -> Received {
    let Some(eth) = netproto::parse_eth(frame) else {
        return Received::Foreign;
    };
    let p = eth.payload;
    if eth.ethertype != ECHO_ETHERTYPE || eth.dst != mac || p.len() < PAYLOAD || &p[..8] != MAGIC {
        return Received::Foreign;
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&p[8..16]);
    let seq = u64::from_le_bytes(seq_bytes);
    match (16..PAYLOAD).find(|&i| p[i] != payload_byte(seq, i)) {
        None => Received::Echo(seq),
        Some(offset) => Received::Bad {
            seq,
            offset,
            got: p[offset],
        },
    }
}

pub struct NetLoad<'a> {
    dev: &'a mut NetDevice,
    /// The frame outstanding (0: none yet).
    seq: u64,
    awaiting: bool,
    first_sent: u64,
    last_sent: u64,
    next_at: u64,
    /// Frames echoed intact.
    pub echoes: u64,
    resent: u64,
    /// Echoes of frames already echoed (a resent frame whose first copy came back too).
    duplicates: u64,
    foreign: u64,
    rx_errors: u64,
    reported: u64,
    last_report: u64,
}

impl<'a> NetLoad<'a> {
    pub fn new(dev: &'a mut NetDevice) -> NetLoad<'a> {
        let now = cpu::rdtsc();
        NetLoad {
            dev,
            seq: 0,
            awaiting: false,
            first_sent: now,
            last_sent: now,
            next_at: now,
            echoes: 0,
            resent: 0,
            duplicates: 0,
            foreign: 0,
            rx_errors: 0,
            reported: 0,
            last_report: now,
        }
    }

    pub fn mac(&self) -> Mac {
        self.dev.mac
    }

    fn send(&mut self) -> Result<(), ()> {
        let (mac, seq) = (self.dev.mac, self.seq);
        let tx = self.dev.tx(0);
        match tx.send(|out| build(out, mac, seq)) {
            Sent::Queued => {
                tx.kick();
                self.last_sent = cpu::rdtsc();
                Ok(())
            }
            Sent::NoSlot | Sent::Declined => {
                console::error("mig net: transmit queue 1 has had no free slot for 1 s").end();
                Err(())
            }
        }
    }

    /// Takes what arrived, sends or resends the outstanding frame when due. Err after an
    /// error line.
    pub fn poll(&mut self) -> Result<(), ()> {
        let mac = self.dev.mac;
        let mut bad = None;
        let mut echoed = false;
        let rx = self.dev.rx(0);
        while let Some(polled) = rx.poll() {
            let Ok(frame) = polled else {
                self.rx_errors += 1;
                continue;
            };
            match classify(frame.bytes(), mac) {
                Received::Echo(seq) if self.awaiting && seq == self.seq => echoed = true,
                Received::Echo(_) => self.duplicates += 1,
                Received::Bad { seq, offset, got } => {
                    bad.get_or_insert((seq, offset, got));
                }
                Received::Foreign => self.foreign += 1,
            }
        }
        rx.release();
        rx.kick();
        self.dev.tx(0).reap();
        if let Some((seq, offset, got)) = bad {
            console::error("mig net bad echo seq=")
                .dec(seq)
                .s(" offset=")
                .dec(offset as u64)
                .s(" got=")
                .hex(u64::from(got))
                .s(" want=")
                .hex(u64::from(payload_byte(seq, offset)))
                .end();
            return Err(());
        }
        let now = cpu::rdtsc();
        if echoed {
            self.awaiting = false;
            self.echoes += 1;
            self.next_at = now + tsc::from_ms(GAP_MS);
        }
        if now.wrapping_sub(self.last_report) > tsc::from_ms(REPORT_MS)
            && self.echoes != self.reported
        {
            console::line("GUEST MIG net ")
                .dec(self.echoes)
                .s(" ok resent=")
                .dec(self.resent)
                .end();
            self.reported = self.echoes;
            self.last_report = now;
        }
        if !self.awaiting {
            if now < self.next_at {
                return Ok(());
            }
            self.seq += 1;
            self.awaiting = true;
            self.first_sent = now;
            return self.send();
        }
        if now.wrapping_sub(self.first_sent) > tsc::from_ms(TIMEOUT_MS) {
            console::error("mig net: no echo of seq=")
                .dec(self.seq)
                .s(" within ")
                .dec(TIMEOUT_MS)
                .s(" ms (resent ")
                .dec(self.resent)
                .s(" times; echoes=")
                .dec(self.echoes)
                .s(" duplicates=")
                .dec(self.duplicates)
                .s(" foreign=")
                .dec(self.foreign)
                .s(" rx_errors=")
                .dec(self.rx_errors)
                .s(")")
                .end();
            return Err(());
        }
        if now.wrapping_sub(self.last_sent) > tsc::from_ms(RESEND_MS) {
            self.resent += 1;
            return self.send();
        }
        Ok(())
    }
}
