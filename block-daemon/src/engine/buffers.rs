//! A read's or write's buffers: the guest's own segments as iovecs, or, when O_DIRECT
//! cannot use them as they are, an aligned bounce buffer and the copies to and from it.

use crate::disk::Disk;
use crate::formats::direct::AlignedBuf;
use crate::request::{Kind, Request, Segment};

/// The segments as iovecs (they address guest memory the caller keeps mapped).
pub fn iovecs(segs: &[Segment]) -> Vec<libc::iovec> {
    segs.iter()
        .map(|s| libc::iovec {
            iov_base: s.ptr.cast(),
            iov_len: s.len,
        })
        .collect()
}

/// Copies `bytes` into the guest segments, in order.
pub fn copy_to_guest(segs: &[Segment], bytes: &[u8]) {
    let mut done = 0;
    for s in segs {
        if done == bytes.len() {
            break;
        }
        let n = s.len.min(bytes.len() - done);
        // SAFETY: the segment lies in the guest RAM mapping (request::parse) and n <= len.
        unsafe { std::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), s.ptr, n) };
        done += n;
    }
}

/// Copies the guest segments into `bytes`.
pub fn copy_from_guest(segs: &[Segment], bytes: &mut [u8]) {
    let mut done = 0;
    for s in segs {
        if done == bytes.len() {
            break;
        }
        let n = s.len.min(bytes.len() - done);
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(s.ptr, bytes[done..].as_mut_ptr(), n) };
        done += n;
    }
}

/// True when O_DIRECT cannot use the guest's buffers as they are.
pub fn needs_bounce(disk: &Disk, segs: &[Segment]) -> bool {
    disk.direct_alignment().is_some_and(|a| {
        segs.iter()
            .any(|s| !(s.ptr as usize).is_multiple_of(a) || s.len % a != 0)
    })
}

/// A read or write's buffers: the guest's segments, or an aligned bounce buffer.
pub struct DataBuffers {
    pub iovecs: Vec<libc::iovec>,
    /// For a bounced read: the guest segments to copy the data into on completion.
    pub bounce: Option<(AlignedBuf, Vec<Segment>)>,
}

// SAFETY: the iovecs point into the guest RAM mapping or the owned bounce buffer.
unsafe impl Send for DataBuffers {}

pub fn data_buffers(disk: &Disk, req: &Request) -> Option<DataBuffers> {
    if !needs_bounce(disk, &req.data) {
        return Some(DataBuffers {
            iovecs: iovecs(&req.data),
            bounce: None,
        });
    }
    let mut buf = AlignedBuf::new(req.data_len, disk.direct_alignment().unwrap_or(512))?;
    if req.kind == Kind::Write {
        copy_from_guest(&req.data, &mut buf.as_mut_slice()[..req.data_len]);
    }
    let iovecs = vec![libc::iovec {
        iov_base: buf.as_ptr().cast(),
        iov_len: req.data_len,
    }];
    Some(DataBuffers {
        iovecs,
        bounce: Some((buf, req.data.clone())),
    })
}

impl DataBuffers {
    /// After a bounced read: the data goes to the guest.
    pub fn finish_read(&mut self, len: usize) {
        if let Some((buf, segs)) = &mut self.bounce {
            copy_to_guest(segs, &buf.as_mut_slice()[..len]);
        }
    }
}
