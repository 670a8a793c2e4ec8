//! In-flight tracking (vhost-user VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), split rings, for
//! any device that asks for it (`Device::tracks_inflight`).
//!
//! The region is shared memory the daemon creates (GET_INFLIGHT_FD) and the frontend keeps
//! and hands back to the next daemon (SET_INFLIGHT_FD), so it outlives a daemon that
//! crashes. Per queue, laid out as the vhost-user spec says:
//!
//! ```text
//! u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//! DescStateSplit desc[desc_num]:  u8 inflight; u8 padding[5]; u16 next; u64 counter;
//! ```
//!
//! A head is marked in flight (with the next counter value) when it is taken from the
//! available ring, before it is started. On completion it becomes the last batch, the
//! used ring is updated, and only then is it marked done and `used_idx` advanced. A
//! daemon that dies between those steps leaves the region saying which: on the next
//! connection, a `used_idx` behind the ring's means the last batch completed; every
//! other head still marked in flight is started again, oldest first.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};

use crate::shared_mapping::SharedMapping;

const VERSION: u16 = 1;
const HEADER: usize = 16;
const DESC_STATE: usize = 16;
/// Each queue's region starts on this boundary.
const ALIGN: usize = 64;

/// Bytes of one queue's region.
pub fn queue_region_size(queue_size: u16) -> usize {
    (HEADER + DESC_STATE * usize::from(queue_size)).div_ceil(ALIGN) * ALIGN
}

#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("inflight region: {0}")]
    Io(#[from] std::io::Error),
    #[error("inflight region of {got} bytes, {need} needed for {queues} queues of {size}")]
    TooSmall {
        got: u64,
        need: u64,
        queues: u16,
        size: u16,
    },
}

/// The whole shared region, mapped. It is accessed with volatile operations; the daemon
/// touches each queue's part from the one thread that serves that queue.
pub struct InflightRegion {
    map: SharedMapping,
    num_queues: u16,
    queue_size: u16,
    file: File,
}

impl InflightRegion {
    /// A new, zeroed region (GET_INFLIGHT_FD) with every queue's header written.
    pub fn create(num_queues: u16, queue_size: u16) -> Result<InflightRegion, InflightError> {
        let len = usize::from(num_queues) * queue_region_size(queue_size);
        // SAFETY: memfd_create with a valid C string.
        let fd = unsafe { libc::memfd_create(c"flotilla-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: fd was just created and is ours alone.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len as u64)?;
        let region = InflightRegion::map(file, 0, len as u64, num_queues, queue_size)?;
        for q in 0..num_queues {
            region.queue(q).init();
        }
        Ok(region)
    }

    /// Maps a region the frontend handed back (SET_INFLIGHT_FD).
    pub fn map(
        file: File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightRegion, InflightError> {
        let need = (usize::from(num_queues) * queue_region_size(queue_size)) as u64;
        let file_len = file.metadata()?.len();
        if size < need || file_len < offset.saturating_add(need) || num_queues == 0 {
            return Err(InflightError::TooSmall {
                got: size.min(file_len.saturating_sub(offset)),
                need,
                queues: num_queues,
                size: queue_size,
            });
        }
        Ok(InflightRegion {
            map: SharedMapping::new(&file, offset, need as usize)?,
            num_queues,
            queue_size,
            file,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Queue `q`'s part (q < num_queues).
    pub fn queue(&self, q: u16) -> InflightQueue {
        let q = q.min(self.num_queues.saturating_sub(1));
        let offset = usize::from(q) * queue_region_size(self.queue_size);
        InflightQueue {
            // SAFETY: offset + region size <= len (the mapping's length).
            base: unsafe { self.map.ptr().add(offset) },
            desc_num: self.queue_size,
        }
    }
}

/// One queue's tracking. Valid while its region is mapped (the vring holding it keeps
/// the region alive).
#[derive(Clone, Copy)]
pub struct InflightQueue {
    base: *mut u8,
    desc_num: u16,
}

// SAFETY: `base` points into shared memory reached with volatile operations only, from
// the one thread that serves the queue (see InflightRegion).
unsafe impl Send for InflightQueue {}

/// What recovery found: heads to start again, oldest first.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    pub resubmit: Vec<u16>,
    /// Where the available ring continues: the ring's used index plus the heads in flight.
    pub next_avail: u16,
}

impl InflightQueue {
    fn read<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: every offset used is inside this queue's region (bounded by desc_num).
        unsafe { std::ptr::read_volatile(self.base.add(offset).cast::<T>()) }
    }

    fn write<T: Copy>(&self, offset: usize, v: T) {
        // SAFETY: as in read.
        unsafe { std::ptr::write_volatile(self.base.add(offset).cast::<T>(), v) }
    }

    fn desc(&self, head: u16) -> usize {
        HEADER + DESC_STATE * usize::from(head)
    }

    fn init(&self) {
        for i in 0..HEADER + DESC_STATE * usize::from(self.desc_num) {
            self.write::<u8>(i, 0);
        }
        self.write::<u16>(8, VERSION);
        self.write::<u16>(10, self.desc_num);
    }

    fn valid_head(&self, head: u16) -> bool {
        head < self.desc_num
    }

    /// `head` was taken from the available ring: in flight from now on.
    pub fn start(&self, head: u16, counter: u64) {
        if !self.valid_head(head) {
            return;
        }
        let d = self.desc(head);
        self.write::<u64>(d + 8, counter);
        fence(Ordering::SeqCst);
        self.write::<u8>(d, 1);
    }

    /// Before `head`'s used-ring entry is written: it is the batch a crash would find.
    /// Heads complete one at a time (each with its own `end_complete`), so a batch is
    /// one head and `next` stays unused.
    pub fn begin_complete(&self, head: u16) {
        if !self.valid_head(head) {
            return;
        }
        self.write::<u16>(12, head);
        fence(Ordering::SeqCst);
    }

    /// After the used ring says `used_idx`: `head` is done.
    pub fn end_complete(&self, head: u16, used_idx: u16) {
        fence(Ordering::SeqCst);
        if self.valid_head(head) {
            self.write::<u8>(self.desc(head), 0);
        }
        fence(Ordering::SeqCst);
        self.write::<u16>(14, used_idx);
    }

    /// On a new connection. `ring_used`: the used index in the guest's used ring.
    /// Returns None (after resetting the region) if it was made for another queue size.
    pub fn recover(&self, ring_used: u16) -> Option<(Recovered, u64)> {
        if self.read::<u16>(10) != self.desc_num || self.read::<u16>(8) != VERSION {
            self.init();
            self.write::<u16>(14, ring_used);
            return None;
        }
        if self.read::<u16>(14) != ring_used {
            // The daemon died after the used ring took the last batch (one head) but
            // before the region said so: that head is complete. Only that one: the head
            // completed before it may be in flight again by now (drivers reuse a freed
            // head first), and clearing it would lose that request.
            let head = self.read::<u16>(12);
            if self.valid_head(head) {
                self.write::<u8>(self.desc(head), 0);
            }
            self.write::<u16>(14, ring_used);
        }
        let mut inflight: Vec<(u64, u16)> = (0..self.desc_num)
            .filter(|&h| self.read::<u8>(self.desc(h)) == 1)
            .map(|h| (self.read::<u64>(self.desc(h) + 8), h))
            .collect();
        inflight.sort_unstable();
        let counter = inflight.last().map_or(0, |(c, _)| c + 1);
        Some((
            Recovered {
                next_avail: ring_used.wrapping_add(inflight.len() as u16),
                resubmit: inflight.into_iter().map(|(_, h)| h).collect(),
            },
            counter,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_round_trip_through_a_new_mapping() {
        assert_eq!(queue_region_size(256), 4160);
        let r = InflightRegion::create(2, 8).unwrap();
        assert_eq!(r.len(), 2 * queue_region_size(8));
        let q1 = r.queue(1);
        q1.start(3, 10);
        q1.start(5, 11);
        q1.start(1, 12);
        // 5 completes fully; 1 gets as far as the used ring (idx 2) and the daemon dies.
        q1.begin_complete(5);
        q1.end_complete(5, 1);
        q1.begin_complete(1);
        // A new daemon maps the same file.
        let file = r.file().try_clone().unwrap();
        let again = InflightRegion::map(file, 0, r.len() as u64, 2, 8).unwrap();
        let (found, counter) = again.queue(1).recover(2).unwrap();
        assert_eq!(
            found,
            Recovered {
                resubmit: vec![3],
                next_avail: 3
            }
        );
        assert_eq!(counter, 11);
        // Queue 0 saw nothing.
        let (none, _) = again.queue(0).recover(7).unwrap();
        assert_eq!(none.resubmit, Vec::<u16>::new());
        assert_eq!(none.next_avail, 7);
    }

    #[test]
    fn a_crash_before_the_used_ring_resubmits_in_counter_order() {
        let r = InflightRegion::create(1, 16).unwrap();
        let q = r.queue(0);
        q.start(9, 100);
        q.start(2, 101);
        q.start(4, 99);
        q.begin_complete(2); // died before the used ring moved
        let (found, counter) = q.recover(0).unwrap();
        assert_eq!(found.resubmit, vec![4, 9, 2]);
        assert_eq!(found.next_avail, 3);
        assert_eq!(counter, 102);
    }

    /// The driver reuses the head it got back last; the crash lands after the next
    /// completion reached the used ring. The reused head is still in flight.
    #[test]
    fn a_crash_after_the_used_ring_keeps_a_reused_head_in_flight() {
        let r = InflightRegion::create(1, 16).unwrap();
        let q = r.queue(0);
        q.start(7, 0);
        q.start(3, 1);
        q.begin_complete(7);
        q.end_complete(7, 1);
        q.start(7, 2); // the driver's next request, on the head it just got back
        q.begin_complete(3);
        // The used ring says 2; the daemon died before end_complete(3, 2).
        let (found, counter) = q.recover(2).unwrap();
        assert_eq!(
            found,
            Recovered {
                resubmit: vec![7],
                next_avail: 3
            },
            "3 completed; 7 (taken again) is in flight"
        );
        assert_eq!(counter, 3);
    }

    /// The region's bytes as the file holds them.
    fn bytes(r: &InflightRegion) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; r.len()];
        r.file().read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    #[test]
    fn bad_regions() {
        let r = InflightRegion::create(1, 16).unwrap();
        let len = r.len() as u64;
        let file = || r.file().try_clone().unwrap();
        // Too small for what the frontend now says: a typed error saying what is missing.
        match InflightRegion::map(file(), 0, len, 4, 256) {
            Err(InflightError::TooSmall {
                got,
                need,
                queues,
                size,
            }) => assert_eq!(
                (got, need, queues, size),
                (len, 4 * queue_region_size(256) as u64, 4, 256)
            ),
            other => panic!("4 queues of 256 in {len} bytes: {:?}", other.err()),
        }
        // An offset that leaves too little of the file, and no queues at all.
        match InflightRegion::map(file(), 64, len, 1, 16) {
            Err(InflightError::TooSmall { got, .. }) => assert_eq!(got, len - 64),
            other => panic!("offset 64: {:?}", other.err()),
        }
        assert!(matches!(
            InflightRegion::map(file(), 0, len, 0, 16),
            Err(InflightError::TooSmall { queues: 0, .. })
        ));
        // None of that touched the region: it is still a fresh one.
        let untouched = bytes(&r);
        assert_eq!(untouched, bytes(&InflightRegion::create(1, 16).unwrap()));

        // Garbage heads are ignored, never out of bounds: starting or beginning to
        // complete one writes nothing; ending it only records the used index.
        let q = r.queue(0);
        q.start(999, 1);
        q.begin_complete(999);
        assert_eq!(bytes(&r), untouched, "a garbage head changed the region");
        q.end_complete(999, 1);
        let after = bytes(&r);
        let changed: Vec<usize> = (0..after.len())
            .filter(|&i| after[i] != untouched[i])
            .collect();
        assert_eq!(
            changed,
            vec![14],
            "only the used index (bytes 14-15) may change"
        );
        let (found, counter) = q.recover(1).unwrap();
        assert_eq!((found.resubmit, found.next_avail, counter), (vec![], 1, 0));

        // A region of the right size made for another queue size: recovery resets it
        // (None), and from then on it is a clean region of the new size.
        let r16 = InflightRegion::create(1, 16).unwrap();
        r16.queue(0).start(3, 1);
        let other = InflightRegion::map(r16.file().try_clone().unwrap(), 0, len, 1, 8).unwrap();
        assert_eq!(other.queue(0).recover(5), None);
        let (found, counter) = other.queue(0).recover(5).unwrap();
        assert_eq!((found.resubmit, found.next_avail, counter), (vec![], 5, 0));
    }
}
