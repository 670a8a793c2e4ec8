//! A typed, fd-passing connection over a Unix stream socket. Sends are serialised by a
//! lock so several threads may send; one thread receives.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use crate::error::IpcError;
use crate::frame::{read_frame, write_frame, Frame, MAX_FRAME};
use crate::messages::Message;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// A received message and the fds that came with it (closed when dropped).
#[derive(Debug)]
pub struct Received<M> {
    pub msg: M,
    pub fds: Vec<OwnedFd>,
}

#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    send_lock: Mutex<()>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Self {
        Connection {
            stream,
            send_lock: Mutex::new(()),
        }
    }

    pub fn pair() -> std::io::Result<(Connection, Connection)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Connection::new(a), Connection::new(b)))
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends `msg` with exactly the fds it declares.
    pub fn send<M: Message>(&self, msg: &M, fds: &[BorrowedFd]) -> Result<(), IpcError> {
        if fds.len() != msg.fd_count() {
            return Err(IpcError::FdMismatch {
                got: fds.len(),
                expected: msg.fd_count(),
            });
        }
        let payload = bincode::serde::encode_to_vec(msg, config())
            .map_err(|e| IpcError::Encode(e.to_string()))?;
        let _guard = self.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        write_frame(&self.stream, &payload, fds)
    }

    /// Receives the next message; `Ok(None)` once the peer closed cleanly.
    pub fn recv<M: Message>(&self) -> Result<Option<Received<M>>, IpcError> {
        let Some(Frame { payload, fds }) = read_frame(&self.stream)? else {
            return Ok(None);
        };
        let (msg, used): (M, usize) = bincode::serde::decode_from_slice(&payload, config())
            .map_err(|e| IpcError::Decode(e.to_string()))?;
        if used != payload.len() {
            return Err(IpcError::Decode(format!(
                "{} trailing bytes after the message",
                payload.len() - used
            )));
        }
        if fds.len() != msg.fd_count() {
            // `fds` is dropped here: nothing the peer sent stays open.
            return Err(IpcError::FdMismatch {
                got: fds.len(),
                expected: msg.fd_count(),
            });
        }
        Ok(Some(Received { msg, fds }))
    }

    /// Wakes a thread blocked in `recv` on this connection (it then sees the close).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;
    use std::os::fd::AsFd;

    fn launch(initrd: bool) -> ToVmm {
        ToVmm {
            id: 7,
            request: VmmRequest::Launch(LaunchConfig {
                memory_mib: 256,
                cpus: 2,
                max_cpus: 4,
                added_cpus: vec![3],
                cmdline: "scenario=poweroff".into(),
                kernel_path: "/k".into(),
                initrd_path: initrd.then(|| "/i".into()),
                serial: SerialSink::None,
                start_paused: true,
                no_shutdown: false,
                disks: vec![],
                nics: vec![],
                incoming: false,
                upgrade: None,
                balloon: None,
                memory_hotplug: None,
                dimms: vec![],
                cpu: Default::default(),
            }),
        }
    }

    #[test]
    fn messages_round_trip_with_their_fds() {
        let (a, b) = Connection::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        // /dev/kvm, the kernel, the initrd.
        a.send(&launch(true), &[f.as_fd(), f.as_fd(), f.as_fd()])
            .unwrap();
        let r: Received<ToVmm> = b.recv().unwrap().unwrap();
        assert_eq!(r.msg, launch(true));
        assert_eq!(r.fds.len(), 3);
        b.send(
            &FromVmm::Response {
                id: 7,
                result: Err(RemoteError::generic("no")),
            },
            &[],
        )
        .unwrap();
        let r: Received<FromVmm> = a.recv().unwrap().unwrap();
        assert!(matches!(
            r.msg,
            FromVmm::Response {
                id: 7,
                result: Err(_)
            }
        ));
    }

    #[test]
    fn sender_must_attach_the_declared_fds() {
        let (a, _b) = Connection::pair().unwrap();
        assert!(matches!(
            a.send(&launch(false), &[]),
            Err(IpcError::FdMismatch {
                got: 0,
                expected: 2
            })
        ));
    }

    #[test]
    fn fds_a_message_does_not_declare_are_rejected() {
        let (a, b) = Connection::pair().unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        // A well-formed frame whose message (Stop) declares no fds, sent with one.
        let payload = bincode::serde::encode_to_vec(
            ToVmm {
                id: 1,
                request: VmmRequest::Stop,
            },
            config(),
        )
        .unwrap();
        write_frame(a.stream(), &payload, &[f.as_fd()]).unwrap();
        assert!(matches!(
            b.recv::<ToVmm>(),
            Err(IpcError::FdMismatch {
                got: 1,
                expected: 0
            })
        ));
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        let (a, b) = Connection::pair().unwrap();
        write_frame(a.stream(), &[0xff; 64], &[]).unwrap();
        assert!(matches!(b.recv::<ToVmm>(), Err(IpcError::Decode(_))));
        // A huge declared string length inside a small frame is bounded by the limit.
        let mut evil = vec![0u8, 0xfd];
        evil.extend_from_slice(&u64::MAX.to_le_bytes());
        write_frame(a.stream(), &evil, &[]).unwrap();
        assert!(b.recv::<FromVmm>().is_err());
    }

    #[test]
    fn clean_close_is_none() {
        let (a, b) = Connection::pair().unwrap();
        drop(a);
        assert!(b.recv::<ToVmm>().unwrap().is_none());
    }
}
