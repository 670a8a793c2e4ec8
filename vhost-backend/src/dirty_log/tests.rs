//! The dirty log: the bitmap itself, the walk of a completed chain, the used ring fields
//! of the notification calls, and a real `vhost::vhost_user::Frontend` driving a device
//! that fills its chains' writable buffers, with and without F_LOG_ALL, over a socket
//! pair against `serve_stream`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::serve::tests::{memfd, Recorder};
use crate::serve::{serve_stream, ServeError};
use crate::vring::Vring;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// The pages whose bits are set in `size` bytes of `file` from `offset`.
fn set_pages(file: &File, offset: u64, size: usize) -> Vec<u64> {
    let mut bytes = vec![0u8; size];
    file.read_exact_at(&mut bytes, offset).unwrap();
    (0..size as u64 * 8)
        .filter(|p| bytes[(p / 8) as usize] & (1 << (p % 8)) != 0)
        .collect()
}

#[test]
fn bits_are_set_per_4k_page_low_bit_first_and_never_outside_the_log() {
    // A log of 3 bytes (24 pages) at an offset that is not page aligned, with bytes of
    // the file around it that must stay as they are.
    let file = memfd(8192);
    file.write_all_at(&[0x55; 8192], 0).unwrap();
    let offset = 4096 + 7;
    file.write_all_at(&[0; 3], offset).unwrap();
    let map = LogMap::map(&file, 3, offset).unwrap();
    assert_eq!(map.pages(), 24);
    let log = DirtyLog::default();
    log.set_map(map);
    assert!(!log.on() && log.marker().is_none(), "no F_LOG_ALL yet");
    log.set_log_all(true);
    assert!(log.on());
    let m = log.marker().unwrap();
    m.mark(0x9000, 1); // page 9: byte 1, bit 1
    m.mark(0x2fff, 2); // pages 2 and 3
    m.mark(0x10000, 0x3001); // pages 16 to 19
    m.mark(0x4000, 0); // nothing
    m.mark(0x17000, 0x2000); // page 23, and 24 beyond the log
    m.mark(u64::MAX - 10, 100); // far beyond, without overflowing
    drop(m);
    let mut bytes = [0u8; 3];
    file.read_exact_at(&mut bytes, offset).unwrap();
    assert_eq!(bytes, [0b0000_1100, 0b0000_0010, 0b1000_1111]);
    assert_eq!(
        set_pages(&file, offset, 3),
        vec![2, 3, 9, 16, 17, 18, 19, 23]
    );
    let mut around = [0u8; 2];
    file.read_exact_at(&mut around[..1], offset - 1).unwrap();
    file.read_exact_at(&mut around[1..], offset + 3).unwrap();
    assert_eq!(around, [0x55, 0x55], "a byte next to the log changed");
    // Without F_LOG_ALL nothing is marked, whatever the map.
    log.set_log_all(false);
    assert!(!log.on() && log.marker().is_none());
}

#[test]
fn logs_that_cannot_be_mapped_are_errors() {
    let file = memfd(4096);
    for (size, offset) in [(4097, 0), (1, 4096), (0, 0), (8, u64::MAX - 4)] {
        match LogMap::map(&file, size, offset) {
            Err(LogError::Outside { file: 4096, .. }) => {}
            other => panic!("size {size} at {offset}: {:?}", other.err()),
        }
    }
    // A descriptor that is not memory: an eventfd has no bytes to map.
    let ev = EventFd::new(0).unwrap();
    // SAFETY: dup of our own eventfd; the copy is owned by the File.
    let not_memory = File::from(unsafe { OwnedFd::from_raw_fd(libc::dup(ev.as_raw_fd())) });
    assert!(LogMap::map(&not_memory, 8, 0).is_err());
    // A log the frontend opened read-only cannot be written: refused by mmap.
    let read_only = File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    assert!(matches!(
        LogMap::map(&read_only, 8, 0),
        Err(LogError::Io(_))
    ));
}

const TABLE: u64 = 0x1000;

fn guest() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

fn put(mem: &GuestMemoryMmap, table: u64, i: u64, (addr, len, flags, next): (u64, u32, u16, u16)) {
    let d = Descriptor::new(addr, len, flags, next);
    mem.write_obj(d, GuestAddress(table + 16 * i)).unwrap();
}

fn writable(mem: &GuestMemoryMmap, head: u16) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    writable_buffers(mem, TABLE, 16, head, |a, l| out.push((a, l)));
    out
}

#[test]
fn a_completed_chain_is_walked_to_its_writable_buffers_as_far_as_it_is_valid() {
    let mem = guest();
    put(&mem, TABLE, 0, (0x4000, 16, F_NEXT, 3));
    put(&mem, TABLE, 3, (0x5000, 512, F_NEXT | F_WRITE, 5));
    put(&mem, TABLE, 5, (0x6000, 1, F_WRITE, 0));
    assert_eq!(writable(&mem, 0), vec![(0x5000, 512), (0x6000, 1)]);
    // The same chain in an indirect table.
    put(&mem, TABLE, 1, (0x8000, 48, F_INDIRECT, 0));
    put(&mem, 0x8000, 0, (0x4000, 16, F_NEXT, 1));
    put(&mem, 0x8000, 1, (0x5000, 512, F_NEXT | F_WRITE, 2));
    put(&mem, 0x8000, 2, (0x6000, 1, F_WRITE, 0));
    assert_eq!(writable(&mem, 1), writable(&mem, 0));
    // Broken: a next beyond the table ends the walk after what came before it (what
    // lies in memory past the table's 16 entries is not a descriptor).
    put(&mem, TABLE, 16, (0xe000, 8, F_WRITE, 0));
    put(&mem, TABLE, 40, (0xe000, 8, F_WRITE, 0));
    put(&mem, TABLE, 2, (0x7000, 8, F_NEXT | F_WRITE, 40));
    assert_eq!(writable(&mem, 2), vec![(0x7000, 8)]);
    // A head beyond the table, a nested indirect table, one outside guest memory.
    assert_eq!(writable(&mem, 16), Vec::<(u64, u32)>::new());
    put(&mem, TABLE, 4, (0x9000, 16, F_INDIRECT, 0));
    put(&mem, 0x9000, 0, (0x8000, 48, F_INDIRECT, 0));
    assert_eq!(writable(&mem, 4), Vec::<(u64, u32)>::new());
    put(&mem, TABLE, 6, (0xffff_0000, 32, F_INDIRECT, 0));
    assert_eq!(writable(&mem, 6), Vec::<(u64, u32)>::new());
    // A loop ends after MAX_CHAIN descriptors; more than 4 GiB of buffers ends earlier.
    put(&mem, TABLE, 7, (0xa000, 1, F_NEXT | F_WRITE, 8));
    put(&mem, TABLE, 8, (0xb000, 1, F_NEXT | F_WRITE, 7));
    assert_eq!(writable(&mem, 7).len(), virtio::MAX_CHAIN + 1);
    put(&mem, TABLE, 9, (0xa000, u32::MAX, F_NEXT | F_WRITE, 10));
    put(&mem, TABLE, 10, (0xb000, 1, F_WRITE, 0));
    assert_eq!(writable(&mem, 9), vec![(0xa000, u32::MAX)]);
}

/// With EVENT_IDX, asking for kicks writes avail_event, just past the used elements (on
/// the next page for this ring); not asking writes nothing. Without it, both write the
/// flags at the start of the used ring.
#[test]
fn the_notification_calls_mark_the_used_ring_field_they_write() {
    const QSIZE: u16 = 16;
    let used = 0x3f80; // avail_event at 0x3f80 + 4 + 8 * 16 = 0x4004: page 4
    let mem = guest();
    let file = memfd(2);
    let log = Arc::new(DirtyLog::default());
    log.set_map(LogMap::map(&file, 2, 0).unwrap());
    log.set_log_all(true);
    for (event_idx, asking, page) in [
        (true, false, None),
        (true, true, Some(4)),
        (false, false, Some(3)),
        (false, true, Some(3)),
    ] {
        file.write_all_at(&[0, 0], 0).unwrap();
        let mut ring = Vring::new(QSIZE, log.clone());
        ring.set_up_for_testing(QSIZE, (TABLE, 0x2000, used), event_idx)
            .unwrap();
        if asking {
            ring.enable_notification(&mem).unwrap();
        } else {
            ring.disable_notification(&mem).unwrap();
        }
        assert_eq!(
            set_pages(&file, 0, 2),
            Vec::from_iter(page),
            "event_idx {event_idx}, asking for kicks {asking}"
        );
    }
}

/// A used ring whose index (0x3ffe) and first element (0x4000) are on different pages;
/// guest memory of 16 pages under a log of 32. The chain's buffers are marked as far as
/// guest memory goes (the device wrote nothing beyond it); the readable one is not.
#[test]
fn add_used_marks_the_chain_buffers_in_guest_memory_the_used_element_and_the_index() {
    const QSIZE: u16 = 16;
    let mem = guest();
    let file = memfd(4);
    let log = Arc::new(DirtyLog::default());
    log.set_map(LogMap::map(&file, 4, 0).unwrap());
    log.set_log_all(true);
    put(&mem, TABLE, 0, (0x5000, 16, F_NEXT, 1));
    put(&mem, TABLE, 1, (0x8000, 0x1001, F_NEXT | F_WRITE, 2));
    put(&mem, TABLE, 2, (0xf000, 0x3000, F_NEXT | F_WRITE, 3));
    put(&mem, TABLE, 3, (0x18000, 0x1000, F_WRITE, 0));
    mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
    mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
    let mut ring = Vring::new(QSIZE, log.clone());
    ring.set_up_for_testing(QSIZE, (TABLE, 0x2000, 0x3ffc), false)
        .unwrap();
    let (head, _) = ring.pop_chain(&mem).unwrap();
    ring.add_used(&mem, head, 0).unwrap();
    assert_eq!(set_pages(&file, 0, 4), vec![3, 4, 8, 9, 15]);
}

// A frontend (the vhost crate's) and a device that completes chains over a socket pair.

const MEM_SIZE: u64 = 0x20000;
/// 32 pages of guest memory: 4 bytes of log.
const LOG_BYTES: u64 = 4;
/// Where the frontend has guest memory in its own address space.
const FRONTEND_BASE: u64 = 0x7000_0000;
const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HEADER: u64 = 0x5000;
/// A data buffer across pages 7 and 8, a status byte on page 10.
const DATA: (u64, u32) = (0x7800, 0x1000);
const STATUS: u64 = 0xa000;
const INDIRECT: u64 = 0xc000;
/// What a request writes, with the used ring on page 3.
const WRITTEN: [u64; 4] = [3, 7, 8, 10];
const WAIT: Duration = Duration::from_secs(5);

/// The guest's side: its memory (the memfd the frontend shares) and ring 0 in it.
struct Guest {
    mem: File,
    kick: EventFd,
    call: EventFd,
    offered: u16,
    completions: Receiver<usize>,
}

impl Guest {
    fn put(&self, table: u64, i: u64, (addr, len, flags, next): (u64, u32, u16, u16)) {
        let d = Descriptor::new(addr, len, flags, next);
        self.mem
            .write_all_at(vm_memory::ByteValued::as_slice(&d), table + 16 * i)
            .unwrap();
    }

    /// A block read: header, data, status, from descriptor 0 (directly or through an
    /// indirect table); waits for the device to complete it and be done with the kick
    /// (its last marks come after the used index moves).
    fn read_request(&mut self, indirect: bool) {
        let chain = [
            (HEADER, 16, F_NEXT, 1),
            (DATA.0, DATA.1, F_NEXT | F_WRITE, 2),
            (STATUS, 1, F_WRITE, 0),
        ];
        if indirect {
            self.put(DESC, 0, (INDIRECT, 48, F_INDIRECT, 0));
        }
        let table = if indirect { INDIRECT } else { DESC };
        for (i, d) in chain.into_iter().enumerate() {
            self.put(table, i as u64, d);
        }
        let slot = u64::from(self.offered % QSIZE);
        self.mem
            .write_all_at(&0u16.to_le_bytes(), AVAIL + 4 + 2 * slot)
            .unwrap();
        self.offered += 1;
        self.mem
            .write_all_at(&self.offered.to_le_bytes(), AVAIL + 2)
            .unwrap();
        self.kick.write(1).unwrap();
        self.completions.recv_timeout(WAIT).unwrap();
        let mut idx = [0u8; 2];
        self.mem.read_exact_at(&mut idx, USED + 2).unwrap();
        assert_eq!(
            u16::from_le_bytes(idx),
            self.offered,
            "the request was not completed"
        );
    }
}

/// A log the frontend shares: `bytes` of a memfd from `offset`.
struct SharedLog {
    file: File,
    offset: u64,
    bytes: u64,
}

impl SharedLog {
    fn new(bytes: u64, offset: u64) -> SharedLog {
        SharedLog {
            file: memfd(offset + bytes + 64),
            offset,
            bytes,
        }
    }

    fn region(&self) -> VhostUserDirtyLogRegion {
        VhostUserDirtyLogRegion {
            mmap_size: self.bytes,
            mmap_offset: self.offset,
            mmap_handle: self.file.as_raw_fd(),
        }
    }

    /// The dirty pages, and the log cleared (as the frontend does on each pass).
    fn take(&self) -> Vec<u64> {
        let pages = set_pages(&self.file, self.offset, self.bytes as usize);
        let len = self.file.metadata().unwrap().len();
        let mut all = vec![0u8; len as usize];
        self.file.read_exact_at(&mut all, 0).unwrap();
        let (start, end) = (self.offset as usize, (self.offset + self.bytes) as usize);
        let outside = all[..start].iter().chain(&all[end..]).any(|&b| b != 0);
        assert!(!outside, "a bit was set outside the log");
        self.file
            .write_all_at(&vec![0; self.bytes as usize], self.offset)
            .unwrap();
        pages
    }
}

struct Session {
    front: Frontend,
    served: Receiver<Result<(), ServeError>>,
    guest: Guest,
}

const BASE_FEATURES: u64 =
    virtio::features::VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

/// A frontend that has negotiated LOG_SHMFD, set up guest memory and not yet ring 0.
fn connect() -> Session {
    let (sock, backend) = UnixStream::pair().unwrap();
    let (tx, served) = mpsc::channel();
    let (device, completions) = Recorder::completing();
    std::thread::spawn(move || {
        let _ = tx.send(serve_stream(&device, backend));
    });
    let mut front = Frontend::from_stream(sock, 1);
    front.set_owner().unwrap();
    let offered = front.get_features().unwrap();
    assert_ne!(offered & LOG_ALL, 0, "F_LOG_ALL is offered");
    front.set_features(BASE_FEATURES).unwrap();
    let protocol = front.get_protocol_features().unwrap();
    assert!(protocol.contains(VhostUserProtocolFeatures::LOG_SHMFD));
    front
        .set_protocol_features(
            VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::LOG_SHMFD,
        )
        .unwrap();
    // Every message acknowledged, as QEMU waits for SET_FEATURES and SET_VRING_ADDR when
    // it turns logging on or off: a kick must not overtake them.
    front.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let mem = memfd(MEM_SIZE);
    front
        .set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: FRONTEND_BASE,
            mmap_offset: 0,
            mmap_handle: mem.as_raw_fd(),
        }])
        .unwrap();
    let guest = Guest {
        mem,
        kick: EventFd::new(0).unwrap(),
        call: EventFd::new(0).unwrap(),
        offered: 0,
        completions,
    };
    Session {
        front,
        served,
        guest,
    }
}

impl Session {
    /// Ring 0's addresses, with VHOST_VRING_F_LOG and `log_addr` when given.
    fn set_ring_addr(&self, log_addr: Option<u64>) {
        let flags = if log_addr.is_some() {
            VhostUserVringAddrFlags::VHOST_VRING_F_LOG.bits()
        } else {
            0
        };
        let config = VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags,
            desc_table_addr: FRONTEND_BASE + DESC,
            used_ring_addr: FRONTEND_BASE + USED,
            avail_ring_addr: FRONTEND_BASE + AVAIL,
            log_addr,
        };
        self.front.set_vring_addr(0, &config).unwrap();
    }

    fn start_ring(&mut self, log_addr: Option<u64>) {
        self.front.set_vring_num(0, QSIZE).unwrap();
        self.set_ring_addr(log_addr);
        self.front.set_vring_base(0, 0).unwrap();
        self.front.set_vring_call(0, &self.guest.call).unwrap();
        self.front.set_vring_kick(0, &self.guest.kick).unwrap();
        self.front.set_vring_enable(0, true).unwrap();
    }

    fn set_log(&self, log: &SharedLog) {
        self.front.set_log_base(0, Some(log.region())).unwrap();
    }

    /// The connection's end, after the frontend's last message.
    fn ended(self) -> Result<(), ServeError> {
        let Session { front, served, .. } = self;
        drop(front);
        served
            .recv_timeout(WAIT)
            .expect("the connection did not end")
    }
}

/// As QEMU migrates: the log first, then F_LOG_ALL in SET_FEATURES and the rings'
/// addresses again with VHOST_VRING_F_LOG (log_guest_addr: the used ring's guest
/// address); at the end, SET_FEATURES without it.
#[test]
fn while_log_all_is_acked_a_completion_marks_its_written_buffers_and_the_used_ring() {
    let mut s = connect();
    let log = SharedLog::new(LOG_BYTES, 0);
    s.start_ring(None);
    s.set_log(&log);
    s.guest.read_request(false);
    assert_eq!(
        log.take(),
        Vec::<u64>::new(),
        "a log without F_LOG_ALL is not written"
    );

    s.front.set_features(BASE_FEATURES | LOG_ALL).unwrap();
    s.set_ring_addr(Some(USED));
    s.guest.read_request(false);
    assert_eq!(log.take(), WRITTEN);
    s.guest.read_request(true);
    assert_eq!(log.take(), WRITTEN, "through an indirect table");

    s.front.set_features(BASE_FEATURES).unwrap();
    s.set_ring_addr(None);
    s.guest.read_request(false);
    assert_eq!(
        log.take(),
        Vec::<u64>::new(),
        "logging stopped with F_LOG_ALL"
    );
    assert!(s.ended().is_ok());
}

/// The spec's rule for VHOST_VRING_F_LOG: used ring writes are logged from
/// log_guest_addr (here on page 30), not the ring's address; without the flag, at the
/// ring's guest address. A new SET_LOG_BASE replaces the log (one at an unaligned
/// offset in its file), and the old one is not written again.
#[test]
fn used_ring_writes_are_logged_at_log_guest_addr_and_a_new_log_replaces_the_old() {
    let mut s = connect();
    s.front.set_features(BASE_FEATURES | LOG_ALL).unwrap();
    let first = SharedLog::new(LOG_BYTES, 0);
    s.set_log(&first);
    s.start_ring(Some(0x1e000));
    s.guest.read_request(false);
    assert_eq!(first.take(), vec![7, 8, 10, 30]);

    let second = SharedLog::new(LOG_BYTES, 4096 + 100);
    s.set_log(&second);
    s.set_ring_addr(None);
    s.guest.read_request(false);
    assert_eq!(second.take(), WRITTEN);
    assert_eq!(
        first.take(),
        Vec::<u64>::new(),
        "the replaced log was written"
    );
    assert!(s.ended().is_ok());
}

/// A log of one byte covers pages 0 to 7: what falls in it is marked, the rest is not
/// (no write beyond it), and the device goes on serving.
#[test]
fn a_log_too_small_for_guest_memory_marks_what_it_covers_and_nothing_beyond() {
    let mut s = connect();
    s.front.set_features(BASE_FEATURES | LOG_ALL).unwrap();
    let log = SharedLog::new(1, 0);
    s.set_log(&log);
    s.start_ring(Some(USED));
    s.guest.read_request(false);
    assert_eq!(log.take(), vec![3, 7]);
    s.guest.read_request(false);
    assert_eq!(log.take(), vec![3, 7]);
    assert!(s.ended().is_ok());
}

/// SET_LOG_BASE that cannot be honoured ends the connection with the reason (acking it
/// would leave pages unmarked): a log beyond its file, a descriptor that is not memory,
/// no descriptor at all.
#[test]
fn bad_log_bases_end_the_connection_with_an_error() {
    let log = SharedLog::new(LOG_BYTES, 0);
    let len = log.file.metadata().unwrap().len();
    let beyond = VhostUserDirtyLogRegion {
        mmap_size: len + 1,
        ..log.region()
    };
    let s = connect();
    assert!(s.front.set_log_base(0, Some(beyond)).is_err());
    match s.ended() {
        Err(ServeError::Connection(e)) => {
            assert!(e.to_string().contains("does not fit"), "{e}")
        }
        other => panic!("a log beyond its file: {other:?}"),
    }

    let ev = EventFd::new(0).unwrap();
    let not_memory = VhostUserDirtyLogRegion {
        mmap_size: LOG_BYTES,
        mmap_offset: 0,
        mmap_handle: ev.as_raw_fd(),
    };
    let s = connect();
    assert!(s.front.set_log_base(0, Some(not_memory)).is_err());
    assert!(matches!(s.ended(), Err(ServeError::Connection(_))));

    // Without a region the vhost crate's frontend sends the bare u64 of the kernel's
    // ioctl, with no descriptor.
    let s = connect();
    let _ = s.front.set_log_base(0, None);
    assert!(s.front.get_features().is_err(), "the connection went on");
    assert!(matches!(
        s.ended(),
        Err(ServeError::Connection(
            vhost::vhost_user::Error::IncorrectFds
        ))
    ));
}
