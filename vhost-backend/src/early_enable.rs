//! QEMU's early SET_VRING_ENABLE. QEMU 7.2's vhost-user-net frontend enables its first
//! queue pair while it sets the device up, before it has sent SET_FEATURES; the vhost
//! crate's `BackendReqHandler` answers a SET_VRING_ENABLE without
//! VHOST_USER_F_PROTOCOL_FEATURES acked with `InactiveFeature` and the connection ends.
//! So until the features are acked, the framework looks at each message before the vhost
//! crate does: an enable is taken here (its state is kept by the connection and applied
//! when the features arrive, and the frontend gets the REPLY_ACK it asked for); anything
//! else is left in the socket for the vhost crate.
//!
//! Looking is a MSG_PEEK of the next header, which is sound because the vhost crate never
//! reads ahead of the message it handles: in vhost 0.18, `BackendReqHandler::
//! handle_request` reads exactly one header (`Endpoint::recv_header`, a `recvmsg` loop
//! over an iovec of the header's 12 bytes) and then exactly the size that header
//! announces (`Endpoint::recv_data`, one `recvmsg` of that length), straight from the
//! socket, with no buffer of its own (src/vhost_user/connection.rs). Between two
//! `handle_request` calls the next byte in the socket is the first of the next header.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag};
use vhost::vhost_user::Error as VhostError;

const HEADER: usize = 12;
/// struct vhost_vring_state: index, state.
const BODY: usize = 8;

/// A SET_VRING_ENABLE taken off the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EarlyEnable {
    pub index: u32,
    /// 1 enables, 0 disables; anything else is the frontend's error.
    pub state: u32,
    pub need_reply: bool,
}

fn word(bytes: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(w)
}

/// The next message's header as it waits in the socket, if all of it is there (a
/// frontend writes a message at once; a header that arrives in pieces, or a hang-up, is
/// left to the vhost crate, which reads it whole or reports it).
fn peek_header(stream: &UnixStream) -> Option<[u8; HEADER]> {
    let mut header = [0u8; HEADER];
    loop {
        // SAFETY: receiving at most HEADER bytes into a local buffer of that size;
        // MSG_PEEK leaves them (and any descriptors sent with them) in the socket.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                header.as_mut_ptr().cast(),
                HEADER,
                libc::MSG_PEEK,
            )
        };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return (n == HEADER as isize).then_some(header);
    }
}

/// The next message's request (its name, or its number when it is none we know) and
/// body size, as it waits in the socket (None: no whole header there yet).
pub(crate) fn peek_request(stream: &UnixStream) -> Option<(String, u32)> {
    let header = peek_header(stream)?;
    let code = word(&header, 0);
    let name = match FrontendReq::try_from(code) {
        Ok(request) => format!("{request:?}"),
        Err(_) => code.to_string(),
    };
    Some((name, word(&header, 8)))
}

fn read_error(e: io::Error) -> VhostError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => VhostError::PartialMessage,
        _ => VhostError::SocketBroken(e),
    }
}

/// Takes the next message off `stream` if it is a well-formed SET_VRING_ENABLE; None
/// (nothing read) for anything else. Waits for the next message to begin.
pub(crate) fn take(stream: &UnixStream) -> Result<Option<EarlyEnable>, VhostError> {
    let Some(header) = peek_header(stream) else {
        return Ok(None);
    };
    let (request, flags, size) = (word(&header, 0), word(&header, 4), word(&header, 8));
    let version = flags & VhostUserHeaderFlag::VERSION.bits();
    if request != u32::from(FrontendReq::SET_VRING_ENABLE)
        || version != 1
        || flags & (VhostUserHeaderFlag::REPLY | VhostUserHeaderFlag::RESERVED_BITS).bits() != 0
        || size as usize != BODY
    {
        // Not ours, or malformed: the vhost crate answers it as it does any message.
        return Ok(None);
    }
    let mut message = [0u8; HEADER + BODY];
    (&*stream).read_exact(&mut message).map_err(read_error)?;
    Ok(Some(EarlyEnable {
        index: word(&message, HEADER),
        state: word(&message, HEADER + 4),
        need_reply: flags & VhostUserHeaderFlag::NEED_REPLY.bits() != 0,
    }))
}

/// Answers an enable that asked for a reply: 0 when it was taken, 1 when refused.
pub(crate) fn ack(stream: &UnixStream, taken: bool) -> Result<(), VhostError> {
    let mut reply = [0u8; HEADER + 8];
    let flags = VhostUserHeaderFlag::REPLY.bits() | 1;
    reply[0..4].copy_from_slice(&u32::from(FrontendReq::SET_VRING_ENABLE).to_le_bytes());
    reply[4..8].copy_from_slice(&flags.to_le_bytes());
    reply[8..12].copy_from_slice(&8u32.to_le_bytes());
    reply[12..20].copy_from_slice(&u64::from(!taken).to_le_bytes());
    (&*stream)
        .write_all(&reply)
        .map_err(VhostError::SocketBroken)
}
