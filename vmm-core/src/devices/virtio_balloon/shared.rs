//! What the balloon's parts share: the device (the transport's side, on vCPU threads), its
//! worker thread, and the handle the VM's control loop holds. One lock guards it all; the
//! worker holds it for the whole of a pass over the queues, so whoever takes it next
//! (a state save, the VM stopping) sees no request half done.

use ipc::PageLog;
use parking_lot::Mutex;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio_pci::ConfigChanged;

/// The queues' indexes: inflateq, then deflateq.
pub const INFLATEQ: usize = 0;
pub const DEFLATEQ: usize = 1;

/// What the balloon did with the pages guests handed it, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Pages inflated and given back to the host.
    pub given_back: u64,
    /// Pages inflated while postcopy listened: left where they were.
    pub kept: u64,
    /// Pages deflated (the guest's again).
    pub deflated: u64,
    /// PFNs that are not guest RAM, or beyond a request's limit: ignored.
    pub ignored: u64,
    /// Requests whose descriptor chain or buffers could not be read (completed unread).
    pub bad_requests: u64,
    /// Runs of pages the memfd would not punch.
    pub punch_errors: u64,
}

pub struct State {
    /// The pages the host wants in the balloon (QMP balloon), as the driver reads it.
    pub num_pages: u32,
    /// The pages the driver says the balloon holds.
    pub actual: u32,
    /// The driver set DRIVER_OK and has not reset the device since.
    pub active: bool,
    /// The VM runs: the worker serves the queues (while it is stopped requests wait in
    /// the rings, as QEMU's devices let them, so a saved state has none half done).
    pub running: bool,
    /// Pages may be given back (not while postcopy listens: a punched page would fault
    /// to the migration, which may have placed it already).
    pub punch: bool,
    /// A migration's dirty log: the pages given back and the used rings written are
    /// marked in it, as the vCPUs' writes are by KVM.
    pub log: Option<PageLog>,
    /// The worker's rings (inflateq, deflateq) while the device is active.
    pub queues: Option<[Queue; 2]>,
    /// Bumped each time the worker must stop (a reset, the device going).
    pub generation: u64,
    pub counters: Counters,
    /// Whether an ignored PFN, a bad request or a failed punch was already logged.
    pub warned: Warned,
    /// Raises the configuration-change interrupt.
    pub config_changed: Option<ConfigChanged>,
    /// The guest ejected the device: the VM has no balloon any more.
    pub unplugged: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Warned {
    pub ignored: bool,
    pub bad_request: bool,
    pub punch: bool,
}

pub struct Shared {
    pub state: Mutex<State>,
    /// Wakes the worker: to stop, or because the VM runs again.
    pub wake: EventFd,
    /// Guest RAM's size (what BALLOON_CHANGE and query-balloon count from).
    pub ram_size: u64,
}

impl Shared {
    pub fn new(ram_size: u64) -> std::io::Result<Shared> {
        Ok(Shared {
            state: Mutex::new(State {
                num_pages: 0,
                actual: 0,
                active: false,
                running: false,
                punch: true,
                log: None,
                queues: None,
                generation: 0,
                counters: Counters::default(),
                warned: Warned::default(),
                config_changed: None,
                unplugged: false,
            }),
            wake: EventFd::new(EFD_NONBLOCK)?,
            ram_size,
        })
    }

    /// Guest RAM less `pages` (QEMU's BalloonInfo.actual; 0 if a guest claims more).
    pub fn bytes_after(&self, pages: u32) -> u64 {
        self.ram_size.saturating_sub(u64::from(pages) << 12)
    }

    pub fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            log::error!("virtio-balloon: waking its thread: {e}");
        }
    }
}
