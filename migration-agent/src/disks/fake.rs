//! A block daemon's end of a disk channel for the unit tests: an in-memory disk, what
//! its top image holds, the marks "guest writes" left, all served on a thread.

use std::io::Read;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use ipc::disk_channel::{reply, Request};
use parking_lot::Mutex;

#[derive(Default)]
pub struct FakeDisk {
    pub data: Vec<u8>,
    /// What the top image holds (empty: everything).
    pub allocated: Vec<Range<u64>>,
    /// Written since the last take, and taken and not handed out.
    pub marks: Vec<(u64, u64)>,
    taken: Vec<(u64, u64)>,
    /// Writes and zeroes are refused with this.
    pub refuse: Option<String>,
    pub flushes: u32,
}

impl FakeDisk {
    pub fn new(size: usize) -> Arc<Mutex<FakeDisk>> {
        Arc::new(Mutex::new(FakeDisk {
            data: vec![0; size],
            ..FakeDisk::default()
        }))
    }

    fn allocated(&self, offset: u64, len: u64) -> (bool, u64) {
        if self.allocated.is_empty() {
            return (true, len);
        }
        if let Some(r) = self.allocated.iter().find(|r| r.contains(&offset)) {
            return (true, (r.end - offset).min(len));
        }
        let next = self
            .allocated
            .iter()
            .map(|r| r.start)
            .filter(|&s| s > offset)
            .min();
        (false, next.map_or(len, |s| (s - offset).min(len)))
    }
}

/// Serves `disk` on a new channel; the agent's end.
pub fn serve(disk: Arc<Mutex<FakeDisk>>) -> OwnedFd {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        while let Ok(Some(request)) = Request::read_from(&mut ours) {
            let mut d = disk.lock();
            let w = &mut ours;
            let answered = match request {
                Request::Read { offset, len } => {
                    let (o, l) = (offset as usize, len as usize);
                    reply::read(w, &d.data[o..o + l])
                }
                Request::Allocated { offset, len } => {
                    let (a, run) = d.allocated(offset, len);
                    reply::allocated(w, a, run)
                }
                Request::Take => {
                    let marks = std::mem::take(&mut d.marks);
                    let bytes = marks.iter().map(|m| m.1).sum();
                    d.taken.extend(marks);
                    reply::bytes(w, bytes)
                }
                Request::Runs { max } => {
                    let n = d.taken.len().min(max as usize);
                    let runs: Vec<_> = d.taken.drain(..n).collect();
                    reply::runs(w, &runs)
                }
                Request::Pending => reply::bytes(w, d.marks.iter().map(|m| m.1).sum()),
                Request::Write { offset, len } => {
                    let mut buf = vec![0u8; len as usize];
                    if w.read_exact(&mut buf).is_err() {
                        return;
                    }
                    match d.refuse.clone() {
                        Some(why) => reply::refused(w, &why),
                        None => {
                            let o = offset as usize;
                            d.data[o..o + buf.len()].copy_from_slice(&buf);
                            reply::done(w)
                        }
                    }
                }
                Request::Zero { offset, len } => match d.refuse.clone() {
                    Some(why) => reply::refused(w, &why),
                    None => {
                        d.data[offset as usize..(offset + len) as usize].fill(0);
                        reply::done(w)
                    }
                },
                Request::Flush => {
                    d.flushes += 1;
                    reply::done(w)
                }
            };
            if answered.is_err() {
                return;
            }
        }
    });
    theirs.into()
}
