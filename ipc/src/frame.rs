//! Frames: an 8-byte header (payload length, fd count, both u32 little-endian) and the
//! payload. The fds ride on the header's bytes, which are read on their own, so they can
//! never be mistaken for the next frame's.

use std::io::Read;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crate::error::IpcError;
use crate::fds::{recv_with_fds, send_with_fds};

/// Largest payload accepted (the biggest message, a VM launch, is far smaller).
pub const MAX_FRAME: usize = 1 << 20;
/// Most fds one frame may carry: a block daemon's open of the deepest chain (64 images)
/// with the most dirty bitmaps (64) and its listener and counters needs 130. Within the
/// kernel's SCM_MAX_FD (253).
pub const MAX_FDS: usize = 192;
const HEADER: usize = 8;

pub fn write_frame(
    stream: &UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd],
) -> Result<(), IpcError> {
    if payload.len() > MAX_FRAME {
        return Err(IpcError::FrameTooLarge {
            len: payload.len() as u64,
            max: MAX_FRAME,
        });
    }
    if fds.len() > MAX_FDS {
        return Err(IpcError::TooManyFds { max: MAX_FDS });
    }
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&(fds.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    let mut sent = send_with_fds(stream.as_raw_fd(), &frame, fds)?;
    while sent < frame.len() {
        let n = send_with_fds(stream.as_raw_fd(), &frame[sent..], &[])?;
        if n == 0 {
            return Err(IpcError::Closed);
        }
        sent += n;
    }
    Ok(())
}

/// A received frame: its payload and the fds that came with it.
pub struct Frame {
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Reads one frame; `Ok(None)` when the peer closed cleanly between frames.
pub fn read_frame(stream: &UnixStream) -> Result<Option<Frame>, IpcError> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    let mut fds = Vec::new();
    while got < HEADER {
        let r = recv_with_fds(stream.as_raw_fd(), &mut header[got..], MAX_FDS)?;
        fds.extend(r.fds);
        if r.truncated || fds.len() > MAX_FDS {
            return Err(IpcError::TooManyFds { max: MAX_FDS });
        }
        if r.bytes == 0 {
            return if got == 0 && fds.is_empty() {
                Ok(None)
            } else {
                Err(IpcError::Truncated)
            };
        }
        got += r.bytes;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let declared_fds = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_FRAME {
        return Err(IpcError::FrameTooLarge {
            len: len as u64,
            max: MAX_FRAME,
        });
    }
    if declared_fds != fds.len() {
        return Err(IpcError::FdMismatch {
            got: fds.len(),
            expected: declared_fds,
        });
    }
    let mut payload = vec![0u8; len];
    let mut reader = stream;
    reader
        .read_exact(&mut payload)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => IpcError::Truncated,
            _ => IpcError::Io(e),
        })?;
    Ok(Some(Frame { payload, fds }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn round_trip_with_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        write_frame(&a, b"hello", &[file.as_fd(), file.as_fd()]).unwrap();
        write_frame(&a, b"", &[]).unwrap();
        let f = read_frame(&b).unwrap().unwrap();
        assert_eq!((f.payload.as_slice(), f.fds.len()), (&b"hello"[..], 2));
        let f = read_frame(&b).unwrap().unwrap();
        assert_eq!((f.payload.len(), f.fds.len()), (0, 0));
        drop(a);
        assert!(read_frame(&b).unwrap().is_none());
    }

    #[test]
    fn oversized_length_is_rejected_without_allocating() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_le_bytes()).unwrap();
        a.write_all(&0u32.to_le_bytes()).unwrap();
        assert!(matches!(
            read_frame(&b),
            Err(IpcError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn peer_hanging_up_mid_frame_is_truncation() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&100u32.to_le_bytes()).unwrap();
        a.write_all(&0u32.to_le_bytes()).unwrap();
        a.write_all(b"only part").unwrap();
        drop(a);
        assert!(matches!(read_frame(&b), Err(IpcError::Truncated)));
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[1, 0]).unwrap();
        drop(a);
        assert!(matches!(read_frame(&b), Err(IpcError::Truncated)));
    }

    #[test]
    fn undeclared_fds_are_rejected_and_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        // A header that declares no fds, sent with one.
        let mut frame = 0u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&0u32.to_le_bytes());
        send_with_fds(a.as_raw_fd(), &frame, &[file.as_fd()]).unwrap();
        assert!(matches!(
            read_frame(&b),
            Err(IpcError::FdMismatch {
                got: 1,
                expected: 0
            })
        ));
    }

    #[test]
    fn too_many_fds_are_dropped_by_the_kernel_and_rejected() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let many: Vec<BorrowedFd> = (0..MAX_FDS + 10).map(|_| file.as_fd()).collect();
        let mut frame = 0u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&((MAX_FDS + 10) as u32).to_le_bytes());
        send_with_fds(a.as_raw_fd(), &frame, &many).unwrap();
        assert!(matches!(read_frame(&b), Err(IpcError::TooManyFds { .. })));
    }

    #[test]
    fn writer_refuses_oversized_frames() {
        let (a, _b) = UnixStream::pair().unwrap();
        let big = vec![0u8; MAX_FRAME + 1];
        assert!(matches!(
            write_frame(&a, &big, &[]),
            Err(IpcError::FrameTooLarge { .. })
        ));
    }
}
