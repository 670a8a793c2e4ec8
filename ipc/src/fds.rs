//! SCM_RIGHTS: sending file descriptors with bytes, receiving them as owned fds.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// The kernel's per-message limit (SCM_MAX_FD).
pub const SCM_MAX_FD: usize = 253;

/// What one recvmsg returned.
pub struct Received {
    pub bytes: usize,
    pub fds: Vec<OwnedFd>,
    /// The peer sent more fds than `max_fds`: the kernel dropped (and closed) the rest.
    pub truncated: bool,
}

/// Receives bytes into `buf` and up to `max_fds` descriptors (close-on-exec). Every fd
/// the kernel installed is returned owned, also when the peer sent more than fit (the
/// kernel closes those): walking the control messages by hand, because nix refuses to
/// when the buffer was truncated, which would leak the ones that did arrive. With
/// `max_fds` 0 no fd is installed at all (`truncated` says whether some came).
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], max_fds: usize) -> std::io::Result<Received> {
    let fd_bytes = max_fds * std::mem::size_of::<RawFd>();
    let space = if fd_bytes == 0 {
        0
    } else {
        // SAFETY: CMSG_SPACE is a pure size computation.
        unsafe { libc::CMSG_SPACE(fd_bytes as u32) as usize }
    };
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut cmsg_buf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if space > 0 {
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
    }
    let n = loop {
        // SAFETY: msg describes valid, writable buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays inside msg_control/msg_controllen as the kernel set
    // them; SCM_RIGHTS payloads are arrays of ints the kernel installed for us.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        bytes: n,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// How many of this process's fds refer to `path` (other tests open other files).
    fn open_fds_to(path: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    #[test]
    fn more_fds_than_room_keeps_what_arrived_and_leaks_nothing() {
        let (a, b) = UnixStream::pair().unwrap();
        let path = std::env::temp_dir().join(format!("ipc-fds-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let many: Vec<BorrowedFd> = (0..40).map(|_| f.as_fd()).collect();
        send_with_fds(a.as_raw_fd(), b"x", &many).unwrap();
        let mut buf = [0u8; 4];
        let r = recv_with_fds(b.as_raw_fd(), &mut buf, 4).unwrap();
        assert_eq!((r.bytes, r.fds.len(), r.truncated), (1, 4, true));
        drop(r);
        assert_eq!(open_fds_to(&path), 1, "fds leaked");
        // No room at all: the bytes come, no fd is installed, and the loss is said.
        send_with_fds(a.as_raw_fd(), b"y", &many[..3]).unwrap();
        let r = recv_with_fds(b.as_raw_fd(), &mut buf, 0).unwrap();
        assert_eq!((r.bytes, r.fds.len(), r.truncated), (1, 0, true));
        assert_eq!(open_fds_to(&path), 1, "an fd was installed");
        std::fs::remove_file(&path).unwrap();
    }
}
