//! vmm-core's part in postcopy at the destination: its own mapping of guest RAM is
//! registered with a userfaultfd of its own (so that KVM and vmm-core's reads of a page
//! not here yet wait for the agent to place it), and each vhost-user backend opens one
//! (`Link::postcopy_listen`). The userfaultfds go to the agent, through the gateway;
//! pages are never placed here.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use ipc::userfault::{self, MappedRange, UserfaultError};
use ipc::VmmReply;
use parking_lot::Mutex;

use crate::events::PostcopyEvents;
use crate::memory::GuestRam;
use crate::vhost_user::{Link, VhostUserError};
use crate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum PostcopyError {
    #[error("postcopy needs {} (none came with the request)", userfault::DEVICE)]
    NoDevice,
    #[error("guest RAM at {0:#x} is not mapped")]
    Unmapped(u64),
    #[error(transparent)]
    Userfault(#[from] UserfaultError),
    #[error("handing over the userfaultfd: {0}")]
    Clone(std::io::Error),
    /// A backend (`name`: "disk0", "nic1") could not listen.
    #[error("{name}: {error}")]
    Backend { name: String, error: VhostUserError },
}

/// vmm-core's mapping of guest memory, one range per region: RAM's, then the DIMMs'.
pub fn ranges(ram: &GuestRam) -> Result<Vec<MappedRange>, PostcopyError> {
    let dimms = ram.hot_regions().iter().map(|h| {
        Ok(MappedRange {
            host_addr: h.mapping.as_ptr() as u64,
            size: h.size,
            guest_addr: h.guest_addr,
        })
    });
    ram.regions()
        .iter()
        .map(|r| {
            let host_addr = ram
                .host_addr(r)
                .ok_or(PostcopyError::Unmapped(r.guest_addr))?;
            Ok(MappedRange {
                host_addr,
                size: r.size,
                guest_addr: r.guest_addr,
            })
        })
        .chain(dimms)
        .collect()
}

/// vmm-core's own mapping, registered with its userfaultfd while postcopy runs. Dropped,
/// it is unregistered, which also wakes whatever waits for a page there (a vCPU, when
/// vmm-core ends before every page arrived); the userfaultfd closes with it.
pub struct Registered {
    uffd: OwnedFd,
    ranges: Vec<MappedRange>,
}

impl Registered {
    /// Registers `ranges` with `uffd`, all or (on an error) none.
    pub fn new(uffd: OwnedFd, ranges: Vec<MappedRange>) -> Result<Registered, PostcopyError> {
        let mut registered = Registered {
            uffd,
            ranges: Vec::with_capacity(ranges.len()),
        };
        for r in ranges {
            userfault::register(registered.uffd.as_fd(), r.host_addr, r.size)?;
            registered.ranges.push(r);
        }
        Ok(registered)
    }

    pub fn ranges(&self) -> &[MappedRange] {
        &self.ranges
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        for r in &self.ranges {
            if let Err(e) = userfault::unregister(self.uffd.as_fd(), r.host_addr, r.size) {
                log::warn!("postcopy: {e}");
            }
        }
    }
}

/// A link with the name the gateway knows it by ("disk0", "nic1").
type NamedLink = (String, Arc<Mutex<Link>>);

/// The links in the order of `VmmReply::Postcopy`'s backends: disks, then NICs.
fn links(vm: &Vm) -> Vec<NamedLink> {
    let disks = (vm.disks.iter()).map(|(i, d)| (format!("disk{i}"), d.link.clone()));
    let nics = (vm.nics.iter()).map(|(i, n)| (format!("nic{i}"), n.link.clone()));
    disks.chain(nics).collect()
}

/// `VmmRequest::PostcopyListen` with /dev/userfaultfd (`device`): vmm-core's mapping
/// registered, every backend listening. The reply, the fds its frame carries (vmm-core's
/// userfaultfd, then each backend's), and what `end` takes. On an error nothing is
/// left registered or listening.
pub fn listen(
    vm: &Vm,
    device: Option<OwnedFd>,
    events: PostcopyEvents,
) -> Result<(VmmReply, Vec<OwnedFd>, Registered), PostcopyError> {
    let listening = listen_with(&vm.ram, &links(vm), device, events)?;
    // A page the balloon punched now would fault to the migration, which may have
    // placed it already: the balloon keeps what it is given until the end.
    if let Some(balloon) = &vm.balloon {
        balloon.set_punch(false);
    }
    Ok(listening)
}

fn listen_with(
    ram: &GuestRam,
    links: &[NamedLink],
    device: Option<OwnedFd>,
    events: PostcopyEvents,
) -> Result<(VmmReply, Vec<OwnedFd>, Registered), PostcopyError> {
    let device = device.ok_or(PostcopyError::NoDevice)?;
    let uffd = userfault::create(device.as_fd())?;
    let handed = uffd.try_clone().map_err(PostcopyError::Clone)?;
    let registered = Registered::new(uffd, ranges(ram)?)?;
    let mut backends = Vec::new();
    let mut fds = vec![handed];
    for (told, (name, link)) in links.iter().enumerate() {
        let index = backends.len() as u32;
        let listening = link.lock().postcopy_listen(index, events.clone());
        match listening {
            Ok(Some(backend_uffd)) => {
                backends.push(name.clone());
                fds.push(OwnedFd::from(backend_uffd));
            }
            Ok(None) => {}
            Err(error) => {
                end_links(&links[..=told]);
                return Err(PostcopyError::Backend {
                    name: name.clone(),
                    error,
                });
            }
        }
    }
    let reply = VmmReply::Postcopy {
        ranges: registered.ranges().to_vec(),
        backends,
    };
    Ok((reply, fds, registered))
}

/// `VmmRequest::PostcopyEnd`: every page is here. vmm-core's mapping is ordinary memory
/// again, each listening backend is told, and backends that connected meanwhile are set
/// up.
pub fn end(vm: &Vm, registered: Registered) {
    drop(registered);
    end_links(&links(vm));
    if let Some(balloon) = &vm.balloon {
        balloon.set_punch(true);
    }
}

fn end_links(links: &[NamedLink]) {
    for (_, link) in links {
        link.lock().postcopy_end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MIB;
    use crate::vhost_user::backend_requests::BackendRequests;
    use crate::vhost_user::test_backend::{events, mock, Journal};
    use crate::vhost_user::Blk;
    use vhost::vhost_user::message::VhostUserProtocolFeatures;
    use vm_memory::{Bytes, GuestAddress};

    fn device() -> OwnedFd {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(userfault::DEVICE)
            .unwrap_or_else(|e| panic!("{} is needed for postcopy: {e}", userfault::DEVICE));
        device.into()
    }

    fn uffd() -> OwnedFd {
        userfault::create(device().as_fd()).unwrap()
    }

    /// A disk link, with a mock backend offering `protocol` unless None, and what the
    /// backend is told.
    fn disk(
        name: &str,
        ram: &GuestRam,
        protocol: Option<VhostUserProtocolFeatures>,
    ) -> (NamedLink, Journal) {
        let journal = Journal::default();
        let blk = Box::new(Blk::new(1));
        let mut link = Link::new(name.into(), blk, ram, BackendRequests::new()).unwrap();
        if let Some(protocol) = protocol {
            link.connect(mock(&journal, protocol)).unwrap();
        }
        ((name.into(), Arc::new(Mutex::new(link))), journal)
    }

    /// What each backend was told.
    fn told(links: &[NamedLink], journals: &[Journal]) -> Vec<Vec<String>> {
        links.iter().for_each(|(_, l)| l.lock().sync_backend());
        journals.iter().map(|j| j.lock().unwrap().clone()).collect()
    }

    /// Backends listen in order, each named with the fd of its userfaultfd; a link
    /// without a backend now is not one of them. Needs /dev/userfaultfd (root here).
    #[test]
    fn every_connected_backend_listens() {
        let ram = GuestRam::new(4).unwrap();
        let pagefault = Some(VhostUserProtocolFeatures::PAGEFAULT);
        let (links, journals): (Vec<_>, Vec<_>) = [
            disk("disk0", &ram, pagefault),
            disk("disk1", &ram, None),
            disk("nic0", &ram, pagefault),
        ]
        .into_iter()
        .unzip();
        let (reply, fds, registered) =
            listen_with(&ram, &links, Some(device()), events(&journals[0])).unwrap();
        assert_eq!(
            reply,
            VmmReply::Postcopy {
                ranges: ranges(&ram).unwrap(),
                backends: vec!["disk0".into(), "nic0".into()],
            }
        );
        assert_eq!(fds.len(), 3);
        let listening = ["POSTCOPY_ADVISE", "POSTCOPY_LISTEN"];
        assert_eq!(told(&links, &journals), [&listening[..], &[], &listening]);
        end_links(&links);
        drop(registered);
        let ended = ["POSTCOPY_ADVISE", "POSTCOPY_LISTEN", "POSTCOPY_END"];
        assert_eq!(told(&links, &journals), [&ended[..], &[], &ended]);
    }

    /// A backend that cannot listen fails it, named; those before it are ended.
    #[test]
    fn a_backend_that_cannot_listen_undoes_the_others() {
        let ram = GuestRam::new(4).unwrap();
        let (links, journals): (Vec<_>, Vec<_>) = [
            disk("disk0", &ram, Some(VhostUserProtocolFeatures::PAGEFAULT)),
            disk("disk1", &ram, Some(VhostUserProtocolFeatures::empty())),
        ]
        .into_iter()
        .unzip();
        let e = listen_with(&ram, &links, Some(device()), events(&journals[0])).err();
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some(
                "disk1: the vhost-user backend cannot take postcopy \
                 (no VHOST_USER_PROTOCOL_F_PAGEFAULT)"
            )
        );
        let ended = ["POSTCOPY_ADVISE", "POSTCOPY_LISTEN", "POSTCOPY_END"];
        assert_eq!(told(&links, &journals), [&ended[..], &[]]);
    }

    #[test]
    fn listening_needs_the_device() {
        let ram = GuestRam::new(4).unwrap();
        let e = listen_with(&ram, &[], None, events(&Journal::default())).err();
        assert!(matches!(e, Some(PostcopyError::NoDevice)));
    }

    #[test]
    fn ranges_are_where_guest_ram_is_mapped() {
        let ram = GuestRam::new(4).unwrap();
        let r = ranges(&ram).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].guest_addr, 0);
        assert_eq!(r[0].size, 4 * MIB);
        ram.memory()
            .write_obj(0x5a5a_u16, GuestAddress(0x2346))
            .unwrap();
        let host = r[0].host(0x2346).unwrap();
        // SAFETY: inside guest RAM's mapping, which `ram` keeps.
        assert_eq!(unsafe { (host as *const u16).read_volatile() }, 0x5a5a);
    }

    /// A page punched out of guest RAM faults to the userfaultfd while registered (the
    /// reader waits until it is placed); once unregistered (dropped), a hole reads as
    /// zero at once, though the agent still holds the userfaultfd. Needs /dev/userfaultfd (root here).
    #[test]
    fn registered_ram_waits_for_missing_pages_until_dropped() {
        let ram = GuestRam::new(4).unwrap();
        ram.memory()
            .write_obj(0x1122_3344_u32, GuestAddress(0x1000))
            .unwrap();
        ram.clear().unwrap();
        let r = ranges(&ram).unwrap();
        let registered = Registered::new(uffd(), r.clone()).unwrap();
        let host = r[0].host(0x3008).unwrap();
        // SAFETY: inside guest RAM's mapping, which outlives the thread (joined below).
        let reader = std::thread::spawn(move || unsafe { (host as *const u64).read_volatile() });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let fault = loop {
            if let Some(addr) = userfault::next_fault(registered.uffd.as_fd()).unwrap() {
                break addr;
            }
            assert!(std::time::Instant::now() < deadline, "no fault came");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(fault & !4095, host & !4095);
        let mut page = vec![0u8; 4096];
        page[8..16].copy_from_slice(&77u64.to_ne_bytes());
        userfault::copy(registered.uffd.as_fd(), host & !4095, &page).unwrap();
        assert_eq!(reader.join().unwrap(), 77);
        // The agent's copy keeps the userfaultfd open: only unregistering lets go.
        let _agent = registered.uffd.try_clone().unwrap();
        drop(registered);
        let hole = r[0].host(0x1000).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // SAFETY: inside guest RAM's mapping; `ram` is leaked below if the read hangs.
        std::thread::spawn(move || tx.send(unsafe { (hole as *const u32).read_volatile() }));
        let read = rx.recv_timeout(std::time::Duration::from_secs(5));
        if read.is_err() {
            std::mem::forget(ram);
        }
        assert_eq!(read, Ok(0), "a hole still waits once unregistered");
    }
}
