//! The NIC's host side: a tap queue (frames with the virtio-net header, so checksum and
//! segmentation offloads pass straight through) or a connected datagram socket (one
//! frame per datagram, no header: offloads are not offered on it). They were opened with
//! `ipc::host` (by the gateway, or by the daemon itself when it runs on its own); here
//! the daemon only configures and uses the fds it was given.

use std::os::fd::{AsRawFd, OwnedFd};

use ipc::NetBackendKind;
use virtio::net::{F_GUEST_CSUM, F_GUEST_ECN, F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_UFO};

use crate::frames::HDR_LEN;

// <linux/if_tun.h>
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_TSO_ECN: u32 = 0x08;
const TUN_F_UFO: u32 = 0x10;

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
