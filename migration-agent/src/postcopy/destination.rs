//! The destination's postcopy phase: pages are placed atomically through vmm-core's
//! userfaultfd (a half-written page is never seen: UFFDIO_COPY), and the faults of every
//! process that maps guest RAM (vmm-core, the vhost-user backends) are read on a thread:
//! a page not here yet is asked of the source once; a page already here (placed
//! meanwhile, or a zero page that was never written) wakes the waiter at once. Backends'
//! waiters are woken by hand when their page is placed (UFFDIO_WAKE): the copy through
//! vmm-core's userfaultfd wakes only vmm-core's.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ipc::userfault::{self, MappedRange};
use parking_lot::{Condvar, Mutex};

use super::pages::PageSet;
use crate::answer::Answer;
use crate::stream::PAGE;

/// The faults thread looks for its stop this often.
const POLL_MS: i32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Userfault(#[from] userfault::UserfaultError),
    #[error("page {0:#x} is not in vmm-core's guest RAM")]
    Outside(u64),
    #[error("asking the source for a page: {0}")]
    Request(std::io::Error),
}

/// What the gateway hands over for the postcopy phase: vmm-core's userfaultfd and
/// mapping, and one userfaultfd per vhost-user backend (their mappings come later).
pub struct Given {
    pub vmm: OwnedFd,
    pub vmm_ranges: Vec<MappedRange>,
    pub backends: Vec<OwnedFd>,
}

#[derive(Default)]
struct SlotState {
    /// Whether this side takes postcopy (the gateway's answer to the advice).
    advice: Option<Result<(), String>>,
    given: Option<Result<Given, String>>,
    placer: Option<Arc<Placer>>,
    /// Backends' mappings that came before the placer existed.
    early_ranges: Vec<(u32, Vec<MappedRange>)>,
}

/// Where the gateway's answers for the postcopy phase meet the receiving thread.
#[derive(Clone, Default)]
pub struct Faults(Arc<(Mutex<SlotState>, Condvar)>);

impl Faults {
    /// The gateway's answer to the source's advice.
    pub fn advise(&self, advice: Result<(), String>) {
        let (state, changed) = &*self.0;
        state.lock().advice = Some(advice);
        changed.notify_all();
    }

    /// Waits for `advise`.
    pub(crate) fn take_advice(&self) -> Result<(), String> {
        let (state, changed) = &*self.0;
        let mut s = state.lock();
        loop {
            if let Some(advice) = s.advice.take() {
                return advice;
            }
            changed.wait(&mut s);
        }
    }

    /// The userfaultfds, or why there are none (the migration then fails).
    pub fn give(&self, given: Result<Given, String>) {
        let (state, changed) = &*self.0;
        let mut s = state.lock();
        if s.given.is_none() && s.placer.is_none() {
            s.given = Some(given);
        }
        changed.notify_all();
    }

    /// Backend `backend`'s mapping (it answered vmm-core's SET_MEM_TABLE).
    pub fn ranges(&self, backend: u32, ranges: Vec<MappedRange>) -> Result<(), String> {
        let (state, _) = &*self.0;
        let mut s = state.lock();
        match &s.placer {
            Some(p) => p.set_ranges(backend as usize, ranges),
            None => {
                s.early_ranges.push((backend, ranges));
                Ok(())
            }
        }
    }

    /// Waits for `give`.
    pub(crate) fn take(&self) -> Result<Given, String> {
        let (state, changed) = &*self.0;
        let mut s = state.lock();
        loop {
            if let Some(given) = s.given.take() {
                return given;
            }
            changed.wait(&mut s);
        }
    }

    pub(crate) fn started(&self, placer: Arc<Placer>) -> Result<(), String> {
        let (state, _) = &*self.0;
        let mut s = state.lock();
        for (backend, ranges) in std::mem::take(&mut s.early_ranges) {
            placer.set_ranges(backend as usize, ranges)?;
        }
        s.placer = Some(placer);
        Ok(())
    }
}

struct Backend {
    uffd: OwnedFd,
    ranges: Vec<MappedRange>,
    /// Fault addresses read before its mapping was known.
    held: Vec<u64>,
    /// Faults read, and those that had to wait for their page.
    faults: u64,
    waited: u64,
}

struct State {
    received: PageSet,
    requested: PageSet,
    /// Backends' threads waiting for a page: (backend, page address in it).
    waiters: HashMap<u64, Vec<(usize, u64)>>,
    /// Pages of guest RAM not here yet.
    missing: u64,
}

pub struct Placer {
    vmm: OwnedFd,
    vmm_ranges: Vec<MappedRange>,
    backends: Mutex<Vec<Backend>>,
    state: Mutex<State>,
    answer: Answer,
    stop: AtomicBool,
    failed: Mutex<Option<String>>,
}

impl Placer {
    /// `received`: the pages that arrived before the switch and were not discarded;
    /// `ram_pages`: every page of guest RAM, to count the missing ones.
    pub fn new(given: Given, received: PageSet, ram_pages: u64, answer: Answer) -> Placer {
        let backends = given
            .backends
            .into_iter()
            .map(|uffd| Backend {
                uffd,
                ranges: Vec::new(),
                held: Vec::new(),
                faults: 0,
                waited: 0,
            })
            .collect();
        let missing = ram_pages.saturating_sub(received.len());
        Placer {
            vmm: given.vmm,
            vmm_ranges: given.vmm_ranges,
            backends: Mutex::new(backends),
            state: Mutex::new(State {
                requested: PageSet::new(received.end()),
                received,
                waiters: HashMap::new(),
                missing,
            }),
            answer,
            stop: AtomicBool::new(false),
            failed: Mutex::new(None),
        }
    }

    pub fn missing(&self) -> u64 {
        self.state.lock().missing
    }

    /// What the backends' faults came to: (faults, waits) per backend, in order.
    pub fn backend_faults(&self) -> Vec<(u64, u64)> {
        self.backends
            .lock()
            .iter()
            .map(|b| (b.faults, b.waited))
            .collect()
    }

    /// A failure of the faults thread, if it had one.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().clone()
    }

    fn vmm_host(&self, page: u64) -> Result<u64, PlaceError> {
        let gpa = page * PAGE as u64;
        self.vmm_ranges
            .iter()
            .find_map(|r| r.host(gpa))
            .ok_or(PlaceError::Outside(page))
    }

    /// Page `page` arrived (`content`; None: a zero page): placed unless it is here
    /// already; the backends' threads that wait for it are woken.
    pub fn place(&self, page: u64, content: Option<&[u8]>) -> Result<(), PlaceError> {
        self.arrived(page, |_, host| {
            match content {
                Some(c) => userfault::copy(self.vmm.as_fd(), host, c)?,
                None => userfault::zero(self.vmm.as_fd(), host, PAGE as u64)?,
            };
            Ok(())
        })
    }

    /// Page `page` arrived as a zero page. The memfd holds a hole there (it was never
    /// written here, or was discarded): nothing needs placing, unless someone waits for
    /// it (asked for: a zero page is placed, which wakes vmm-core's threads; the
    /// backends' are woken by hand). A later touch finds it received and gets a zero
    /// page then (`fault`); one never touched costs no memory.
    pub fn zero_arrived(&self, page: u64) -> Result<(), PlaceError> {
        self.arrived(page, |asked, host| {
            if asked {
                userfault::zero(self.vmm.as_fd(), host, PAGE as u64)?;
            }
            Ok(())
        })
    }

    /// Page `page` is here once `put` (told whether it was asked for, and where vmm-core
    /// maps it) is done, unless it was already: counted, and its waiters woken.
    fn arrived(
        &self,
        page: u64,
        put: impl FnOnce(bool, u64) -> Result<(), PlaceError>,
    ) -> Result<(), PlaceError> {
        let host = self.vmm_host(page)?;
        let waiters = {
            let mut st = self.state.lock();
            if st.received.contains(page) {
                return Ok(());
            }
            put(st.requested.contains(page), host)?;
            st.received.insert(page);
            st.missing = st.missing.saturating_sub(1);
            st.waiters.remove(&page)
        };
        for (backend, addr) in waiters.into_iter().flatten() {
            self.wake(backend, addr);
        }
        Ok(())
    }

    fn wake(&self, backend: usize, addr: u64) {
        let backends = self.backends.lock();
        if let Some(b) = backends.get(backend) {
            if let Err(e) = userfault::wake(b.uffd.as_fd(), addr, PAGE as u64) {
                log::warn!("postcopy: waking backend {backend}: {e}");
            }
        }
    }

    fn set_ranges(&self, backend: usize, ranges: Vec<MappedRange>) -> Result<(), String> {
        let held = {
            let mut backends = self.backends.lock();
            let b = backends
                .get_mut(backend)
                .ok_or_else(|| format!("no backend {backend} in this postcopy migration"))?;
            b.ranges = ranges;
            std::mem::take(&mut b.held)
        };
        for addr in held {
            self.fault(backend + 1, addr).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// A fault of source `source` (0: vmm-core, then the backends) at `addr` there.
    fn fault(&self, source: usize, addr: u64) -> Result<(), PlaceError> {
        let addr = addr & !(PAGE as u64 - 1);
        let gpa = if source == 0 {
            self.vmm_ranges.iter().find_map(|r| r.guest(addr))
        } else {
            let mut backends = self.backends.lock();
            let Some(b) = backends.get_mut(source - 1) else {
                return Ok(());
            };
            if b.ranges.is_empty() {
                b.held.push(addr);
                return Ok(());
            }
            b.ranges.iter().find_map(|r| r.guest(addr))
        };
        let Some(gpa) = gpa else {
            // Registered memory is guest RAM only: nothing else can fault here.
            log::warn!("postcopy: a fault at {addr:#x} outside guest RAM (source {source})");
            return Ok(());
        };
        let page = gpa / PAGE as u64;
        let mut st = self.state.lock();
        if st.received.contains(page) {
            drop(st);
            // Here already: placed since the fault, or a zero page the precopy never had
            // to write (a hole of the memfd): a zero page then (placing wakes vmm-core's
            // waiters; EEXIST when it holds data).
            userfault::zero(self.vmm.as_fd(), self.vmm_host(page)?, PAGE as u64)?;
            if source > 0 {
                self.wake(source - 1, addr);
            }
            return Ok(());
        }
        if source > 0 {
            st.waiters.entry(page).or_default().push((source - 1, addr));
        }
        let ask = st.requested.insert(page);
        drop(st);
        if source > 0 {
            if let Some(b) = self.backends.lock().get_mut(source - 1) {
                b.waited += 1;
            }
        }
        if ask {
            self.answer.request(page, 1).map_err(PlaceError::Request)?;
        }
        Ok(())
    }

    /// Reads the faults of every userfaultfd until `stop`.
    pub fn serve_faults(self: &Arc<Self>) {
        while !self.stop.load(Ordering::Relaxed) {
            let fds: Vec<i32> = std::iter::once(self.vmm.as_raw_fd())
                .chain(self.backends.lock().iter().map(|b| b.uffd.as_raw_fd()))
                .collect();
            let mut polled: Vec<libc::pollfd> = fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: poll on an array of pollfds we own, of its length.
            let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as _, POLL_MS) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                self.fail(format!("waiting for faults: {e}"));
                return;
            }
            for (source, p) in polled.iter().enumerate() {
                if p.revents == 0 {
                    continue;
                }
                if let Err(e) = self.drain(source) {
                    self.fail(e.to_string());
                    return;
                }
            }
        }
    }

    fn drain(&self, source: usize) -> Result<(), PlaceError> {
        loop {
            let next = if source == 0 {
                userfault::next_fault(self.vmm.as_fd())?
            } else {
                let fd = match self.backends.lock().get(source - 1) {
                    Some(b) => b
                        .uffd
                        .try_clone()
                        .map_err(|e| PlaceError::Userfault(userfault::UserfaultError::Read(e)))?,
                    None => return Ok(()),
                };
                userfault::next_fault(fd.as_fd())?
            };
            match next {
                Some(addr) => {
                    if source > 0 {
                        if let Some(b) = self.backends.lock().get_mut(source - 1) {
                            b.faults += 1;
                        }
                    }
                    self.fault(source, addr)?
                }
                None => return Ok(()),
            }
        }
    }

    fn fail(&self, why: String) {
        log::error!("postcopy: {why}");
        self.failed.lock().get_or_insert(why);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts the faults thread; it runs until the placer is stopped (at the agent's end:
/// backends' threads may still wait on pages placed late, until POSTCOPY_END).
pub fn start_faults_thread(placer: &Arc<Placer>) -> std::io::Result<()> {
    let p = placer.clone();
    std::thread::Builder::new()
        .name("postcopy-faults".into())
        .spawn(move || p.serve_faults())
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// vmm-core's part played by this process: a memfd mapping registered with a
    /// userfaultfd; a thread that touches a missing page waits until the placer, asked
    /// by its fault, gets the page; a hole that precopy received as zero is filled at
    /// once without asking.
    #[test]
    fn a_fault_is_asked_for_once_and_its_page_placed() {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(userfault::DEVICE)
            .unwrap_or_else(|e| panic!("{} is needed for postcopy: {e}", userfault::DEVICE));
        let uffd = userfault::create(device.as_fd()).unwrap();
        let pages = 8u64;
        let len = pages * PAGE as u64;
        let memfd = ipc::shm::memfd(c"placer", len, false).unwrap();
        let map = ipc::shm::SharedMapping::new(memfd.as_fd(), len as usize).unwrap();
        let base = map.ptr().as_ptr() as u64;
        userfault::register(uffd.as_fd(), base, len).unwrap();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let answer = Answer::default();
        answer.set(std::fs::File::from(OwnedFd::from(ours)));
        // Guest page 0x10 is the mapping's first; its second came as a zero page in
        // precopy (a hole, "received").
        let first = 0x10000 / PAGE as u64;
        let mut received = PageSet::new(first + pages);
        received.insert(first + 1);
        let given = Given {
            vmm: uffd,
            vmm_ranges: vec![MappedRange {
                host_addr: base,
                size: len,
                guest_addr: 0x10000,
            }],
            backends: vec![],
        };
        let placer = Arc::new(Placer::new(given, received, pages, answer));
        start_faults_thread(&placer).unwrap();
        // SAFETY: inside the mapping, which outlives the thread (joined below).
        let zero =
            std::thread::spawn(move || unsafe { ((base + 4096) as *const u64).read_volatile() });
        assert_eq!(
            zero.join().unwrap(),
            0,
            "a received zero page is filled at once"
        );
        // SAFETY: as above.
        let waiting = std::thread::spawn(move || unsafe {
            ((base + 3 * 4096) as *const u64).read_volatile()
        });
        let mut requests = std::io::BufReader::new(theirs);
        match crate::stream::read_answer(&mut requests).unwrap() {
            crate::stream::Answer::Request {
                first: asked,
                count,
            } => assert_eq!((asked, count), (first + 3, 1)),
            other => panic!("{other:?}"),
        }
        let mut content = vec![0u8; PAGE];
        content[..8].copy_from_slice(&0xfeed_u64.to_ne_bytes());
        placer.place(first + 3, Some(&content)).unwrap();
        assert_eq!(waiting.join().unwrap(), 0xfeed);
        assert_eq!(placer.missing(), pages - 2);
        // Placed twice (requested and in the background): the second is ignored.
        placer.place(first + 3, None).unwrap();
        assert_eq!(placer.missing(), pages - 2);
        assert!(placer.place(first + 8, None).is_err(), "outside");
        // A zero page nobody asked for is only noted: the memfd keeps its hole (no
        // memory spent); a later touch gets a zero page from the faults thread.
        let data_before = ipc::shm::data_ranges(memfd.as_fd(), len).unwrap();
        placer.zero_arrived(first + 5).unwrap();
        assert_eq!(placer.missing(), pages - 3);
        assert_eq!(
            ipc::shm::data_ranges(memfd.as_fd(), len).unwrap(),
            data_before
        );
        // SAFETY: inside the mapping, which outlives the thread (joined below).
        let touch = std::thread::spawn(move || unsafe {
            ((base + 5 * 4096) as *const u64).read_volatile()
        });
        assert_eq!(touch.join().unwrap(), 0);
        placer.stop();
        assert_eq!(placer.failure(), None);
    }

    /// A backend's part: a second mapping of the same memfd registered with a second
    /// userfaultfd (another process's in real life). Its thread touching a missing page
    /// waits, is asked for once (the backend's mapping known only after the fault came,
    /// as a backend's SET_MEM_TABLE answer may arrive late), and is woken by hand when
    /// the page is placed through vmm-core's userfaultfd.
    #[test]
    fn a_backends_fault_waits_until_its_page_is_placed_elsewhere() {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(userfault::DEVICE)
            .unwrap_or_else(|e| panic!("{} is needed for postcopy: {e}", userfault::DEVICE));
        let pages = 4u64;
        let len = pages * PAGE as u64;
        let memfd = ipc::shm::memfd(c"placer-backend", len, false).unwrap();
        let vmm_map = ipc::shm::SharedMapping::new(memfd.as_fd(), len as usize).unwrap();
        let backend_map = ipc::shm::SharedMapping::new(memfd.as_fd(), len as usize).unwrap();
        let (vmm_base, backend_base) = (
            vmm_map.ptr().as_ptr() as u64,
            backend_map.ptr().as_ptr() as u64,
        );
        let vmm = userfault::create(device.as_fd()).unwrap();
        let backend = userfault::create(device.as_fd()).unwrap();
        userfault::register(vmm.as_fd(), vmm_base, len).unwrap();
        userfault::register(backend.as_fd(), backend_base, len).unwrap();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let answer = Answer::default();
        answer.set(std::fs::File::from(OwnedFd::from(ours)));
        let given = Given {
            vmm,
            vmm_ranges: vec![MappedRange {
                host_addr: vmm_base,
                size: len,
                guest_addr: 0,
            }],
            backends: vec![backend],
        };
        let placer = Arc::new(Placer::new(given, PageSet::new(pages), pages, answer));
        start_faults_thread(&placer).unwrap();
        // SAFETY: inside the mapping, which outlives the thread (joined below).
        let waiting = std::thread::spawn(move || unsafe {
            ((backend_base + 2 * 4096 + 16) as *const u64).read_volatile()
        });
        // The fault is held until the backend's mapping is known.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(placer.backend_faults(), [(1, 0)]);
        placer
            .set_ranges(
                0,
                vec![MappedRange {
                    host_addr: backend_base,
                    size: len,
                    guest_addr: 0,
                }],
            )
            .unwrap();
        let mut requests = std::io::BufReader::new(theirs);
        match crate::stream::read_answer(&mut requests).unwrap() {
            crate::stream::Answer::Request { first, count } => assert_eq!((first, count), (2, 1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(placer.backend_faults(), [(1, 1)]);
        assert!(
            !waiting.is_finished(),
            "the backend's thread read a missing page"
        );
        let mut content = vec![0u8; PAGE];
        content[16..24].copy_from_slice(&0xbac_u64.to_ne_bytes());
        placer.place(2, Some(&content)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !waiting.is_finished() {
            // Left waiting, the thread would hold the test forever: the process ends.
            if std::time::Instant::now() > deadline {
                eprintln!("the backend's thread was not woken once its page was placed");
                std::process::abort();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(waiting.join().unwrap(), 0xbac);
        placer.stop();
        assert_eq!(placer.failure(), None);
    }
}
