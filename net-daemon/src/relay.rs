//! A relay between the frontend's vhost-user connection and the vhost-user-backend
//! request handler, for one reason: QEMU's virtio-net frontend enables the first queue
//! pair (VHOST_USER_SET_VRING_ENABLE) while the device is being set up, before it has
//! sent VHOST_USER_SET_FEATURES, and the vhost crate answers that with an error and drops
//! the connection. The relay holds such early enables back: it acknowledges them when
//! the frontend asked for a reply, and hands the last state of each ring to the handler
//! right after the features arrive. Every other message, with its file descriptors,
//! passes through unchanged in both directions.
//!
//! Only control messages take this path; guest data moves through shared memory and
//! eventfds.

use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HEADER: usize = 12;
/// Larger than any message of the vhost-user protocol (the vhost crate's own limit is
/// 4 KiB); a peer announcing more is not speaking vhost-user.
const MAX_BODY: usize = 64 << 10;
/// The vhost crate accepts at most 32 descriptors with one message.
const MAX_FDS: usize = 32;

const SET_FEATURES: u32 = 2;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;

const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;
/// Queue indices we remember enables for (virtio-net: 2 * pairs + control).
const MAX_RINGS: u32 = 1024;

/// One vhost-user message as read off a socket.
struct Message {
    request: u32,
    flags: u32,
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn u64_at(&self, offset: usize) -> Option<u64> {
        let bytes = self.body.get(offset..offset + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    fn u32_at(&self, offset: usize) -> Option<u32> {
        let bytes = self.body.get(offset..offset + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one message, or None at a clean end of stream (between messages).
fn read_message(stream: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER];
    let mut raw_fds = [-1 as RawFd; MAX_FDS];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < HEADER {
        let mut iov = [libc::iovec {
            iov_base: header[got..].as_mut_ptr().cast(),
            iov_len: HEADER - got,
        }];
        // SAFETY: the iovec points into `header`, which outlives the call.
        let (n, nfds) = unsafe { stream.recv_with_fds(&mut iov, &mut raw_fds) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        for &fd in raw_fds.iter().take(nfds) {
            // SAFETY: recvmsg just gave us these descriptors; nothing else owns them.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if n == 0 {
            return if got == 0 && fds.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8) as usize);
    if size > MAX_BODY {
        return Err(invalid(format!(
            "vhost-user message {request} announces {size} bytes"
        )));
    }
    let mut body = vec![0; size];
    (&*stream).read_exact(&mut body)?;
    Ok(Some(Message {
        request,
        flags,
        body,
        fds,
    }))
}

fn write_message(
    stream: &UnixStream,
    request: u32,
    flags: u32,
    body: &[u8],
    fds: &[OwnedFd],
) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(&request.to_le_bytes());
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(body);
    let raw: Vec<RawFd> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let sent = if raw.is_empty() {
        (&*stream).write(&bytes)?
    } else {
        stream
            .send_with_fds(&[&bytes[..]], &raw)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?
    };
    // The descriptors went with the first byte; the rest is plain data.
    (&*stream).write_all(&bytes[sent..])
}

/// What the relay knows of the connection so far.
#[derive(Default)]
struct Negotiation {
    features_set: bool,
    reply_ack: bool,
    /// Enables received before the features, last state per ring.
    held: Vec<(u32, u32)>,
}

impl Negotiation {
    fn hold(&mut self, index: u32, state: u32) {
        match self.held.iter_mut().find(|(i, _)| *i == index) {
            Some(entry) => entry.1 = state,
            None => self.held.push((index, state)),
        }
    }
}

/// Relays one frontend connection to `backend` (the handler's end) until either side
/// hangs up; then both are shut down so the other direction ends too.
pub fn run(frontend: UnixStream, backend: UnixStream) -> io::Result<()> {
    let frontend_writer = Arc::new(Mutex::new(frontend.try_clone()?));
    let (front_r, back_r) = (frontend.try_clone()?, backend.try_clone()?);
    let replies = {
        let writer = frontend_writer.clone();
        std::thread::Builder::new()
            .name("vhost-user relay".into())
            .spawn(move || {
                let result = copy_replies(&back_r, &writer);
                let _ = front_r.shutdown(std::net::Shutdown::Both);
                let _ = back_r.shutdown(std::net::Shutdown::Both);
                result
            })?
    };
    let result = forward_requests(&frontend, &backend, &frontend_writer);
    let _ = frontend.shutdown(std::net::Shutdown::Both);
    let _ = backend.shutdown(std::net::Shutdown::Both);
    let replies = replies
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")));
    result.and(replies)
}

fn copy_replies(backend: &UnixStream, frontend: &Mutex<UnixStream>) -> io::Result<()> {
    while let Some(msg) = read_message(backend)? {
        let out = frontend
            .lock()
            .map_err(|_| io::Error::other("relay lock"))?;
        write_message(&out, msg.request, msg.flags, &msg.body, &msg.fds)?;
    }
    Ok(())
}

fn forward_requests(
    frontend: &UnixStream,
    backend: &UnixStream,
    frontend_writer: &Mutex<UnixStream>,
) -> io::Result<()> {
    let mut state = Negotiation::default();
    while let Some(msg) = read_message(frontend)? {
        match msg.request {
            SET_PROTOCOL_FEATURES => {
                state.reply_ack = msg.u64_at(0).unwrap_or(0) & PROTOCOL_F_REPLY_ACK != 0;
            }
            SET_VRING_ENABLE if !state.features_set => {
                if let (Some(index), Some(enable)) = (msg.u32_at(0), msg.u32_at(4)) {
                    if index < MAX_RINGS {
                        log::debug!("ring {index} enable={enable} before the features: held");
                        state.hold(index, enable);
                        if state.reply_ack && msg.flags & FLAG_NEED_REPLY != 0 {
                            let out = frontend_writer
                                .lock()
                                .map_err(|_| io::Error::other("relay lock"))?;
                            write_message(
                                &out,
                                SET_VRING_ENABLE,
                                FLAG_VERSION | FLAG_REPLY,
                                &0u64.to_le_bytes(),
                                &[],
                            )?;
                        }
                        continue;
                    }
                }
                // Malformed or out of range: the handler rejects it with its own error.
            }
            _ => {}
        }
        write_message(backend, msg.request, msg.flags, &msg.body, &msg.fds)?;
        if msg.request == SET_FEATURES {
            state.features_set = true;
            let protocol = msg.u64_at(0).unwrap_or(0) & F_PROTOCOL_FEATURES != 0;
            for (index, enable) in std::mem::take(&mut state.held) {
                if protocol {
                    let mut body = [0u8; 8];
                    body[..4].copy_from_slice(&index.to_le_bytes());
                    body[4..].copy_from_slice(&enable.to_le_bytes());
                    write_message(backend, SET_VRING_ENABLE, FLAG_VERSION, &body, &[])?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn send(stream: &UnixStream, request: u32, flags: u32, body: &[u8]) {
        write_message(stream, request, flags, body, &[]).unwrap();
    }

    fn enable(index: u32, state: u32) -> Vec<u8> {
        [index.to_le_bytes(), state.to_le_bytes()].concat()
    }

    fn relay() -> (
        UnixStream,
        UnixStream,
        std::thread::JoinHandle<io::Result<()>>,
    ) {
        let (front_peer, front) = UnixStream::pair().unwrap();
        let (back, back_peer) = UnixStream::pair().unwrap();
        let handle = std::thread::spawn(move || run(front, back));
        (front_peer, back_peer, handle)
    }

    #[test]
    fn early_enables_are_acknowledged_held_and_replayed_after_the_features() {
        let (frontend, backend, handle) = relay();
        send(
            &frontend,
            SET_PROTOCOL_FEATURES,
            FLAG_VERSION,
            &PROTOCOL_F_REPLY_ACK.to_le_bytes(),
        );
        send(
            &frontend,
            SET_VRING_ENABLE,
            FLAG_VERSION | FLAG_NEED_REPLY,
            &enable(0, 1),
        );
        send(&frontend, SET_VRING_ENABLE, FLAG_VERSION, &enable(1, 1));
        // The frontend gets its ack from the relay; the handler saw only the protocol features.
        let ack = read_message(&frontend).unwrap().unwrap();
        assert_eq!(
            (ack.request, ack.flags, ack.body.clone()),
            (SET_VRING_ENABLE, FLAG_VERSION | FLAG_REPLY, vec![0; 8])
        );
        let first = read_message(&backend).unwrap().unwrap();
        assert_eq!(first.request, SET_PROTOCOL_FEATURES);
        let features = F_PROTOCOL_FEATURES | (1 << 32);
        send(
            &frontend,
            SET_FEATURES,
            FLAG_VERSION,
            &features.to_le_bytes(),
        );
        let got: Vec<(u32, Vec<u8>)> = (0..3)
            .map(|_| read_message(&backend).unwrap().unwrap())
            .map(|m| (m.request, m.body))
            .collect();
        assert_eq!(
            got,
            vec![
                (SET_FEATURES, features.to_le_bytes().to_vec()),
                (SET_VRING_ENABLE, enable(0, 1)),
                (SET_VRING_ENABLE, enable(1, 1)),
            ]
        );
        // After the features, enables pass straight through.
        send(&frontend, SET_VRING_ENABLE, FLAG_VERSION, &enable(0, 0));
        let m = read_message(&backend).unwrap().unwrap();
        assert_eq!((m.request, m.body), (SET_VRING_ENABLE, enable(0, 0)));
        drop(frontend);
        assert!(
            read_message(&backend).unwrap().is_none(),
            "hang-up reaches the handler"
        );
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn descriptors_and_replies_pass_through() {
        let (frontend, backend, handle) = relay();
        let (a, _b) = UnixStream::pair().unwrap();
        let fd = a.try_clone().unwrap();
        write_message(&frontend, 5, FLAG_VERSION, &[7; 40], &[OwnedFd::from(fd)]).unwrap();
        let m = read_message(&backend).unwrap().unwrap();
        assert_eq!((m.request, m.body.len(), m.fds.len()), (5, 40, 1));
        assert!(m.fds[0].as_raw_fd() >= 0);
        send(&backend, 1, FLAG_VERSION | FLAG_REPLY, &42u64.to_le_bytes());
        let r = read_message(&frontend).unwrap().unwrap();
        assert_eq!((r.request, r.body), (1, 42u64.to_le_bytes().to_vec()));
        drop(backend);
        assert!(read_message(&frontend).unwrap().is_none());
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn a_peer_that_hangs_up_mid_message_or_announces_too_much_ends_the_relay_with_an_error() {
        let (frontend, backend, handle) = relay();
        (&frontend)
            .write_all(&[SET_FEATURES as u8, 0, 0, 0, 1, 0])
            .unwrap();
        drop(frontend);
        assert!(handle.join().unwrap().is_err());
        assert!(read_message(&backend).unwrap().is_none());

        let (frontend, _backend, handle) = relay();
        let mut header = Vec::new();
        for w in [SET_FEATURES, FLAG_VERSION, u32::MAX] {
            header.extend_from_slice(&w.to_le_bytes());
        }
        (&frontend).write_all(&header).unwrap();
        let err = handle.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("announces"), "{err}");
    }
}
