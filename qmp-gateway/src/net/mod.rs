//! The gateway's network layer: host backends (netdevs, opened by the gateway), the NICs
//! the guest sees (each served by its own net daemon over vhost-user), and the network
//! QMP commands: netdev_add, netdev_del, set_link, query-rx-filter, with
//! NIC_RX_FILTER_CHANGED as QEMU sends it, and our __io.flotilla_net-daemon-restart. A
//! daemon that dies is restarted with the same backend and vmm-core reconnects; the guest
//! sees frames pause.

pub mod error;
pub mod hotplug;
mod info;
pub mod netdev;
pub mod nic;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ipc::{MigratedNic, NetRequest, NicLaunch, RxFilterState, VmmRequest};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::children::daemon::serves;
use crate::children::link::VmmLink;
use crate::children::sandbox::Policy;
use crate::children::supervise::{Death, Supervised, Supervision};
use crate::events::{DaemonExited, DaemonRestarted, Event, EventBus};
use crate::fdstore::{Charge, NamedFds};
use crate::sockets::{bind_private, RuntimeDir};
pub use error::NetError;
use netdev::{ClientInfo, Netdev, NetdevSpec};
use nic::{Hooks, NetProtocol, Nic};

/// How a command names a NIC: by its netdev (QMP's "device", the host side's name), or by
/// its own id or QOM path (QMP's "id").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicRef<'a> {
    Netdev(&'a str),
    Nic(&'a str),
}

impl<'a> NicRef<'a> {
    /// QMP's "exactly one of device and id".
    pub fn exactly_one(device: Option<&'a str>, id: Option<&'a str>) -> Result<Self, NetError> {
        match (device, id) {
            (Some(d), None) => Ok(NicRef::Netdev(d)),
            (None, Some(i)) => Ok(NicRef::Nic(i)),
            _ => Err(NetError::NeedDeviceOrId),
        }
    }

    fn name(&self) -> &'a str {
        match self {
            NicRef::Netdev(n) | NicRef::Nic(n) => n,
        }
    }

    fn names(&self, nic: &Nic) -> bool {
        match self {
            NicRef::Netdev(n) => nic.netdev.as_deref() == Some(*n),
            NicRef::Nic(n) => nic.is_named(n),
        }
    }
}

/// A NIC about to be made over a netdev.
struct NewNic {
    /// Its net client name.
    id: String,
    qdev_id: String,
    qom_path: String,
    mac: Option<[u8; 6]>,
    slot: u8,
}

/// QEMU's first automatic MAC; NIC n without mac= gets this plus n.
const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[derive(Default)]
struct State {
    /// Backends no NIC uses (added by netdev_add, or given without a NIC).
    spare: Vec<Netdev>,
    nics: Vec<Nic>,
    /// The next NIC's index (in vmm-core's requests): never reused while the VM lives.
    next_index: u32,
}

impl State {
    fn id_taken(&self, id: &str) -> bool {
        self.spare.iter().any(|n| n.id == id)
            || self.nics.iter().any(|n| n.netdev.as_deref() == Some(id))
    }
}

pub struct NetLayer {
    state: Mutex<State>,
    /// What every NIC's daemon reports to (the event bus among it).
    hooks: Hooks,
    supervision: Supervision,
    vmm: Arc<VmmLink>,
    binary: PathBuf,
    runtime: RuntimeDir,
}

/// QEMU's RxFilterInfo for one NIC.
fn rx_filter_info(name: &str, f: &RxFilterState) -> Value {
    let state = |none: bool, all: bool| {
        if none {
            "none"
        } else if all {
            "all"
        } else {
            "normal"
        }
    };
    let macs =
        |list: &[[u8; 6]]| -> Vec<String> { list.iter().map(ipc::host::format_mac).collect() };
    // QEMU lists VLAN ids from the highest down; without VLAN filtering all pass.
    let vlan_table: Vec<u16> = if f.vlan_filtering {
        let mut v = f.vlans.clone();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    } else {
        (0..4096).rev().collect()
    };
    json!({
        "name": name,
        "promiscuous": f.promiscuous,
        "multicast": state(f.no_multi, f.all_multi),
        "unicast": state(f.no_uni, f.all_uni),
        "vlan": if f.vlan_filtering { "normal" } else { "all" },
        "broadcast-allowed": !f.no_bcast,
        "multicast-overflow": f.multicast_overflow,
        "unicast-overflow": f.unicast_overflow,
        "main-mac": ipc::host::format_mac(&f.main_mac),
        "vlan-table": vlan_table,
        "unicast-table": macs(&f.unicast),
        "multicast-table": macs(&f.multicast),
    })
}

impl NetLayer {
    pub fn new(
        events: Arc<EventBus>,
        vmm: Arc<VmmLink>,
        binary: PathBuf,
        sandbox: Policy,
    ) -> std::io::Result<NetLayer> {
        let supervision = Supervision::new(events.clone());
        Ok(NetLayer {
            state: Mutex::new(State::default()),
            hooks: Hooks {
                events,
                deaths: supervision.deaths(),
                sandbox,
            },
            supervision,
            vmm,
            binary,
            runtime: RuntimeDir::create()?,
        })
    }

    /// `--netdev`: a backend the command line opened (a NIC may take it).
    pub fn add_netdev(&self, netdev: Netdev) -> Result<(), NetError> {
        let mut state = self.state.lock();
        if state.id_taken(&netdev.id) {
            return Err(NetError::NetdevIdTaken(netdev.id.clone()));
        }
        state.spare.push(netdev);
        Ok(())
    }

    /// A new connection to each NIC's daemon, in launch order, for a vmm-core that takes
    /// over the VM (a live upgrade).
    pub fn frontend_connections(&self) -> Result<Vec<OwnedFd>, NetError> {
        let state = self.state.lock();
        let mut nics: Vec<&Nic> = state.nics.iter().collect();
        nics.sort_by_key(|n| n.index);
        nics.iter().map(|n| Ok(n.connect()?.into())).collect()
    }

    /// Starts the daemon of a new NIC over `netdev` (which goes back to the spare ones
    /// if it fails).
    fn attach(
        &self,
        state: &mut State,
        netdev: Netdev,
        new: NewNic,
    ) -> Result<(NicLaunch, OwnedFd), NetError> {
        let NewNic {
            id,
            qdev_id,
            qom_path,
            mac,
            slot,
        } = new;
        let index = state.next_index;
        // Taken even if the start fails: an index is never given twice.
        state.next_index += 1;
        let mac = mac.unwrap_or_else(|| {
            let mut mac = DEFAULT_MAC;
            mac[5] = mac[5].wrapping_add(index as u8);
            mac
        });
        let socket = self.runtime.path().join(format!("nic{index}.sock"));
        let listener = match bind_private(&socket) {
            Ok(l) => l,
            Err(e) => {
                state.spare.push(netdev);
                return Err(e.into());
            }
        };
        let mut nic = Nic {
            index,
            id: id.clone(),
            qom_path,
            netdev: Some(netdev.id.clone()),
            backend: ClientInfo {
                numbered: true,
                ..netdev.client.clone()
            },
            made: netdev::next_made(),
            mac,
            queue_pairs: netdev.fds.len() as u32,
            kind: netdev.kind,
            backend_fds: netdev.fds,
            charge: netdev.charge,
            listener,
            socket,
            binary: self.binary.clone(),
            daemon: None,
            link_up: true,
            last_filter: Arc::new(Mutex::new(RxFilterState {
                main_mac: mac,
                ..RxFilterState::default()
            })),
            served: false,
            notify: Arc::new(AtomicBool::new(true)),
            started: Instant::now(),
            failures: 0,
            hold: false,
        };
        let started = nic
            .start(&self.hooks)
            .and_then(|pid| Ok((pid, nic.connect()?)));
        let (pid, stream) = match started {
            Ok(s) => s,
            Err(error) => {
                nic.stop();
                state.spare.push(nic.into_netdev());
                return Err(NetError::Nic {
                    id,
                    error: Box::new(error),
                });
            }
        };
        log::info!(
            "NIC {id}: {} {}, net daemon pid {pid}",
            nic.backend.driver,
            nic.backend.text
        );
        let launch = NicLaunch {
            index,
            slot: Some(slot),
            id,
            // `id` defaults to QEMU's net client name (virtio-net-pci.N); the device
            // itself has a qdev id only if given one, as in QEMU.
            qdev_id,
            mac,
            queue_pairs: nic.queue_pairs,
        };
        state.nics.push(nic);
        Ok((launch, stream.into()))
    }

    /// Replaces NIC `id`'s daemon (stopping it if it runs) with a new one, from `binary`
    /// if given (kept for later restarts only if it starts), and hands vmm-core a
    /// connection to it. Returns the new pid.
    fn restart_nic(&self, id: &str, binary: Option<PathBuf>) -> Result<u32, NetError> {
        self.restart_nic_if(id, binary, |_| true)
            .map(|pid| pid.expect("an unconditional restart starts a daemon"))
    }

    /// Restarts NIC `id`'s daemon if `wanted` says so of the NIC (checked under the
    /// lock the restart holds); the new pid, or None if it was not wanted.
    fn restart_nic_if(
        &self,
        id: &str,
        binary: Option<PathBuf>,
        wanted: impl FnOnce(&Nic) -> bool,
    ) -> Result<Option<u32>, NetError> {
        let mut state = self.state.lock();
        let nic = state
            .nics
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| NetError::DeviceNotFound(id.to_string()))?;
        if nic.netdev.is_none() {
            return Err(NetError::NoBackend(id.to_string()));
        }
        if !wanted(nic) {
            return Ok(None);
        }
        if let Some(how) = nic.stop() {
            log::info!("NIC {id}: net daemon stopped ({how})");
        }
        let previous = binary.map(|b| std::mem::replace(&mut nic.binary, b));
        let started = nic.start(&self.hooks).and_then(|pid| {
            let stream = nic.connect()?;
            self.vmm.request(
                VmmRequest::NicReconnect { nic: nic.index },
                &[stream.as_fd()],
            )?;
            Ok(pid)
        });
        match started {
            Ok(pid) => {
                log::info!("NIC {id}: net daemon pid {pid} serves it now");
                Ok(Some(pid))
            }
            Err(e) => {
                nic.stop();
                if let Some(previous) = previous {
                    nic.binary = previous;
                }
                Err(e)
            }
        }
    }

    /// A restart asked for over QMP (our extension): the failure count starts over, and
    /// the outcome is announced here rather than by the supervisor, which leaves a NIC
    /// whose requested restart failed alone until the next request. Returns the new pid.
    pub fn restart_requested(&self, nic: NicRef, binary: Option<PathBuf>) -> Result<u32, NetError> {
        let id = {
            let mut state = self.state.lock();
            let found = state
                .nics
                .iter_mut()
                .find(|n| nic.names(n))
                .ok_or_else(|| NetError::DeviceNotFound(nic.name().to_string()))?;
            found.failures = 0;
            found.hold = true;
            found.id.clone()
        };
        let result = self.restart_nic(&id, binary);
        let event = match &result {
            Ok(pid) => Event::NetDaemonRestarted(DaemonRestarted {
                device: id,
                pid: *pid,
            }),
            Err(e) => Event::NetDaemonExited(DaemonExited {
                device: id,
                pid: None,
                reason: format!("failed to start: {e}"),
                restart_in_ms: None,
            }),
        };
        self.hooks.events.emit(event);
        result
    }

    /// netdev_add: opens the backend `spec` describes (`fd=` names one of the client's
    /// `named` fds); its fds stay charged with `charge` while it exists.
    pub fn netdev_add(
        &self,
        spec: &NetdevSpec,
        named: &NamedFds,
        charge: Charge,
    ) -> Result<(), NetError> {
        let mut state = self.state.lock();
        if state.id_taken(&spec.id) {
            return Err(NetError::DuplicateId(spec.id.clone()));
        }
        let mut netdev = spec.open(Some(named))?;
        netdev.charge = Some(charge);
        log::info!(
            "netdev {}: {} {}",
            netdev.id,
            netdev.client.driver,
            netdev.client.text
        );
        state.spare.push(netdev);
        Ok(())
    }

    /// Removes a backend; a NIC that used it keeps running with its link down, as
    /// with QEMU.
    pub fn netdev_del(&self, id: &str) -> Result<(), NetError> {
        let mut state = self.state.lock();
        if let Some(pos) = state.spare.iter().position(|n| n.id == id) {
            state.spare.remove(pos);
            return Ok(());
        }
        let nic = state
            .nics
            .iter_mut()
            .find(|n| n.netdev.as_deref() == Some(id))
            .ok_or_else(|| NetError::DeviceNotFound(id.to_string()))?;
        nic.rx_filter();
        nic.netdev = None;
        nic.link_up = false;
        if let Some(how) = nic.stop() {
            log::info!(
                "NIC {}: netdev {id} removed, net daemon stopped ({how})",
                nic.id
            );
        }
        nic.backend_fds.clear();
        self.vmm.request(
            VmmRequest::NicSetLink {
                nic: nic.index,
                up: false,
            },
            &[],
        )?;
        Ok(())
    }

    /// set_link: `name` is a NIC or the netdev behind one (the guest sees either).
    pub fn set_link(&self, name: &str, up: bool) -> Result<(), NetError> {
        let mut state = self.state.lock();
        if state.spare.iter().any(|n| n.id == name) {
            // A backend without a NIC: nobody to tell.
            return Ok(());
        }
        let nic = state
            .nics
            .iter_mut()
            .find(|n| n.id == name || n.netdev.as_deref() == Some(name))
            .ok_or_else(|| NetError::DeviceNotFound(name.to_string()))?;
        nic.link_up = up;
        if let Some(d) = &nic.daemon {
            d.link.request(NetRequest::SetLink { up }, &[])?;
        }
        self.vmm
            .request(VmmRequest::NicSetLink { nic: nic.index, up }, &[])?;
        Ok(())
    }

    /// One round of the self-announcement after a migration came in: each NIC whose
    /// daemon runs sends its RARP frame (a NIC whose link is down sends none).
    pub fn announce(&self) {
        for (id, link) in self.daemon_links() {
            if let Err(e) = link.request(NetRequest::Announce, &[]) {
                log::warn!("NIC {id}: announcing it: {e}");
            }
        }
    }

    /// Each NIC whose daemon runs, with its link (taken out of the lock: the calls on it
    /// wait for the daemon).
    fn daemon_links(&self) -> Vec<(String, Arc<crate::children::link::Link<NetProtocol>>)> {
        (self.state.lock().nics.iter())
            .filter_map(|n| Some((n.id.clone(), n.daemon.as_ref()?.link.clone())))
            .collect()
    }

    /// As `BlockLayer::userfault`, for each NIC's daemon.
    pub fn userfault(&self, device: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
        for (id, link) in self.daemon_links() {
            link.request(NetRequest::Userfault, &[device])
                .map_err(|e| format!("NIC {id}: {e}"))?;
        }
        Ok(())
    }

    /// Each NIC's receive filter, in launch order (a migration's source, the VM
    /// stopped).
    pub fn rx_filters(&self) -> Vec<RxFilterState> {
        let mut state = self.state.lock();
        state.nics.iter_mut().map(|n| n.rx_filter()).collect()
    }

    /// A migration's destination: each NIC takes up the filter the guest programmed at
    /// the source (`filters`, in launch order), now and after any restart of its daemon.
    pub fn restore_rx_filters(&self, filters: Vec<RxFilterState>) -> Result<(), NetError> {
        let mut state = self.state.lock();
        if filters.len() != state.nics.len() {
            return Err(NetError::Migration(format!(
                "the source sent the filters of {} NICs, this VM has {}",
                filters.len(),
                state.nics.len()
            )));
        }
        for (nic, filter) in state.nics.iter_mut().zip(filters) {
            *nic.last_filter.lock() = filter.clone();
            nic.served = true;
            if let Some(d) = &nic.daemon {
                d.link
                    .request(NetRequest::RestoreRxFilter(Box::new(filter)), &[])?;
            }
        }
        Ok(())
    }

    /// What each NIC's host side keeps, in launch order, for a migration (the source's,
    /// the VM stopped).
    pub fn migrated_nics(&self) -> Vec<MigratedNic> {
        let mut state = self.state.lock();
        (state.nics.iter_mut())
            .map(|n| MigratedNic {
                filter: n.rx_filter(),
                link_up: n.link_up,
            })
            .collect()
    }

    /// A migration's destination: each NIC takes up the source's filter and link (the
    /// guest's view of the link comes with vmm-core's state).
    pub fn restore_migrated_nics(&self, nics: Vec<MigratedNic>) -> Result<(), NetError> {
        let (filters, links): (Vec<_>, Vec<_>) =
            nics.into_iter().map(|n| (n.filter, n.link_up)).unzip();
        self.restore_rx_filters(filters)?;
        let mut state = self.state.lock();
        for (nic, up) in state.nics.iter_mut().zip(links) {
            nic.link_up = up;
            if let Some(d) = &nic.daemon {
                d.link.request(NetRequest::SetLink { up }, &[])?;
            }
        }
        Ok(())
    }

    /// query-rx-filter: each NIC's receive filter (or the one `name` names).
    pub fn query_rx_filter(&self, name: Option<&str>) -> Result<Value, NetError> {
        let mut state = self.state.lock();
        if let Some(name) = name {
            if !state.nics.iter().any(|n| n.id == name) {
                return Err(if state.id_taken(name) {
                    NetError::NotANic(name.to_string())
                } else {
                    NetError::NoSuchClient(name.to_string())
                });
            }
        }
        let out: Vec<Value> = state
            .nics
            .iter_mut()
            .filter(|n| name.is_none_or(|want| n.id == want))
            .map(|n| {
                let f = n.rx_filter();
                // Reading the filter turns its change event back on.
                n.notify.store(true, Ordering::SeqCst);
                rx_filter_info(&n.id, &f)
            })
            .collect();
        Ok(Value::Array(out))
    }

    /// Stops every daemon (after vmm-core, their frontend, is gone).
    pub fn shutdown(&self) {
        self.supervision.stop();
        let mut state = self.state.lock();
        // Side by side, as the block daemons stop.
        std::thread::scope(|scope| {
            for nic in &mut state.nics {
                scope.spawn(move || nic.stop());
            }
        });
        self.runtime.remove();
    }
}

impl Supervised for NetLayer {
    const DEVICE: &'static str = "NIC";
    type Daemon = NetProtocol;
    const THREAD: &'static str = "net-supervisor";
    const EXITED: fn(DaemonExited) -> Event = Event::NetDaemonExited;
    const RESTARTED: fn(DaemonRestarted) -> Event = Event::NetDaemonRestarted;
    type Error = NetError;

    fn supervision(&self) -> &Supervision {
        &self.supervision
    }

    fn reap(&self, id: &str) -> Option<Death> {
        let mut state = self.state.lock();
        let nic = state.nics.iter_mut().find(|n| n.id == id)?;
        // A NIC whose netdev was deleted has no daemon to bring back.
        nic.netdev.as_ref()?;
        if nic.hold {
            // Its failed start was reported to whoever asked for it.
            nic.stop();
            return None;
        }
        Death::reap(&mut nic.daemon, nic.started, &mut nic.failures)
    }

    fn restart(&self, id: &str) -> Result<Option<u32>, NetError> {
        self.restart_nic_if(id, None, |nic| !nic.hold && !serves(&nic.daemon))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_filter_info_has_qemus_shape() {
        let f = RxFilterState {
            promiscuous: true,
            all_multi: true,
            no_bcast: true,
            main_mac: DEFAULT_MAC,
            unicast: vec![[2, 0, 0, 0, 0, 1]],
            multicast: vec![[1, 0, 0x5e, 0, 0, 1]],
            vlan_filtering: true,
            vlans: vec![0, 4],
            ..RxFilterState::default()
        };
        let v = rx_filter_info("nic0", &f);
        assert_eq!(
            v,
            json!({
                "name": "nic0", "promiscuous": true, "multicast": "all", "unicast": "normal",
                "vlan": "normal", "broadcast-allowed": false, "multicast-overflow": false,
                "unicast-overflow": false, "main-mac": "52:54:00:12:34:56",
                "vlan-table": [4, 0], "unicast-table": ["02:00:00:00:00:01"],
                "multicast-table": ["01:00:5e:00:00:01"],
            })
        );
        let open = rx_filter_info("n", &RxFilterState::default());
        assert_eq!(open["vlan"], "all");
        assert_eq!(open["vlan-table"].as_array().map(Vec::len), Some(4096));
    }
}
