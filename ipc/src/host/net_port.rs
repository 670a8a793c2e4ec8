//! Opening a NIC's host side. A tap queue carries frames with the virtio-net header (so
//! offloads pass straight through); a datagram socket carries one Ethernet frame per
//! datagram. The gateway opens them for net-daemon (which then opens nothing); net-daemon
//! opens them itself only when it runs on its own.

use std::os::fd::{AsRawFd, OwnedFd};

/// Opens tap `name` (created if it does not exist and we may create it) with `queues`
/// queues, each with the virtio-net header.
pub fn open_tap(name: &str, queues: usize) -> std::io::Result<Vec<OwnedFd>> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{name}' is not an interface name"),
        ));
    }
    (0..queues)
        .map(|_| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")?;
            // SAFETY: an ifreq is plain data; zeroed is a valid value.
            let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
            for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            // A tap made with multi_queue must be opened as such, one made without must
            // not: try the first, then (for one queue) the second.
            let base = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            let mut last = std::io::Error::other("TUNSETIFF");
            for flags in [base | IFF_MULTI_QUEUE, base] {
                ifr.ifr_ifru.ifru_flags = flags;
                // SAFETY: TUNSETIFF reads and writes the ifreq we pass.
                if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifr) } == 0 {
                    return Ok(file.into());
                }
                last = std::io::Error::last_os_error();
                if queues > 1 {
                    break;
                }
            }
            Err(last)
        })
        .collect()
}

/// A UDP socket bound to `local` and connected to `remote` (`HOST:PORT` each): one
/// Ethernet frame per datagram, as QEMU's `-netdev socket,udp=` and `dgram` send them.
pub fn open_datagram(local: &str, remote: &str) -> std::io::Result<OwnedFd> {
    let s = std::net::UdpSocket::bind(local)?;
    s.connect(remote)?;
    Ok(s.into())
}
