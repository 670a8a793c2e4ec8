//! The NIC's host side: a tap queue (frames with the virtio-net header, so checksum and
//! segmentation offloads pass straight through) or a connected datagram socket (one
//! frame per datagram, no header: offloads are not offered on it). The gateway opened
//! both (with `open_tap` and `open_datagram` below, which the gateway calls, as does
//! the daemon when it runs on its own); the daemon only configures the fds it was given.

use std::os::fd::{AsRawFd, OwnedFd};

use ipc::NetBackendKind;

use crate::frames::HDR_LEN;

// <linux/if_tun.h>
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_TSO_ECN: u32 = 0x08;
const TUN_F_UFO: u32 = 0x10;

// virtio-net feature bits the tap's offloads follow.
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_GUEST_ECN: u64 = 1 << 9;
pub const F_GUEST_UFO: u64 = 1 << 10;

pub struct Port {
    fd: OwnedFd,
    kind: NetBackendKind,
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Port {
    /// Takes an fd the gateway opened: nonblocking, and for a tap, the 12-byte header.
    pub fn new(fd: OwnedFd, kind: NetBackendKind) -> std::io::Result<Port> {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl and ioctl on an fd we own, with integer or local arguments.
        unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            check(flags)?;
            check(libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
            if kind == NetBackendKind::Tap {
                let size: libc::c_int = HDR_LEN as libc::c_int;
                check(libc::ioctl(raw, TUNSETVNETHDRSZ, &size))?;
            }
        }
        Port::set_offloads_on(raw, kind, 0)?;
        Ok(Port { fd, kind })
    }

    pub fn raw(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Lets the tap hand the guest what its negotiated features accept (checksums left
    /// to it, large segments).
    pub fn set_offloads(&self, guest_features: u64) -> std::io::Result<()> {
        Port::set_offloads_on(self.fd.as_raw_fd(), self.kind, guest_features)
    }

    fn set_offloads_on(
        raw: std::os::fd::RawFd,
        kind: NetBackendKind,
        f: u64,
    ) -> std::io::Result<()> {
        if kind != NetBackendKind::Tap {
            return Ok(());
        }
        let mut flags = 0u32;
        if f & F_GUEST_CSUM != 0 {
            flags |= TUN_F_CSUM;
            if f & F_GUEST_TSO4 != 0 {
                flags |= TUN_F_TSO4;
            }
            if f & F_GUEST_TSO6 != 0 {
                flags |= TUN_F_TSO6;
            }
            if f & F_GUEST_ECN != 0 {
                flags |= TUN_F_TSO_ECN;
            }
            if f & F_GUEST_UFO != 0 {
                flags |= TUN_F_UFO;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes an integer argument.
        check(unsafe { libc::ioctl(raw, TUNSETOFFLOAD, flags as libc::c_ulong) })
    }

    /// Reads one frame into `buf` as header + frame (a datagram gets an empty header);
    /// returns its length with the header, or None when nothing is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let (at, extra) = match self.kind {
            NetBackendKind::Tap => (0, 0),
            NetBackendKind::Datagram => {
                buf[..HDR_LEN].fill(0);
                (HDR_LEN, HDR_LEN)
            }
        };
        // SAFETY: reading into our own buffer, bounded by its length.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf[at..].as_mut_ptr().cast(),
                buf.len() - at,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize + extra))
    }

    /// Sends one frame given as header + frame.
    pub fn send(&self, with_hdr: &[u8]) -> std::io::Result<()> {
        let bytes = match self.kind {
            NetBackendKind::Tap => with_hdr,
            NetBackendKind::Datagram => &with_hdr[HDR_LEN.min(with_hdr.len())..],
        };
        // SAFETY: writing from our own buffer, bounded by its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn kind(&self) -> NetBackendKind {
        self.kind
    }
}

/// A MAC address written `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

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
