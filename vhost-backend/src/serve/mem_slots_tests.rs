//! Memory slots (CONFIGURE_MEM_SLOTS): a real `vhost::vhost_user::Frontend` gives guest
//! memory a region at a time (ADD_MEM_REG, as QEMU does with memory slots, and as vmm-core
//! does for a DIMM while the rings run) and takes one back (REM_MEM_REG), against a device
//! that fills its chains' writable buffers, over a socket pair against `serve_stream`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::desc::split::Descriptor;
use vmm_sys_util::eventfd::EventFd;

use super::tests::{memfd, Recorder};
use super::{serve_stream, ServeError};
use crate::connection::MAX_MEM_SLOTS;

const QSIZE: u16 = 16;
const RAM: u64 = 0x10000;
/// The first region: RAM with the ring, in the frontend at RAM_BASE.
const RAM_BASE: u64 = 0x7000_0000;
/// The added region (a DIMM): guest 4 GiB, in the frontend at DIMM_BASE.
const DIMM: u64 = 1 << 32;
const DIMM_SIZE: u64 = 0x20000;
const DIMM_BASE: u64 = 0x9000_0000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const F_WRITE: u16 = 2;
const WAIT: Duration = Duration::from_secs(5);
/// How long a request the device must fail is watched for a completion (300 ms was also
/// the wait for one that completes, which a loaded CI machine once did not meet).
const REFUSED: Duration = Duration::from_millis(300);

fn region(guest: u64, size: u64, frontend: u64, file: &File) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: guest,
        memory_size: size,
        userspace_addr: frontend,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }
}

struct Session {
    front: Frontend,
    served: Receiver<Result<(), ServeError>>,
    ram: File,
    kick: EventFd,
    call: EventFd,
    completions: Receiver<usize>,
    offered: u16,
    completed: u16,
}

/// A frontend with memory slots and REPLY_ACK, RAM given by ADD_MEM_REG and ring 0 running
/// in it.
fn connect() -> Session {
    let (sock, backend) = UnixStream::pair().unwrap();
    let (tx, served) = mpsc::channel();
    let (device, completions) = Recorder::completing();
    std::thread::spawn(move || {
        let _ = tx.send(serve_stream(&device, backend));
    });
    let mut front = Frontend::from_stream(sock, 1);
    front.set_owner().unwrap();
    front.get_features().unwrap();
    front
        .set_features(
            virtio::features::VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
        )
        .unwrap();
    let offered = front.get_protocol_features().unwrap();
    assert!(offered.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
    front
        .set_protocol_features(
            VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        )
        .unwrap();
    assert_eq!(front.get_max_mem_slots().unwrap(), MAX_MEM_SLOTS);
    front.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let ram = memfd(RAM);
    assert_eq!(
        front
            .add_mem_region(&region(0, RAM, RAM_BASE, &ram))
            .unwrap(),
        None
    );
    let (kick, call) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
    front.set_vring_num(0, QSIZE).unwrap();
    let config = VringConfigData {
        queue_max_size: QSIZE,
        queue_size: QSIZE,
        flags: 0,
        desc_table_addr: RAM_BASE + DESC,
        used_ring_addr: RAM_BASE + USED,
        avail_ring_addr: RAM_BASE + AVAIL,
        log_addr: None,
    };
    front.set_vring_addr(0, &config).unwrap();
    front.set_vring_base(0, 0).unwrap();
    front.set_vring_call(0, &call).unwrap();
    front.set_vring_kick(0, &kick).unwrap();
    front.set_vring_enable(0, true).unwrap();
    Session {
        front,
        served,
        ram,
        kick,
        call,
        completions,
        offered: 0,
        completed: 0,
    }
}

impl Session {
    /// One device-writable buffer at guest address `addr`, offered and kicked: the bytes
    /// the device wrote into it once it completed it (it fills it with 0xab), waiting for
    /// that as long as any step may take on a loaded machine.
    fn fill(&mut self, addr: u64, len: u32) -> Option<u32> {
        self.fill_within(addr, len, WAIT)
    }

    /// `fill` for a buffer the device must refuse (outside the memory it has: it fails the
    /// request and completes nothing): None once `REFUSED` passed without a completion.
    fn fill_refused(&mut self, addr: u64, len: u32) -> Option<u32> {
        self.fill_within(addr, len, REFUSED)
    }

    fn fill_within(&mut self, addr: u64, len: u32, wait: Duration) -> Option<u32> {
        let d = Descriptor::new(addr, len, F_WRITE, 0);
        let slot = self.offered % QSIZE;
        self.ram
            .write_all_at(
                vm_memory::ByteValued::as_slice(&d),
                DESC + 16 * u64::from(slot),
            )
            .unwrap();
        self.ram
            .write_all_at(&slot.to_le_bytes(), AVAIL + 4 + 2 * u64::from(slot))
            .unwrap();
        self.offered += 1;
        self.ram
            .write_all_at(&self.offered.to_le_bytes(), AVAIL + 2)
            .unwrap();
        self.kick.write(1).unwrap();
        let done = self.completions.recv_timeout(wait).is_ok();
        let mut used = [0u8; 2];
        self.ram.read_exact_at(&mut used, USED + 2).unwrap();
        let used = u16::from_le_bytes(used);
        if !done {
            assert_eq!(used, self.completed, "completed without saying so");
            return None;
        }
        self.completed += 1;
        assert_eq!(used, self.completed);
        let mut written = [0u8; 4];
        let element = u64::from((self.completed - 1) % QSIZE);
        self.ram
            .read_exact_at(&mut written, USED + 4 + 8 * element + 4)
            .unwrap();
        Some(u32::from_le_bytes(written))
    }
}

#[test]
fn a_region_added_while_the_ring_runs_is_reached_and_one_removed_is_not() {
    let mut s = connect();
    let dimm = memfd(DIMM_SIZE);
    assert_eq!(s.fill(0x8000, 0x100), Some(0x100));
    // Before the DIMM is there, a buffer in it is outside guest memory.
    assert_eq!(
        s.fill_refused(DIMM + 0x100, 0x200),
        None,
        "a buffer outside guest memory"
    );
    let dimm_region = region(DIMM, DIMM_SIZE, DIMM_BASE, &dimm);
    assert_eq!(s.front.add_mem_region(&dimm_region).unwrap(), None);
    assert_eq!(
        s.fill(DIMM + 0x1000, 0x800),
        Some(0x800),
        "a buffer in the added region"
    );
    let mut data = vec![0u8; 0x800];
    dimm.read_exact_at(&mut data, 0x1000).unwrap();
    assert!(
        data.iter().all(|&b| b == 0xab),
        "the device wrote into the DIMM"
    );
    // RAM is still reached.
    assert_eq!(s.fill(0x8000, 0x100), Some(0x100));
    // Out again: buffers there are outside guest memory once more.
    s.front.remove_mem_region(&dimm_region).unwrap();
    dimm.write_all_at(&[0u8; 0x100], 0x4000).unwrap();
    assert_eq!(s.fill_refused(DIMM + 0x4000, 0x100), None);
    let mut after = [0u8; 0x100];
    dimm.read_exact_at(&mut after, 0x4000).unwrap();
    assert!(
        after.iter().all(|&b| b == 0),
        "nothing written after the removal"
    );
    // And it can come back at another frontend address.
    assert_eq!(
        s.front
            .add_mem_region(&region(DIMM, DIMM_SIZE, 0xb000_0000, &dimm))
            .unwrap(),
        None
    );
    assert_eq!(s.fill(DIMM + 0x6000, 0x100), Some(0x100));
    let _ = s.call.read();
    drop(s.front);
    assert!(s
        .served
        .recv_timeout(WAIT)
        .expect("the connection ended")
        .is_ok());
}

/// A region that overlaps one there (in guest or frontend addresses), or one that is not
/// there to remove, is refused: acknowledged as failed, and the connection ends (the vhost
/// crate ends it on any failed request), as it does on a bad SET_MEM_TABLE.
#[test]
fn a_region_that_cannot_be_added_or_removed_is_refused() {
    let other = memfd(DIMM_SIZE);
    for (add, bad) in [
        (true, region(0x8000, DIMM_SIZE, 0xa000_0000, &other)),
        (true, region(DIMM, DIMM_SIZE, RAM_BASE + 0x1000, &other)),
        (false, region(DIMM, DIMM_SIZE, DIMM_BASE, &other)),
        (false, region(0, RAM / 2, RAM_BASE, &other)),
    ] {
        let mut s = connect();
        let result = match add {
            true => s.front.add_mem_region(&bad).map(drop),
            false => s.front.remove_mem_region(&bad),
        };
        assert!(
            result.is_err(),
            "{:#x}+{:#x}",
            bad.guest_phys_addr,
            bad.memory_size
        );
        let served = s.served.recv_timeout(WAIT).expect("the connection ended");
        assert!(served.is_err(), "{served:?}");
    }
}

/// A whole table whose regions are not in address order (a frontend lists memory added
/// later last, a DIMM below one added before too) is taken as it is.
#[test]
fn a_table_out_of_address_order_is_taken() {
    let mut s = connect();
    let (dimm, above) = (memfd(DIMM_SIZE), memfd(DIMM_SIZE));
    let table = [
        region(DIMM + DIMM_SIZE, DIMM_SIZE, 0xa000_0000, &above),
        region(0, RAM, RAM_BASE, &s.ram),
        region(DIMM, DIMM_SIZE, DIMM_BASE, &dimm),
    ];
    s.front.set_mem_table(&table).unwrap();
    assert_eq!(s.fill(DIMM + 0x2000, 0x100), Some(0x100));
    let mut data = [0u8; 0x100];
    dimm.read_exact_at(&mut data, 0x2000).unwrap();
    assert!(data.iter().all(|&b| b == 0xab));
    assert_eq!(s.fill(0x8000, 0x100), Some(0x100));
}
