//! The peer on the far side of a `dgram` netdev for the test guest's network scenarios
//! (pci-hotplug's NIC traffic): whole Ethernet frames in UDP datagrams; it answers ARP
//! requests for PEER_IP and sends UDP datagrams to PEER_IP back to their sender (addresses
//! and ports swapped, which leaves both checksums valid). QEMU's and Flotilla's tests
//! drive the same guest against it.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The IPv4 peer the guest sends to (the NIC's netdev leads to the reflector).
pub const PEER_IP: [u8; 4] = [10, 0, 2, 1];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const GUEST_IP: &str = "10.0.2.15/24";
pub const PORT: u16 = 7777;

/// The reflector: its UDP port, and the ARP and UDP frames it answered.
pub struct Reflector {
    pub port: u16,
    pub arp: Arc<AtomicU64>,
    pub udp: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reflector {
    pub fn start() -> Reflector {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let (arp, udp) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (arp, udp, stop) = (arp.clone(), udp.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut frame = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut frame) else {
                        continue;
                    };
                    if let Some(reply) = Self::answer(&frame[..len]) {
                        let counter = if reply[12..14] == [0x08, 0x06] {
                            &arp
                        } else {
                            &udp
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(&reply, from);
                    }
                }
            })
        };
        Reflector {
            port,
            arp,
            udp,
            stop,
            thread: Some(thread),
        }
    }

    fn answer(f: &[u8]) -> Option<Vec<u8>> {
        if f.len() < 42 {
            return None;
        }
        match f[12..14] {
            // ARP request (Ethernet/IPv4) for the peer's address.
            [0x08, 0x06] if f[20..22] == [0, 1] && f[38..42] == PEER_IP => {
                let mut r = Vec::with_capacity(60);
                r.extend_from_slice(&f[6..12]);
                r.extend_from_slice(&PEER_MAC);
                r.extend_from_slice(&[0x08, 0x06]);
                r.extend_from_slice(&f[14..20]);
                r.extend_from_slice(&[0, 2]);
                r.extend_from_slice(&PEER_MAC);
                r.extend_from_slice(&PEER_IP);
                r.extend_from_slice(&f[22..32]);
                r.resize(60, 0);
                Some(r)
            }
            // UDP (no IP options: the guest sends none) to the peer's address.
            [0x08, 0x00] if f[14] == 0x45 && f[23] == 17 && f[30..34] == PEER_IP => {
                let mut r = f.to_vec();
                r[0..6].copy_from_slice(&f[6..12]);
                r[6..12].copy_from_slice(&PEER_MAC);
                r[26..30].copy_from_slice(&f[30..34]);
                r[30..34].copy_from_slice(&f[26..30]);
                r[34..36].copy_from_slice(&f[36..38]);
                r[36..38].copy_from_slice(&f[34..36]);
                Some(r)
            }
            _ => None,
        }
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
