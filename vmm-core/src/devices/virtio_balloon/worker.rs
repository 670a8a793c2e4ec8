//! The balloon's thread: it waits on the two queues' kick eventfds (KVM's ioeventfds) and a
//! wake-up, takes each request the driver made available through the workspace's checked
//! chain reader, reads its PFNs, gives inflated pages back to the host (a hole in the
//! guest-RAM memfd, pages.rs), puts the request on the used ring and interrupts the guest
//! through the queue's call eventfd (its MSI-X irqfd). The work per request is bounded:
//! at most MAX_PFNS PFNs are read from at most the chain's own buffers; anything the guest
//! got wrong (a PFN that is not RAM, a broken chain, a buffer outside memory) is counted,
//! logged once and otherwise ignored: the request is completed and the device goes on.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio::Desc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::pages::{RamPages, Run};
use super::shared::{Counters, Shared, State, Warned, DEFLATEQ, INFLATEQ};

/// Most PFNs one request may carry (256 MiB of pages; Linux sends at most 256). Those
/// beyond are ignored (counted), without being read.
pub const MAX_PFNS: u64 = 1 << 16;
/// Bytes read from guest memory at a time.
const CHUNK: usize = 4096;

/// One worker: the rings of one activation of the device.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub pages: Arc<RamPages>,
    pub mem: GuestMemoryMmap,
    /// The generation this worker serves; it ends when the state's moves on.
    pub generation: u64,
    /// Per queue: the kick (the guest's doorbell) and the call (its interrupt).
    pub kicks: [EventFd; 2],
    pub calls: [EventFd; 2],
}

impl Worker {
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("balloon".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        // Whatever the rings hold already (a resumed device) is served first.
        while self.serve() {
            if let Err(e) = self.wait() {
                log::error!("virtio-balloon: waiting for requests: {e}; the balloon stops");
                return;
            }
        }
    }

    /// Waits until a queue is kicked or the device wakes the worker; takes the events.
    fn wait(&self) -> std::io::Result<()> {
        let fds = [&self.kicks[0], &self.kicks[1], &self.shared.wake];
        let mut polled = fds.map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: poll on three pollfds we own (the array outlives the call), no timeout.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        }
        for (fd, p) in fds.iter().zip(polled) {
            if p.revents & libc::POLLIN != 0 {
                // Non-blocking: a value someone else took meanwhile is no matter.
                let _ = fd.read();
            }
        }
        Ok(())
    }

    /// One pass over both queues, unless the VM is stopped. False once the worker must
    /// end.
    fn serve(&self) -> bool {
        let mut state = self.shared.state.lock();
        if state.generation != self.generation {
            return false;
        }
        if state.running {
            for q in [INFLATEQ, DEFLATEQ] {
                self.serve_queue(&mut state, q);
            }
        }
        true
    }

    fn serve_queue(&self, state: &mut State, q: usize) {
        let State {
            queues,
            punch,
            log,
            counters,
            warned,
            ..
        } = state;
        let Some(queue) = queues.as_mut().map(|queues| &mut queues[q]) else {
            return;
        };
        let mut requests = Requests {
            pages: &self.pages,
            mem: &self.mem,
            punch: *punch,
            log: log.as_ref(),
            counters,
            warned,
        };
        let mut completed = false;
        while let Some((head, chain)) = virtio::pop_chain(queue, &self.mem) {
            match chain {
                Ok(descs) => requests.serve(q == INFLATEQ, &descs),
                Err(e) => requests.bad_request(&e.to_string()),
            }
            if let Err(e) = queue.add_used(&self.mem, head, 0) {
                log::error!("virtio-balloon: queue {q}: the used ring: {e}");
                break;
            }
            completed = true;
            if let Some(log) = requests.log {
                let used = queue.used_ring();
                log.mark_range(used, used + 6 + 8 * u64::from(queue.size()));
            }
        }
        if completed && queue.needs_notification(&self.mem).unwrap_or(true) {
            if let Err(e) = self.calls[q].write(1) {
                log::error!("virtio-balloon: queue {q}: interrupting the guest: {e}");
            }
        }
    }
}

/// Serves requests of one pass, with the state it needs.
struct Requests<'a> {
    pages: &'a RamPages,
    mem: &'a GuestMemoryMmap,
    punch: bool,
    log: Option<&'a ipc::PageLog>,
    counters: &'a mut Counters,
    warned: &'a mut Warned,
}

impl Requests<'_> {
    fn bad_request(&mut self, why: &str) {
        self.counters.bad_requests += 1;
        if !self.warned.bad_request {
            self.warned.bad_request = true;
            log::warn!("virtio-balloon: a request cannot be read ({why}): completed as it is; later ones are only counted");
        }
    }

    fn ignored(&mut self, what: std::fmt::Arguments) {
        self.counters.ignored += 1;
        if !self.warned.ignored {
            self.warned.ignored = true;
            log::warn!("virtio-balloon: {what}: ignored; later ones are only counted");
        }
    }

    /// An inflate (`inflate`) or deflate request whose chain is `descs`.
    fn serve(&mut self, inflate: bool, descs: &[Desc]) {
        let before = *self.counters;
        let mut run: Option<Run> = None;
        let read = for_each_pfn(self.mem, descs, |pfn| {
            let Some(page) = self.pages.page(pfn) else {
                self.ignored(format_args!("PFN {pfn:#x} is not guest RAM"));
                return;
            };
            if !inflate {
                self.counters.deflated += 1;
                return;
            }
            if !run.as_mut().is_some_and(|r| r.extend(page)) {
                if let Some(done) = run.replace(Run {
                    first: page,
                    pages: 1,
                }) {
                    self.give_back(&done);
                }
            }
        });
        if let Some(done) = run {
            self.give_back(&done);
        }
        if read.beyond > 0 {
            self.counters.ignored += read.beyond - 1;
            self.ignored(format_args!(
                "{} PFNs beyond the {MAX_PFNS} one request may carry",
                read.beyond
            ));
        }
        if let Some(why) = read.unreadable {
            self.bad_request(&why);
        }
        log::debug!(
            "virtio-balloon: {} request of {} PFNs: {:?} before, {:?} after",
            if inflate { "inflate" } else { "deflate" },
            read.pfns,
            before,
            self.counters
        );
    }

    /// Gives `run` back to the host (unless postcopy listens), marked dirty for a
    /// migration under way: the page it sent is stale, it must send a zero page.
    fn give_back(&mut self, run: &Run) {
        if !self.punch {
            self.counters.kept += run.pages;
            return;
        }
        match self.pages.punch(run) {
            Ok(()) => {
                self.counters.given_back += run.pages;
                if let Some(log) = self.log {
                    let (start, end) = run.guest_range();
                    log.mark_range(start, end);
                }
            }
            Err(e) => {
                self.counters.punch_errors += 1;
                if !self.warned.punch {
                    self.warned.punch = true;
                    log::error!(
                        "virtio-balloon: giving {} pages at {:#x} back to the host: {e}; later failures are only counted",
                        run.pages,
                        run.first.gpa
                    );
                }
            }
        }
    }
}

/// How a request's PFNs read.
#[derive(Debug, Default, PartialEq, Eq)]
struct PfnsRead {
    /// PFNs handed to the callback.
    pfns: u64,
    /// PFNs beyond MAX_PFNS, not read.
    beyond: u64,
    /// Why the rest could not be read (a buffer outside guest memory).
    unreadable: Option<String>,
}

/// Calls `each` with every PFN of a request: its device-readable buffers read as one array
/// of little-endian u32 (a PFN may straddle two buffers, as QEMU reads them; a last partial
/// one is ignored; device-writable buffers play no part), at most MAX_PFNS of them.
fn for_each_pfn(mem: &GuestMemoryMmap, descs: &[Desc], mut each: impl FnMut(u32)) -> PfnsRead {
    let mut read = PfnsRead::default();
    let mut word = [0u8; 4];
    let mut have = 0;
    let mut chunk = [0u8; CHUNK];
    for d in descs.iter().filter(|d| !d.writable) {
        let len = u64::from(d.len);
        let mut done = 0u64;
        while done < len {
            if read.pfns == MAX_PFNS {
                // The rest is counted, never read.
                let rest = have as u64 + (len - done);
                let later: u64 = descs
                    .iter()
                    .skip_while(|x| !std::ptr::eq(*x, d))
                    .skip(1)
                    .filter(|x| !x.writable)
                    .map(|x| u64::from(x.len))
                    .sum();
                read.beyond += (rest + later) / 4;
                return read;
            }
            let n = (len - done).min(CHUNK as u64) as usize;
            let at = d.addr.checked_add(done).map(GuestAddress);
            let Some(Ok(())) = at.map(|at| mem.read_slice(&mut chunk[..n], at)) else {
                read.unreadable = Some(format!(
                    "{n} bytes at {:#x} are not guest memory",
                    d.addr.wrapping_add(done)
                ));
                return read;
            };
            for &byte in &chunk[..n] {
                word[have] = byte;
                have += 1;
                if have == 4 {
                    have = 0;
                    if read.pfns < MAX_PFNS {
                        each(u32::from_le_bytes(word));
                        read.pfns += 1;
                    } else {
                        read.beyond += 1;
                    }
                }
            }
            done += n as u64;
        }
    }
    read
}

/// A queue as the driver laid it out, ready for the worker (None, with why, if its rings
/// are not in guest memory).
pub fn queue(
    mem: &GuestMemoryMmap,
    size: u16,
    (desc, avail, used): (u64, u64, u64),
    max: u16,
) -> Result<Queue, String> {
    let mut q = Queue::new(max).map_err(|e| format!("a queue of {max}: {e}"))?;
    q.set_size(size);
    q.try_set_desc_table_address(GuestAddress(desc))
        .and_then(|()| q.try_set_avail_ring_address(GuestAddress(avail)))
        .and_then(|()| q.try_set_used_ring_address(GuestAddress(used)))
        .map_err(|e| format!("the rings: {e}"))?;
    q.set_ready(true);
    if !q.is_valid(mem) {
        return Err(format!(
            "a queue of {size} at {desc:#x}/{avail:#x}/{used:#x} is not usable"
        ));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn pfns(mem: &GuestMemoryMmap, descs: &[Desc]) -> (Vec<u32>, PfnsRead) {
        let mut got = Vec::new();
        let read = for_each_pfn(mem, descs, |p| got.push(p));
        (got, read)
    }

    fn desc(addr: u64, len: u32, writable: bool) -> Desc {
        Desc {
            addr,
            len,
            writable,
        }
    }

    #[test]
    fn pfns_are_read_across_buffers_and_writable_ones_skipped() {
        let mem = memory();
        let bytes: Vec<u8> = [1u32, 2, 3, 0xdead_beef]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        mem.write_slice(&bytes[..6], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[0xff; 8], GuestAddress(0x3000)).unwrap();
        mem.write_slice(&bytes[6..], GuestAddress(0x2000)).unwrap();
        let descs = [
            desc(0x1000, 6, false),
            desc(0x3000, 8, true),
            // Ten bytes: two PFNs and two bytes that make none.
            desc(0x2000, 12, false),
        ];
        let (got, read) = pfns(&mem, &descs);
        assert_eq!(got, vec![1, 2, 3, 0xdead_beef]);
        assert_eq!(
            read,
            PfnsRead {
                pfns: 4,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_buffer_outside_memory_ends_the_request_after_what_was_read() {
        let mem = memory();
        mem.write_slice(&7u32.to_le_bytes(), GuestAddress(0x1000))
            .unwrap();
        let descs = [desc(0x1000, 4, false), desc(0xfffe, 8, false)];
        let (got, read) = pfns(&mem, &descs);
        assert_eq!(got, vec![7]);
        assert!(read.unreadable.is_some(), "{read:?}");
        let (got, read) = pfns(&mem, &[desc(u64::MAX - 1, 8, false)]);
        assert!(got.is_empty() && read.unreadable.is_some());
    }

    #[test]
    fn pfns_beyond_the_limit_are_counted_unread() {
        let mem = memory();
        // MAX_PFNS from one 4 KiB page read again and again, then 12 more bytes in the
        // same buffer and 8 in another one that is not even in memory.
        let per_page = 1024;
        let mut descs: Vec<Desc> = (0..MAX_PFNS / per_page)
            .map(|_| desc(0x4000, 4096, false))
            .collect();
        descs.push(desc(0x4000, 12, false));
        descs.push(desc(0xffff_0000, 8, false));
        let (got, read) = pfns(&mem, &descs);
        assert_eq!(got.len() as u64, MAX_PFNS);
        assert_eq!(read.beyond, 5);
        assert_eq!(read.unreadable, None);
    }
}
