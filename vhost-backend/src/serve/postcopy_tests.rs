//! Postcopy over a socket pair, the vhost crate's `Frontend` against `serve_stream_with`:
//! the backend's userfaultfd really catches its own worker's touch of a page missing from
//! guest memory, the rings keep off guest memory until the frontend acknowledges the
//! registered table, END leaves memory ordinary again, and without /dev/userfaultfd
//! ADVISE fails while the connection goes on. The frontend and the backend are one
//! process here, so this test resolves the fault through the userfaultfd ADVISE gave it,
//! as the migration agent does through vmm-core's.
//!
//! These tests need /dev/userfaultfd (root here): they fail without it.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ipc::userfault::{self, Placed, DEVICE};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::desc::split::Descriptor;
use vmm_sys_util::eventfd::EventFd;

use super::tests::{memfd, Recorder};
use super::*;
use crate::postcopy::UserfaultDevice;

const MEM_SIZE: u64 = 0x10000;
const FRONTEND_BASE: u64 = 0x7000_0000;
const QSIZE: u16 = 16;
const PAGE: u64 = 4096;
/// Ring 0 and ring 1: descriptor table, available ring, used ring. The descriptor
/// tables are holes in the memfd until something places them.
const RINGS: [(u64, u64, u64); 2] = [(0x1000, 0x2000, 0x3000), (0x4000, 0x5000, 0x6000)];
/// The buffer ring 0's request offers the device to write.
const BUFFER: (u64, u32) = (0x8000, 512);
const F_WRITE: u16 = 2;
const WAIT: Duration = Duration::from_secs(5);
/// How long a touch that must wait is watched for not having gone through.
const STILL: Duration = Duration::from_millis(300);

fn userfaultfd_device() -> OwnedFd {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEVICE)
        .unwrap_or_else(|e| panic!("{DEVICE} is needed for the postcopy tests: {e}"));
    OwnedFd::from(file)
}

struct Session {
    front: Frontend,
    served: Receiver<Result<(), ServeError>>,
    mem: File,
    completions: Receiver<usize>,
    kicks: Vec<(EventFd, EventFd)>,
}

/// A frontend that has negotiated PAGEFAULT with a backend whose daemon holds
/// `userfault`, and the guest's memory with one request made available on each ring
/// (descriptor 0, whose table is not in memory yet).
fn connect(userfault: &UserfaultDevice) -> Session {
    let (sock, backend) = UnixStream::pair().unwrap();
    let (tx, served) = mpsc::channel();
    let (device, completions) = Recorder::completing();
    let queues = device.num_queues();
    let userfault = userfault.clone();
    std::thread::spawn(move || {
        let _ = tx.send(serve_stream_with(&device, backend, &userfault));
    });
    let mut front = Frontend::from_stream(sock, queues as u64);
    front.set_owner().unwrap();
    front.get_features().unwrap();
    front
        .set_features(
            virtio::features::VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        )
        .unwrap();
    let protocol = front.get_protocol_features().unwrap();
    assert!(
        protocol.contains(VhostUserProtocolFeatures::PAGEFAULT),
        "PAGEFAULT is not offered: {protocol:?}"
    );
    front
        .set_protocol_features(
            VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::PAGEFAULT,
        )
        .unwrap();
    front.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let mem = memfd(MEM_SIZE);
    for (_, avail, used) in RINGS {
        // flags 0, idx 1, ring[0] = head 0; the used ring zeroed (present in the file).
        mem.write_all_at(&[0, 0, 1, 0, 0, 0], avail).unwrap();
        mem.write_all_at(&[0; 4096], used).unwrap();
    }
    mem.write_all_at(&[0; 4096], BUFFER.0).unwrap();
    Session {
        front,
        served,
        mem,
        completions,
        kicks: (0..queues)
            .map(|_| (EventFd::new(0).unwrap(), EventFd::new(0).unwrap()))
            .collect(),
    }
}

impl Session {
    fn memory(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM_SIZE,
            userspace_addr: FRONTEND_BASE,
            mmap_offset: 0,
            mmap_handle: self.mem.as_raw_fd(),
        }
    }

    fn start_ring(&mut self, q: usize) {
        let (desc, avail, used) = RINGS[q];
        let config = VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: FRONTEND_BASE + desc,
            used_ring_addr: FRONTEND_BASE + used,
            avail_ring_addr: FRONTEND_BASE + avail,
            log_addr: None,
        };
        let (call, kick) = &self.kicks[q];
        self.front.set_vring_num(q, QSIZE).unwrap();
        self.front.set_vring_addr(q, &config).unwrap();
        self.front.set_vring_base(q, 0).unwrap();
        self.front.set_vring_call(q, call).unwrap();
        self.front.set_vring_kick(q, kick).unwrap();
        self.front.set_vring_enable(q, true).unwrap();
    }

    /// Ring `q`'s used index and its first element's length.
    fn used(&self, q: usize) -> (u16, u32) {
        let used = RINGS[q].2;
        let mut idx = [0u8; 2];
        self.mem.read_exact_at(&mut idx, used + 2).unwrap();
        let mut len = [0u8; 4];
        self.mem.read_exact_at(&mut len, used + 8).unwrap();
        (u16::from_le_bytes(idx), u32::from_le_bytes(len))
    }

    fn ended(self) -> Result<(), ServeError> {
        let Session { front, served, .. } = self;
        drop(front);
        served
            .recv_timeout(WAIT)
            .expect("the connection did not end")
    }
}

/// The next fault on `uffd`, waiting up to `wait`.
fn fault(uffd: &File, wait: Duration) -> Option<u64> {
    let start = Instant::now();
    loop {
        if let Some(addr) = userfault::next_fault(uffd.as_fd()).unwrap() {
            return Some(addr);
        }
        if start.elapsed() > wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// As QEMU at a destination: ADVISE, LISTEN, the memory table (answered with where the
/// backend maps it), rings set up, the table acknowledged. The worker's first look at
/// ring 0 reads a descriptor table missing from the memfd: it waits, its fault arrives
/// at the base the backend answered, and the page placed through the userfaultfd is
/// what it reads. After END, a missing page reads as zeroes without a fault.
#[test]
fn a_page_missing_from_guest_memory_waits_for_its_placement_until_postcopy_ends() {
    let userfault = UserfaultDevice::new();
    userfault.set(userfaultfd_device()).unwrap();
    let mut s = connect(&userfault);
    let uffd = s.front.postcopy_advise().unwrap();
    s.front.postcopy_listen().unwrap();
    let bases = s.front.set_mem_table(&[s.memory()]).unwrap();
    let bases = bases.expect("no bases in the reply to a table sent while listening");
    assert_eq!(bases.len(), 1);
    let base = bases[0];
    assert!(base != 0 && base.is_multiple_of(PAGE), "base {base:#x}");

    // Ring 0 goes live before the ack: nothing may touch guest memory yet.
    s.start_ring(0);
    assert_eq!(
        fault(&uffd, STILL),
        None,
        "guest memory touched before the ack"
    );
    assert_eq!(s.used(0), (0, 0));
    s.front
        .postcopy_ack_mem_regions(FrontendReq::SET_MEM_TABLE)
        .unwrap();

    let desc = RINGS[0].0;
    let at = fault(&uffd, WAIT).expect("no fault on the missing descriptor table");
    assert_eq!(at & !(PAGE - 1), base + desc, "fault at {at:#x}");
    assert_eq!(
        s.completions.recv_timeout(STILL),
        Err(RecvTimeoutError::Timeout),
        "the request completed without its descriptor"
    );
    let mut page = vec![0u8; PAGE as usize];
    let d = Descriptor::new(BUFFER.0, BUFFER.1, F_WRITE, 0);
    page[..16].copy_from_slice(vm_memory::ByteValued::as_slice(&d));
    assert_eq!(
        userfault::copy(uffd.as_fd(), base + desc, &page).unwrap(),
        Placed::Now
    );
    assert_eq!(s.completions.recv_timeout(WAIT), Ok(1));
    assert_eq!(
        s.used(0),
        (1, BUFFER.1),
        "the placed descriptor was not read"
    );
    let mut written = vec![0u8; BUFFER.1 as usize];
    s.mem.read_exact_at(&mut written, BUFFER.0).unwrap();
    assert!(written.iter().all(|&b| b == 0xab));

    s.front.postcopy_end().unwrap();
    assert!(!userfault.is_set(), "the device fd was kept after END");
    // Ring 1's descriptor table is missing too: read as zeroes now, a descriptor with
    // nothing to write.
    s.start_ring(1);
    assert_eq!(
        s.completions.recv_timeout(WAIT),
        Ok(1),
        "a touch of a missing page still waits after END"
    );
    assert_eq!(s.used(1), (1, 0));
    assert_eq!(fault(&uffd, Duration::ZERO), None, "a fault after END");
    assert!(s.ended().is_ok());
}

/// A daemon that was handed no /dev/userfaultfd answers ADVISE without a userfaultfd:
/// the frontend's advise fails, and the connection serves on (its memory table and
/// rings as without postcopy). Bad device fds are refused when handed over.
#[test]
fn without_dev_userfaultfd_advise_fails_and_the_connection_goes_on() {
    let userfault = UserfaultDevice::new();
    let not_a_device = OwnedFd::from(memfd(PAGE));
    assert!(userfault.set(not_a_device).is_err());
    let null = OwnedFd::from(File::open("/dev/null").unwrap());
    assert!(userfault.set(null).is_err());
    assert!(!userfault.is_set());

    let mut s = connect(&userfault);
    assert!(s.front.postcopy_advise().is_err());
    assert_ne!(s.front.get_features().unwrap(), 0);
    assert_eq!(s.front.set_mem_table(&[s.memory()]).unwrap(), None);
    // The descriptor table is missing and nothing waits for it: a zeroed descriptor.
    s.start_ring(0);
    assert_eq!(s.completions.recv_timeout(WAIT), Ok(1));
    assert_eq!(s.used(0), (1, 0));
    assert!(s.ended().is_ok());
}

/// A device fd serves one migration: after END the next one needs a new fd (ADVISE
/// fails before it, and works once it is handed over, on the same connection).
#[test]
fn after_end_the_next_advise_needs_a_new_device_fd() {
    let userfault = UserfaultDevice::new();
    userfault.set(userfaultfd_device()).unwrap();
    let mut s = connect(&userfault);
    let first = s.front.postcopy_advise().unwrap();
    s.front.postcopy_listen().unwrap();
    s.front.postcopy_end().unwrap();
    drop(first);
    assert!(!userfault.is_set());
    assert!(s.ended().is_ok());

    let mut s = connect(&userfault);
    assert!(s.front.postcopy_advise().is_err());
    userfault.set(userfaultfd_device()).unwrap();
    let second = s.front.postcopy_advise().unwrap();
    assert_eq!(userfault::next_fault(second.as_fd()).unwrap(), None);
    assert!(s.ended().is_ok());
}
