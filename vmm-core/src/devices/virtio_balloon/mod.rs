//! virtio-balloon (virtio 1.2, 5.5), served by vmm-core itself as a virtio device of its
//! own behind the virtio-pci transport, not by a daemon. Why here:
//! - inflating gives guest RAM back to the host: a hole punched in the guest-RAM memfd at
//!   the page's offset (pages.rs), which frees the page for every process that maps the
//!   file at once (an madvise on one mapping would free nothing while the daemons' and a
//!   migration agent's mappings still held it). Guest RAM is vmm-core's;
//! - it must agree with a migration: a page given back while one is under way is marked in
//!   the dirty log (it reads as zeroes now: the agent sends it again, as a zero run, as it
//!   sends every hole), and while postcopy listens at a destination nothing is punched (a
//!   hole would fault to the migration, which may have placed that page already): the
//!   pages stay, counted as kept;
//! - the work per request is tiny and bounded (an array of 32-bit PFNs, MAX_PFNS at most),
//!   and vmm-core already holds everything it needs: guest memory, the transport's
//!   eventfds, the configuration-change interrupt.
//!
//! The parts: the device the transport drives (`Balloon`, on vCPU threads: configuration
//! reads and writes, activation, reset, state), a worker thread per activation that serves
//! the rings (worker.rs), the state they share under one lock (shared.rs), and the handle
//! the VM's control loop keeps (`BalloonHandle`: QMP balloon's target, query-balloon, the
//! run state, a migration's dirty log, postcopy).
//!
//! As QEMU 7.2's device: no feature is offered (no statistics queue, no deflate-on-OOM,
//! free-page hinting or reporting, no page poisoning); the queues are inflateq and
//! deflateq of 128 entries; the configuration is num_pages (the host's, the driver's writes
//! to it are ignored) and actual (the driver's: each change raises
//! `VmEvent::BalloonChanged`, QMP's BALLOON_CHANGE); both survive a reset of the device or
//! the VM, so a new driver starts from them; a new target raises the
//! configuration-change interrupt once the driver is up. PFNs that are not guest RAM
//! (beyond it, in the MMIO gap) are ignored (counted, logged once), as QEMU skips them;
//! deflating needs nothing of the host (the pages come back as the guest touches them).

mod pages;
mod shared;
mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;

use ipc::PageLog;
use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use crate::devices::state;
use crate::devices::virtio_pci::{ActiveQueue, ConfigChanged, VirtioDevice};
use crate::events::{EventSender, VmEvent};
use crate::memory::GuestRam;
pub use pages::RamPages;
pub use shared::Counters;
use shared::{Shared, DEFLATEQ, INFLATEQ};
use worker::Worker;

/// Entries per queue (QEMU's).
const QUEUE_SIZE: u16 = 128;
/// The configuration: num_pages, actual (little-endian u32 each).
const CONFIG_LEN: u64 = 8;
const ACTUAL: u64 = 4;
/// QEMU's virtio-balloon-pci class: 0x00ff (unclassified, "other"), programming
/// interface 0.
const PCI_CLASS: u32 = 0x00ff00;

/// The balloon as the virtio-pci transport sees it.
pub struct Balloon {
    shared: Arc<Shared>,
    pages: Arc<RamPages>,
    /// Guest memory, the very mapping the rest of vmm-core uses (its regions shared): a
    /// page postcopy has not brought yet waits for it here too.
    mem: GuestMemoryMmap,
    events: EventSender,
    worker: Option<JoinHandle<()>>,
    /// Where a restored state says the rings were (next available, next used).
    resume_at: Option<[(u16, u16); 2]>,
}

/// What the VM's control loop does to the balloon.
#[derive(Clone)]
pub struct BalloonHandle {
    shared: Arc<Shared>,
}

/// The device's state, for a migration or a live upgrade.
#[derive(Serialize, Deserialize)]
struct BalloonState {
    num_pages: u32,
    actual: u32,
    /// Per queue (inflateq, deflateq): the next available and next used index, while
    /// the device is active.
    rings: Option<[(u16, u16); 2]>,
}

impl Balloon {
    /// A balloon over `ram`, raising BALLOON_CHANGE through `events`.
    pub fn new(ram: &GuestRam, events: EventSender) -> std::io::Result<Balloon> {
        Ok(Balloon {
            shared: Arc::new(Shared::new(ram.size())?),
            pages: Arc::new(RamPages::new(ram)?),
            mem: ram.memory().clone(),
            events,
            worker: None,
            resume_at: None,
        })
    }

    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle {
            shared: self.shared.clone(),
        }
    }

    /// Starts serving `queues`, from `at` (a resumed device) or from the start.
    fn start(&mut self, queues: &[ActiveQueue], at: Option<[(u16, u16); 2]>) -> Result<(), String> {
        self.stop();
        let find = |index: usize| {
            queues
                .iter()
                .find(|q| q.index == index)
                .ok_or_else(|| format!("the driver did not enable queue {index}"))
        };
        let (inflate, deflate) = (find(INFLATEQ)?, find(DEFLATEQ)?);
        let mut rings = Vec::with_capacity(2);
        for (i, q) in [inflate, deflate].into_iter().enumerate() {
            let mut ring = worker::queue(&self.mem, q.size, (q.desc, q.avail, q.used), QUEUE_SIZE)
                .map_err(|e| format!("queue {}: {e}", q.index))?;
            if let Some(at) = at {
                ring.set_next_avail(at[i].0);
                ring.set_next_used(at[i].1);
            }
            rings.push(ring);
        }
        let clone = |fd: &vmm_sys_util::eventfd::EventFd| {
            fd.try_clone().map_err(|e| format!("an eventfd: {e}"))
        };
        let kicks = [clone(inflate.kick)?, clone(deflate.kick)?];
        let calls = [clone(inflate.call)?, clone(deflate.call)?];
        let generation = {
            let mut state = self.shared.state.lock();
            let mut rings = rings.into_iter();
            state.queues = match (rings.next(), rings.next()) {
                (Some(i), Some(d)) => Some([i, d]),
                _ => None,
            };
            state.active = true;
            state.generation
        };
        let worker = Worker {
            shared: self.shared.clone(),
            pages: self.pages.clone(),
            mem: self.mem.clone(),
            generation,
            kicks,
            calls,
        };
        match worker.spawn() {
            Ok(handle) => {
                self.worker = Some(handle);
                Ok(())
            }
            Err(e) => {
                self.stop();
                Err(format!("starting the balloon's thread: {e}"))
            }
        }
    }

    /// Ends the worker (if any) and lets go of the rings.
    fn stop(&mut self) {
        {
            let mut state = self.shared.state.lock();
            state.generation += 1;
            state.queues = None;
            state.active = false;
        }
        self.shared.wake();
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                log::error!("virtio-balloon: its thread panicked");
            }
        }
    }
}

impl Drop for Balloon {
    fn drop(&mut self) {
        self.stop();
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u16 {
        virtio::ids::BALLOON
    }

    fn pci_class(&self) -> u32 {
        PCI_CLASS
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let state = self.shared.state.lock();
        let mut config = [0u8; CONFIG_LEN as usize];
        config[..4].copy_from_slice(&state.num_pages.to_le_bytes());
        config[4..].copy_from_slice(&state.actual.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.checked_add(i as u64);
            *b = at
                .and_then(|at| config.get(at as usize))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let changed = {
            let mut state = self.shared.state.lock();
            let mut actual = state.actual.to_le_bytes();
            for (i, &b) in data.iter().enumerate() {
                // Only actual is the driver's; num_pages and beyond ignore writes.
                match offset.checked_add(i as u64) {
                    Some(at) if (ACTUAL..CONFIG_LEN).contains(&at) => {
                        actual[(at - ACTUAL) as usize] = b
                    }
                    _ => {}
                }
            }
            let actual = u32::from_le_bytes(actual);
            let old = std::mem::replace(&mut state.actual, actual);
            (old != actual).then_some(actual)
        };
        if let Some(actual) = changed {
            self.events.send(VmEvent::BalloonChanged {
                actual_bytes: self.shared.bytes_after(actual),
            });
        }
    }

    fn activate(&mut self, _features: u64, queues: &[ActiveQueue]) -> Result<(), String> {
        self.start(queues, None)
    }

    fn reset(&mut self) {
        // num_pages and actual stay, as QEMU's do: the next driver starts from them.
        self.stop();
    }

    fn set_config_changed(&mut self, notify: ConfigChanged) {
        self.shared.state.lock().config_changed = Some(notify);
    }

    fn save_state(&self) -> Vec<u8> {
        let state = self.shared.state.lock();
        let ring = |q: &virtio_queue::Queue| (q.next_avail(), q.next_used());
        state::encode(&BalloonState {
            num_pages: state.num_pages,
            actual: state.actual,
            rings: state.queues.as_ref().map(|[i, d]| [ring(i), ring(d)]),
        })
    }

    fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let saved: BalloonState = state::decode("virtio-balloon", bytes)?;
        let mut state = self.shared.state.lock();
        state.num_pages = saved.num_pages;
        state.actual = saved.actual;
        self.resume_at = saved.rings;
        Ok(())
    }

    fn resume(&mut self, _features: u64, queues: &[ActiveQueue]) -> Result<(), String> {
        let at = self.resume_at.take();
        if at.is_none() {
            return Err("the state said the balloon was inactive".into());
        }
        self.start(queues, at)
    }

    fn unplug(&mut self) {
        self.stop();
        self.shared.state.lock().unplugged = true;
    }
}

impl BalloonHandle {
    /// Whether the device is still there (the guest has not ejected it).
    pub fn present(&self) -> bool {
        !self.shared.state.lock().unplugged
    }

    /// QMP balloon: the balloon should hold `pages`; the driver hears of it by a
    /// configuration change (once it is up: before, it reads num_pages when it comes).
    pub fn set_target(&self, pages: u32) {
        let mut state = self.shared.state.lock();
        state.num_pages = pages;
        if state.active {
            if let Some(notify) = &state.config_changed {
                notify.notify();
            }
        }
    }

    /// query-balloon: guest RAM less what the driver says the balloon holds.
    pub fn actual_bytes(&self) -> u64 {
        let actual = self.shared.state.lock().actual;
        self.shared.bytes_after(actual)
    }

    /// The VM runs (the worker serves the rings) or is stopped (requests wait).
    pub fn set_running(&self, running: bool) {
        self.shared.state.lock().running = running;
        if running {
            self.shared.wake();
        }
    }

    /// Whether inflated pages are given back to the host (not while postcopy listens).
    pub fn set_punch(&self, punch: bool) {
        self.shared.state.lock().punch = punch;
    }

    /// A migration's dirty log, while one is under way.
    pub fn set_dirty_log(&self, log: Option<PageLog>) {
        self.shared.state.lock().log = log;
    }

    pub fn counters(&self) -> Counters {
        self.shared.state.lock().counters
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio_pci::device::NO_VECTOR;

    const PAGE: u64 = pages::PAGE;
    /// Rings of queue q: descriptors at 0x1000 + q * 0x1000, available ring 0x400 after,
    /// used ring 0x800 after; request buffers from 0x10000 on.
    fn rings(q: u64) -> (u64, u64, u64) {
        let base = 0x1000 + q * 0x1000;
        (base, base + 0x400, base + 0x800)
    }

    struct Rig {
        ram: GuestRam,
        balloon: Balloon,
        events: std::sync::mpsc::Receiver<VmEvent>,
        kicks: Vec<EventFd>,
        calls: Vec<EventFd>,
        /// Requests made per queue.
        made: [u16; 2],
    }

    impl Rig {
        fn new() -> Rig {
            let ram = GuestRam::new(4).unwrap();
            let (tx, events) = EventSender::channel();
            let balloon = Balloon::new(&ram, tx).unwrap();
            let fd = || EventFd::new(EFD_NONBLOCK).unwrap();
            let mut rig = Rig {
                ram,
                balloon,
                events,
                kicks: vec![fd(), fd()],
                calls: vec![fd(), fd()],
                made: [0; 2],
            };
            // The rings and request buffers are written before anything is measured,
            // so that the memfd's allocation changes only by what the balloon does.
            for range in [0x1000..0x3000u64, 0x10000..0x20000, 0x90000..0xa0000] {
                let zeroes = vec![0u8; (range.end - range.start) as usize];
                rig.mem()
                    .write_slice(&zeroes, GuestAddress(range.start))
                    .unwrap();
                rig.mem().write_obj(1u8, GuestAddress(range.start)).unwrap();
            }
            rig.activate();
            rig.balloon.handle().set_running(true);
            rig
        }

        fn active(&self) -> Vec<ActiveQueue<'_>> {
            active_queues(&self.kicks, &self.calls)
        }

        fn activate(&mut self) {
            let queues = active_queues(&self.kicks, &self.calls);
            self.balloon.activate(0, &queues).unwrap();
        }

        fn mem(&self) -> &GuestMemoryMmap {
            self.ram.memory()
        }

        /// Makes a request of `pfns` (as bytes split over buffers of `split` bytes) on
        /// queue q and kicks it.
        fn request(&mut self, q: usize, bytes: &[u8], split: usize) {
            let (desc, avail, _) = rings(q as u64);
            let n = self.made[q];
            let buffer = 0x10000 + u64::from(n) * 0x1000 + q as u64 * 0x80000;
            self.mem().write_slice(bytes, GuestAddress(buffer)).unwrap();
            let pieces: Vec<&[u8]> = bytes.chunks(split.max(1)).collect();
            let first = (n * 4) % 16;
            for (i, piece) in pieces.iter().enumerate() {
                let index = u64::from(first) + i as u64;
                let last = i + 1 == pieces.len();
                let mut raw = [0u8; 16];
                let at = buffer + (i * split) as u64;
                raw[..8].copy_from_slice(&at.to_le_bytes());
                raw[8..12].copy_from_slice(&(piece.len() as u32).to_le_bytes());
                raw[12..14].copy_from_slice(&(if last { 0u16 } else { 1 }).to_le_bytes());
                raw[14..16].copy_from_slice(&((index + 1) as u16).to_le_bytes());
                self.mem()
                    .write_slice(&raw, GuestAddress(desc + 16 * index))
                    .unwrap();
            }
            self.mem()
                .write_obj(first, GuestAddress(avail + 4 + 2 * u64::from(n % 16)))
                .unwrap();
            self.made[q] = n + 1;
            self.mem()
                .write_obj(self.made[q], GuestAddress(avail + 2))
                .unwrap();
            self.kicks[q].write(1).unwrap();
        }

        fn used(&self, q: usize) -> u16 {
            self.mem()
                .read_obj(GuestAddress(rings(q as u64).2 + 2))
                .unwrap()
        }

        /// Waits until queue q has used every request made.
        fn wait_used(&self, q: usize) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.used(q) != self.made[q] {
                assert!(
                    Instant::now() < deadline,
                    "queue {q}: used {}",
                    self.used(q)
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        fn allocated(&self) -> u64 {
            self.ram.memfd().metadata().unwrap().blocks() * 512
        }

        fn counters(&self) -> Counters {
            self.balloon.handle().counters()
        }
    }

    fn active_queues<'a>(kicks: &'a [EventFd], calls: &'a [EventFd]) -> Vec<ActiveQueue<'a>> {
        (0..2)
            .map(|q| {
                let (desc, avail, used) = rings(q as u64);
                ActiveQueue {
                    index: q,
                    size: 16,
                    desc,
                    avail,
                    used,
                    kick: &kicks[q],
                    call: &calls[q],
                }
            })
            .collect()
    }

    fn pfn_bytes(pfns: &[u32]) -> Vec<u8> {
        pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    #[test]
    fn inflated_pages_leave_the_memfd_and_bad_pfns_are_ignored() {
        let mut rig = Rig::new();
        // Pages 256..264 written, so the host holds them.
        rig.mem()
            .write_slice(&[0x5a; 8 * PAGE as usize], GuestAddress(256 * PAGE))
            .unwrap();
        let before = rig.allocated();
        // Descending, with a PFN beyond RAM and one in the MMIO gap in the middle, split
        // so that PFNs straddle buffers.
        let mut pfns: Vec<u32> = (256..264).rev().collect();
        pfns.insert(4, 0xffff_ffff);
        pfns.insert(5, 0xfee00);
        rig.request(INFLATEQ, &pfn_bytes(&pfns), 6);
        rig.wait_used(INFLATEQ);
        assert_eq!(
            rig.allocated(),
            before - 8 * PAGE,
            "the 8 pages were given back"
        );
        let c = rig.counters();
        assert_eq!(
            (c.given_back, c.ignored, c.bad_requests),
            (8, 2, 0),
            "{c:?}"
        );
        // The guest was interrupted, and the pages read as zeroes.
        assert_eq!(rig.calls[INFLATEQ].read().unwrap(), 1);
        let mut page = [0xffu8; 8 * PAGE as usize];
        rig.mem()
            .read_slice(&mut page, GuestAddress(256 * PAGE))
            .unwrap();
        assert!(page.iter().all(|&b| b == 0));
        // Deflating counts them back; nothing else to do.
        rig.request(DEFLATEQ, &pfn_bytes(&[256, 257, 0x1234_5678]), 12);
        rig.wait_used(DEFLATEQ);
        let c = rig.counters();
        assert_eq!((c.deflated, c.ignored), (2, 3), "{c:?}");
    }

    #[test]
    fn a_broken_request_is_completed_and_the_device_goes_on() {
        let mut rig = Rig::new();
        // A buffer outside guest memory.
        let (desc, avail, _) = rings(0);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        raw[8..12].copy_from_slice(&8u32.to_le_bytes());
        rig.mem().write_slice(&raw, GuestAddress(desc)).unwrap();
        rig.mem().write_obj(0u16, GuestAddress(avail + 4)).unwrap();
        rig.made[0] = 1;
        rig.mem().write_obj(1u16, GuestAddress(avail + 2)).unwrap();
        rig.kicks[0].write(1).unwrap();
        rig.wait_used(0);
        assert_eq!(rig.counters().bad_requests, 1);
        rig.mem()
            .write_slice(&[1; PAGE as usize], GuestAddress(300 * PAGE))
            .unwrap();
        rig.request(INFLATEQ, &pfn_bytes(&[300]), 4);
        rig.wait_used(INFLATEQ);
        assert_eq!(rig.counters().given_back, 1);
    }

    #[test]
    fn a_stopped_vm_leaves_requests_in_the_ring_and_a_restore_resumes_them() {
        let mut rig = Rig::new();
        let handle = rig.balloon.handle();
        // One request served, then the VM stops and another waits.
        rig.request(INFLATEQ, &pfn_bytes(&[399]), 4);
        rig.wait_used(INFLATEQ);
        handle.set_running(false);
        rig.request(INFLATEQ, &pfn_bytes(&[400]), 4);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(rig.used(INFLATEQ), 1, "served while stopped");
        // The state as saved now: nothing taken yet.
        handle.set_target(7);
        rig.balloon.write_config(ACTUAL, &5u32.to_le_bytes());
        let saved = rig.balloon.save_state();
        // Another balloon (a destination) over the same memory resumes the rings.
        let (tx, _events) = EventSender::channel();
        let mut there = Balloon::new(&rig.ram, tx).unwrap();
        there.restore_state(&saved).unwrap();
        let mut config = [0u8; 8];
        there.read_config(0, &mut config);
        assert_eq!(config, [7, 0, 0, 0, 5, 0, 0, 0]);
        rig.balloon.stop();
        let queues = rig.active();
        there.resume(0, &queues).unwrap();
        there.handle().set_running(true);
        rig.wait_used(INFLATEQ);
        // Only the waiting one: the first is not served again.
        assert_eq!(there.handle().counters().given_back, 1);
        // Its state says where the rings are now.
        let again: BalloonState = state::decode("t", &there.save_state()).unwrap();
        assert_eq!(again.rings, Some([(2, 2), (0, 0)]));
    }

    #[test]
    fn the_configuration_is_num_pages_and_the_drivers_actual() {
        let mut rig = Rig::new();
        let handle = rig.balloon.handle();
        handle.set_target(0x0102_0304);
        let mut config = [0xffu8; 12];
        rig.balloon.read_config(0, &mut config);
        assert_eq!(config, [4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        // The driver cannot write num_pages; actual, even a byte at a time, raises
        // BalloonChanged with what it now leaves of RAM.
        rig.balloon.write_config(0, &[9, 9, 9, 9]);
        rig.balloon.write_config(ACTUAL, &[0x10, 0, 0, 0]);
        rig.balloon.write_config(ACTUAL + 1, &[0x01]);
        rig.balloon.write_config(ACTUAL, &[0x10, 0x01, 0, 0]);
        let seen: Vec<u64> = rig
            .events
            .try_iter()
            .map(|e| match e {
                VmEvent::BalloonChanged { actual_bytes } => actual_bytes,
                other => panic!("{other:?}"),
            })
            .collect();
        let ram = 4u64 << 20;
        assert_eq!(seen, vec![ram - 0x10 * PAGE, ram - 0x110 * PAGE]);
        assert_eq!(handle.actual_bytes(), ram - 0x110 * PAGE);
        rig.balloon.read_config(0, &mut config[..8]);
        assert_eq!(config[..8], [4, 3, 2, 1, 0x10, 1, 0, 0]);
        // A reset keeps both, as QEMU does.
        rig.balloon.reset();
        rig.balloon.read_config(4, &mut config[..4]);
        assert_eq!(config[..4], [0x10, 1, 0, 0]);
        assert_eq!(handle.actual_bytes(), ram - 0x110 * PAGE);
    }

    #[test]
    fn a_new_target_interrupts_an_active_driver_only() {
        let mut rig = Rig::new();
        let vectors = Arc::new(vec![EventFd::new(EFD_NONBLOCK).unwrap()]);
        let notify = ConfigChanged::new(vectors.clone());
        notify.set_vector(0);
        rig.balloon.set_config_changed(notify.clone());
        let handle = rig.balloon.handle();
        handle.set_target(10);
        assert_eq!(vectors[0].read().unwrap(), 1);
        assert_eq!(notify.generation(), 1);
        rig.balloon.reset();
        handle.set_target(20);
        assert!(vectors[0].read().is_err(), "no interrupt without a driver");
        assert_ne!(notify.vector(), NO_VECTOR);
    }

    #[test]
    fn while_postcopy_listens_pages_stay_and_a_migration_sees_them_dirty() {
        let mut rig = Rig::new();
        let handle = rig.balloon.handle();
        rig.mem()
            .write_slice(&[1; 2 * PAGE as usize], GuestAddress(500 * PAGE))
            .unwrap();
        let before = rig.allocated();
        handle.set_punch(false);
        rig.request(INFLATEQ, &pfn_bytes(&[500]), 4);
        rig.wait_used(INFLATEQ);
        assert_eq!(rig.allocated(), before);
        assert_eq!(rig.counters().kept, 1);
        handle.set_punch(true);
        let log = PageLog::create(rig.ram.size()).unwrap();
        let mirror = PageLog::from_fd(log.fd().try_clone_to_owned().unwrap(), log.len()).unwrap();
        handle.set_dirty_log(Some(log));
        rig.request(INFLATEQ, &pfn_bytes(&[501]), 4);
        rig.wait_used(INFLATEQ);
        let pages = mirror.take_word(7);
        assert_eq!(pages >> (501 % 64) & 1, 1, "the page given back is dirty");
        assert_eq!(pages >> (500 % 64) & 1, 0, "only that one");
        // So is the used ring's page (0x1800: page 1).
        assert_eq!(mirror.take_word(0), 1 << 1, "the used ring is dirty");
    }
}
