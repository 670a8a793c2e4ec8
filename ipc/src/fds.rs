//! SCM_RIGHTS: sending file descriptors with bytes, receiving them as owned fds.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The kernel's per-message limit (SCM_MAX_FD).
pub const SCM_MAX_FD: usize = 253;

/// What one recvmsg returned.
pub struct Received {
    pub bytes: usize,
    pub fds: Vec<OwnedFd>,
    /// The peer sent more fds than `max_fds`: the kernel dropped (and closed) the rest.
    pub truncated: bool,
}

/// Receives bytes into `buf` and up to `max_fds` descriptors (close-on-exec).
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], max_fds: usize) -> std::io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    // Room for max_fds descriptors, computed like CMSG_SPACE.
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((max_fds.max(1) * std::mem::size_of::<RawFd>()) as u32) };
    let mut cmsg = vec![0u8; space as usize];
    let msg = loop {
        match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(std::io::Error::from)?,
        }
    };
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel just installed this descriptor for us.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
    }
    Ok(Received {
        bytes: msg.bytes,
        truncated: msg.flags.contains(MsgFlags::MSG_CTRUNC),
        fds,
    })
}

/// Sends `bytes` with `fds` attached to their first byte; returns how many bytes went out.
pub fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[BorrowedFd]) -> std::io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(
            sock,
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(std::io::Error::from),
        }
    }
}
