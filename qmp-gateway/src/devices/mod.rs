//! The guest's PCI devices on bus 0 as the gateway places them: which slot each holds,
//! its qdev id and QOM path (QEMU's /machine/peripheral/ID, or
//! /machine/peripheral-anon/device[N] without an id), where it is in its life (being
//! added, on the bus, asked to leave), and what vmm-core was told about it (the
//! `DiskLaunch`/`NicLaunch` a new vmm-core recreates it from, slot included). Slot 0 is
//! the host bridge; the launch's devices take slots 1.. in launch order (disks, then
//! NICs), device_add the lowest free one or the one asked for. device_del looks devices
//! up here by id or QOM path, as QEMU's find_device_state does. hotplug.rs runs
//! device_add and device_del with the layers and vmm-core. DIMMs (pc-dimm) share the ids
//! and paths but sit on no bus: each holds a memory slot (dimm.rs); ospm.rs names the
//! device of each ACPI hotplug slot the guest reports on (_OST). command_line.rs reads the
//! command line's `--device` (disks, NICs, the balloon, DIMMs) for the launch.

pub mod command_line;
pub mod cpu;
pub mod dimm;
pub mod error;
pub mod hotplug;
pub mod ospm;
pub mod placement;
pub mod spec;

use std::time::{Duration, Instant};

use ipc::{DiskLaunch, NicLaunch};

pub use error::DeviceError;

/// The devices a vmm-core is launched with (`Devices::launch_lists`).
#[derive(Debug, Default)]
pub struct LaunchLists {
    pub disks: Vec<DiskLaunch>,
    pub nics: Vec<NicLaunch>,
    pub dimms: Vec<placement::Dimm>,
}
use spec::{Addr, Model};

/// Slots 0 to 31.
const SLOTS: u8 = 32;

/// What sits in slot 0, as QEMU's GPEX names its root function (our host bridge has its
/// identity).
const HOST_BRIDGE: &str = "gpex-root";

/// The bus a virtio device's backend sits on (nothing is hot-plugged there).
const VIRTIO_BUS: &str = "virtio-bus";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// device_add is under way: not there yet for anyone else.
    Adding,
    Present,
    /// device_del asked the guest to let it go.
    Removing,
}

/// What vmm-core has for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Disk(DiskLaunch),
    Nic(NicLaunch),
    /// vmm-core's own balloon (no daemon): launched with the VM (LaunchConfig.balloon).
    Balloon(ipc::BalloonLaunch),
    /// A DIMM: its memory backend object and where vmm-core put it.
    Dimm(placement::Dimm),
}

impl Backend {
    /// The block or network layer's name for it.
    pub fn layer_id(&self) -> &str {
        match self {
            Backend::Disk(d) => &d.id,
            Backend::Nic(n) => &n.id,
            Backend::Balloon(_) | Backend::Dimm(_) => "",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Device {
    pub model: Model,
    pub qdev_id: Option<String>,
    pub qom_path: String,
    /// None until placed.
    pub slot: Option<u8>,
    pub phase: Phase,
    /// None while being added.
    pub backend: Option<Backend>,
    /// When device_del last asked the guest, on the VM's virtual clock (ms).
    requested_ms: u64,
    /// The iothread object it was placed on (iothread=), held while it is here (the
    /// block layer knows its disk's place there: block/iothreads.rs).
    pub iothread: Option<String>,
    /// bootindex=, taken while it is here.
    bootindex: Option<i32>,
}

impl Device {
    /// The QOM path of its virtio backend (what QEMU's events and query-block name).
    pub fn backend_path(&self) -> String {
        format!("{}/virtio-backend", self.qom_path)
    }
}

/// A device_add's place in the registry, from its id's reservation on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub qom_path: String,
}

/// QEMU's virtual clock, as far as device_del cares: it starts at 0 with the VM and
/// runs only while the VM runs.
#[derive(Debug, Default)]
struct VirtualClock {
    ran: Duration,
    running_since: Option<Instant>,
}

impl VirtualClock {
    fn set_running(&mut self, running: bool, now: Instant) {
        match (running, self.running_since) {
            (true, None) => self.running_since = Some(now),
            (false, Some(since)) => {
                self.ran += now.saturating_duration_since(since);
                self.running_since = None;
            }
            _ => {}
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        let running = self
            .running_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        (self.ran + running).as_millis() as u64
    }
}

/// What device_del did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub slot: u8,
    pub qom_path: String,
    /// The guest had been asked already (the request is made again).
    pub repeated: bool,
}

#[derive(Debug, Default)]
pub struct Devices {
    devices: Vec<Device>,
    /// QEMU's anon_count: each anonymous device takes the next number, even one whose
    /// device_add fails after its id was set.
    next_anon: u32,
    clock: VirtualClock,
}

impl Devices {
    /// Takes `id` (or the next anonymous path) for a new device, as QEMU's qdev_set_id.
    pub fn reserve(&mut self, model: Model, id: Option<&str>) -> Result<Ticket, DeviceError> {
        let qom_path = match id {
            Some(id) => {
                if self
                    .devices
                    .iter()
                    .any(|d| d.qdev_id.as_deref() == Some(id))
                {
                    return Err(DeviceError::DuplicateId(id.to_string()));
                }
                format!("/machine/peripheral/{id}")
            }
            None => {
                let n = self.next_anon;
                self.next_anon += 1;
                format!("/machine/peripheral-anon/device[{n}]")
            }
        };
        self.devices.push(Device {
            model,
            qdev_id: id.map(str::to_string),
            qom_path: qom_path.clone(),
            slot: None,
            phase: Phase::Adding,
            backend: None,
            requested_ms: 0,
            iothread: None,
            bootindex: None,
        });
        Ok(Ticket { qom_path })
    }

    fn position(&self, ticket: &Ticket) -> Option<usize> {
        self.devices
            .iter()
            .position(|d| d.qom_path == ticket.qom_path)
    }

    /// The device in `slot`, or what QEMU would name there (the host bridge).
    fn occupant(&self, slot: u8) -> Option<(&'static str, Option<&str>)> {
        if slot == 0 {
            return Some((HOST_BRIDGE, None));
        }
        self.devices
            .iter()
            .find(|d| d.slot == Some(slot))
            .map(|d| (d.model.typename(), d.qdev_id.as_deref()))
    }

    /// Gives the reserved device `addr`'s slot, or the lowest free one (QEMU's checks
    /// and texts, as its PCI bus makes them at realize).
    pub fn place(&mut self, ticket: &Ticket, addr: Option<Addr>) -> Result<u8, DeviceError> {
        let at = self
            .position(ticket)
            .ok_or_else(|| DeviceError::NotFound(ticket.qom_path.clone()))?;
        let driver = self.devices[at].model.typename();
        let slot = match addr {
            Some(Addr { slot, function }) => {
                if let Some((by, id)) = self.occupant(slot) {
                    return Err(DeviceError::SlotInUse {
                        slot,
                        function,
                        driver,
                        by,
                        by_id: id.unwrap_or("(null)").to_string(),
                    });
                }
                if function != 0 {
                    return Err(DeviceError::NotFunctionZero { slot, function });
                }
                slot
            }
            None => (1..SLOTS)
                .find(|s| self.occupant(*s).is_none())
                .ok_or(DeviceError::NoFreeSlot(driver))?,
        };
        self.devices[at].slot = Some(slot);
        Ok(slot)
    }

    /// The device is on the bus, with what vmm-core has for it.
    pub fn added(&mut self, ticket: &Ticket, backend: Backend) {
        if let Some(at) = self.position(ticket) {
            self.devices[at].phase = Phase::Present;
            self.devices[at].backend = Some(backend);
        }
    }

    /// Notes the iothread object `ticket`'s device is placed on.
    pub fn set_iothread(&mut self, ticket: &Ticket, iothread: Option<String>) {
        if let Some(at) = self.position(ticket) {
            self.devices[at].iothread = iothread;
        }
    }

    /// The reserved device takes boot index `index`, unless another device has it.
    pub fn take_bootindex(&mut self, ticket: &Ticket, index: i32) -> Result<(), DeviceError> {
        if self.devices.iter().any(|d| d.bootindex == Some(index)) {
            return Err(DeviceError::BootIndexUsed(index));
        }
        if let Some(at) = self.position(ticket) {
            self.devices[at].bootindex = Some(index);
        }
        Ok(())
    }

    /// A device vmm-core keeps no backend of ours for (a CPU) is on the machine.
    pub fn added_without_backend(&mut self, ticket: &Ticket) {
        if let Some(at) = self.position(ticket) {
            self.devices[at].phase = Phase::Present;
        }
    }

    /// A device_add that failed: its id and slot are free again (not its anonymous
    /// number, as in QEMU).
    pub fn abandon(&mut self, ticket: &Ticket) {
        if let Some(at) = self.position(ticket) {
            self.devices.remove(at);
        }
    }

    /// A device the launch made: reserved, placed in the lowest free slot and present.
    pub fn launch(
        &mut self,
        model: Model,
        id: Option<&str>,
        slot: Option<u8>,
    ) -> Result<(Ticket, u8), DeviceError> {
        let ticket = self.reserve(model, id)?;
        let addr = slot.map(|slot| Addr { slot, function: 0 });
        let slot = self.place(&ticket, addr)?;
        Ok((ticket, slot))
    }

    /// The device device_del's `id` names: its id (a path under /machine/peripheral) or
    /// a QOM path, as QEMU's find_device_state resolves it. One still being added is not
    /// there yet.
    pub fn find(&self, id: &str) -> Result<&Device, DeviceError> {
        let mut parts: Vec<&str> = Vec::new();
        if !id.starts_with('/') {
            parts.extend(["machine", "peripheral"]);
        }
        parts.extend(id.split('/').filter(|p| !p.is_empty()));
        let not_found = || DeviceError::NotFound(id.to_string());
        match parts.as_slice() {
            // Containers, not devices.
            [] | ["machine"] | ["machine", "peripheral" | "peripheral-anon" | "unattached"] => {
                Err(DeviceError::NotHotpluggable(id.to_string()))
            }
            ["machine", container @ ("peripheral" | "peripheral-anon"), name, rest @ ..] => {
                let path = format!("/machine/{container}/{name}");
                let device = self
                    .devices
                    .iter()
                    .find(|d| d.qom_path == path && d.phase != Phase::Adding)
                    .ok_or_else(not_found)?;
                match rest {
                    [] => Ok(device),
                    // Its virtio backend is a device on a bus of its own.
                    ["virtio-backend"] => Err(DeviceError::BusNoHotplug(VIRTIO_BUS)),
                    _ => Err(not_found()),
                }
            }
            _ => Err(not_found()),
        }
    }

    /// The devices in QOM container `container` (/machine/peripheral or -anon), as
    /// (name in it, QEMU type), in the order they came.
    pub fn children_of(&self, container: &str) -> Vec<(String, &'static str)> {
        let prefix = format!("{container}/");
        (self.devices.iter())
            .filter(|d| d.phase != Phase::Adding)
            .filter_map(|d| {
                let name = d.qom_path.strip_prefix(&prefix)?;
                Some((name.to_string(), d.model.typename()))
            })
            .collect()
    }

    /// The VM runs or stops (vmm-core's run state): the virtual clock with it.
    pub fn set_running(&mut self, running: bool) {
        self.clock.set_running(running, Instant::now());
    }

    /// device_del: the device `id` names is asked to leave. Asked already, it is asked
    /// again, unless that was before the VM's virtual clock had run a millisecond: QEMU
    /// 7.2's ACPI hotplug lets a request expire at once (so a guest that booted after it
    /// can be asked again), but an expiry time of 0 means never.
    pub fn begin_removal(&mut self, id: &str) -> Result<Removal, DeviceError> {
        let now = self.clock.ms(Instant::now());
        let device = self.find(id)?;
        if let Model::Cpu(typename) = device.model {
            return Err(DeviceError::CpuUnplug(typename));
        }
        let repeated = device.phase == Phase::Removing;
        if repeated && device.requested_ms == 0 {
            return Err(DeviceError::UnplugPending(id.to_string()));
        }
        let (qom_path, slot) = (device.qom_path.clone(), device.slot);
        let slot = slot.ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
        if let Some(d) = self.devices.iter_mut().find(|d| d.qom_path == qom_path) {
            d.phase = Phase::Removing;
            d.requested_ms = now;
        }
        Ok(Removal {
            slot,
            qom_path,
            repeated,
        })
    }

    /// The guest was not asked after all (vmm-core refused): the device stays as it was
    /// (still to leave if it had been asked before).
    pub fn removal_failed(&mut self, removal: &Removal) {
        if removal.repeated {
            return;
        }
        if let Some(d) = (self.devices.iter_mut()).find(|d| d.qom_path == removal.qom_path) {
            d.phase = Phase::Present;
        }
    }

    /// The guest ejected `slot` (asked to or not): its device leaves the registry.
    pub fn ejected(&mut self, slot: u8) -> Option<Device> {
        let at = self.devices.iter().position(|d| d.slot == Some(slot))?;
        Some(self.devices.remove(at))
    }

    /// The DIMMs there are (being added or removed too), as placement sees them.
    pub fn dimms(&self) -> Vec<placement::Placed> {
        self.dimm_devices()
            .into_iter()
            .map(|(id, d)| placement::Placed {
                id,
                slot: d.launch.slot,
                addr: d.launch.addr,
                size: d.launch.size,
            })
            .collect()
    }

    /// Each DIMM on the machine, with its id.
    pub fn dimm_devices(&self) -> Vec<(Option<String>, placement::Dimm)> {
        self.devices
            .iter()
            .filter_map(|d| match &d.backend {
                Some(Backend::Dimm(m)) => Some((d.qdev_id.clone(), m.clone())),
                _ => None,
            })
            .collect()
    }

    /// The id of the DIMM in memory slot `slot`, if it has one.
    pub fn dimm_id(&self, slot: u32) -> Option<String> {
        self.devices
            .iter()
            .find(|d| matches!(&d.backend, Some(Backend::Dimm(m)) if m.launch.slot == slot))
            .and_then(|d| d.qdev_id.clone())
    }

    /// device_del's DIMM: the memory slot of the DIMM `id` names, if it names one (asked to
    /// leave from now on; asking again asks again, as QEMU does for DIMMs).
    pub fn begin_dimm_removal(&mut self, id: &str) -> Result<Option<u32>, DeviceError> {
        let qom_path = match self.find(id) {
            Ok(d) if matches!(d.backend, Some(Backend::Dimm(_))) => d.qom_path.clone(),
            _ => return Ok(None),
        };
        let device = self.devices.iter_mut().find(|d| d.qom_path == qom_path);
        Ok(device.and_then(|d| {
            d.phase = Phase::Removing;
            match &d.backend {
                Some(Backend::Dimm(m)) => Some(m.launch.slot),
                _ => None,
            }
        }))
    }

    /// The guest ejected the DIMM in memory slot `slot`: it leaves the registry.
    pub fn ejected_dimm(&mut self, slot: u32) -> Option<Device> {
        let at = self
            .devices
            .iter()
            .position(|d| matches!(&d.backend, Some(Backend::Dimm(m)) if m.launch.slot == slot))?;
        Some(self.devices.remove(at))
    }

    /// What a new vmm-core recreates: the disks, then the NICs, each in index order
    /// (the order of the backends' connections), every one on the bus with its slot;
    /// and the DIMMs by memory slot, each with its memory backend object's id.
    pub fn launch_lists(&self) -> LaunchLists {
        let mut lists = LaunchLists::default();
        for d in self.devices.iter().filter(|d| d.phase != Phase::Adding) {
            match &d.backend {
                Some(Backend::Disk(l)) => lists.disks.push(l.clone()),
                Some(Backend::Nic(l)) => lists.nics.push(l.clone()),
                Some(Backend::Dimm(m)) => lists.dimms.push(m.clone()),
                // The launch's LaunchConfig.balloon keeps it.
                Some(Backend::Balloon(_)) | None => {}
            }
        }
        lists.disks.sort_by_key(|d: &DiskLaunch| d.index);
        lists.nics.sort_by_key(|n: &NicLaunch| n.index);
        lists.dimms.sort_by_key(|m| m.launch.slot);
        lists
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(index: u32, slot: u8) -> Backend {
        Backend::Disk(DiskLaunch {
            index,
            slot: Some(slot),
            id: format!("d{index}"),
            qdev_id: String::new(),
            max_queues: 1,
        })
    }

    fn nic(index: u32, slot: u8, id: &str) -> Backend {
        Backend::Nic(NicLaunch {
            index,
            slot: Some(slot),
            id: id.into(),
            qdev_id: id.into(),
            mac: [0; 6],
            queue_pairs: 1,
        })
    }

    /// A launch of two anonymous disks and NIC nic0.
    fn launched() -> Devices {
        let mut d = Devices::default();
        for i in 0..2 {
            let (t, slot) = d.launch(Model::Blk, None, None).unwrap();
            assert_eq!(slot, i + 1);
            assert_eq!(t.qom_path, format!("/machine/peripheral-anon/device[{i}]"));
            d.added(&t, disk(u32::from(i), slot));
        }
        let (t, slot) = d.launch(Model::Net, Some("nic0"), None).unwrap();
        assert_eq!((t.qom_path.as_str(), slot), ("/machine/peripheral/nic0", 3));
        d.added(&t, nic(0, slot, "nic0"));
        d
    }

    #[test]
    fn slots_are_placed_as_qemu_places_them() {
        let mut d = launched();
        let t = d.reserve(Model::Blk, Some("vb")).unwrap();
        let in_use = |slot| Addr { slot, function: 0 };
        assert_eq!(
            d.place(&t, Some(in_use(1))).unwrap_err().to_string(),
            "PCI: slot 1 function 0 not available for virtio-blk-pci, in use by \
             virtio-blk-pci,id=(null)"
        );
        assert_eq!(
            d.place(&t, Some(in_use(3))).unwrap_err().to_string(),
            "PCI: slot 3 function 0 not available for virtio-blk-pci, in use by \
             virtio-net-pci,id=nic0"
        );
        assert_eq!(
            d.place(&t, Some(in_use(0))).unwrap_err().to_string(),
            "PCI: slot 0 function 0 not available for virtio-blk-pci, in use by \
             gpex-root,id=(null)"
        );
        assert!(matches!(
            d.place(
                &t,
                Some(Addr {
                    slot: 9,
                    function: 1
                })
            ),
            Err(DeviceError::NotFunctionZero {
                slot: 9,
                function: 1
            })
        ));
        // The lowest free slot, and a slot asked for.
        assert_eq!(d.place(&t, None).unwrap(), 4);
        let t2 = d.reserve(Model::Net, None).unwrap();
        assert_eq!(t2.qom_path, "/machine/peripheral-anon/device[2]");
        assert_eq!(d.place(&t2, Some(in_use(0x1f))).unwrap(), 31);
        // An id being added is taken; a failed add frees it and its slot.
        assert_eq!(
            d.reserve(Model::Net, Some("vb")).unwrap_err().to_string(),
            "Duplicate device ID 'vb'"
        );
        d.abandon(&t);
        let t3 = d.reserve(Model::Net, Some("vb")).unwrap();
        assert_eq!(d.place(&t3, None).unwrap(), 4);
        // The anonymous number is not given back.
        assert_eq!(
            d.reserve(Model::Net, None).unwrap().qom_path,
            "/machine/peripheral-anon/device[3]"
        );
        for s in 5..31 {
            let t = d.reserve(Model::Net, Some(&format!("n{s}"))).unwrap();
            assert_eq!(d.place(&t, None).unwrap(), s);
        }
        let t = d.reserve(Model::Net, Some("full")).unwrap();
        assert_eq!(
            d.place(&t, None).unwrap_err().to_string(),
            "PCI: no slot/function available for virtio-net-pci, all in use or reserved"
        );
    }

    #[test]
    fn device_del_finds_devices_as_qemu_does() {
        let mut d = launched();
        let t = d.reserve(Model::Blk, Some("vb")).unwrap();
        d.place(&t, None).unwrap();
        // Being added: not there yet.
        assert_eq!(
            d.find("vb").unwrap_err().to_string(),
            "Device 'vb' not found"
        );
        d.added(&t, disk(2, 4));
        for id in [
            "vb",
            "/machine/peripheral/vb",
            "//machine//peripheral/vb/",
            "vb/",
        ] {
            assert_eq!(d.find(id).unwrap().slot, Some(4), "{id}");
        }
        assert_eq!(
            d.find("/machine/peripheral-anon/device[1]").unwrap().slot,
            Some(2)
        );
        for (id, err) in [
            ("nope", "Device 'nope' not found"),
            (
                "/machine/peripheral/nope",
                "Device '/machine/peripheral/nope' not found",
            ),
            (
                "/machine/peripheral-anon/device[7]",
                "Device '/machine/peripheral-anon/device[7]' not found",
            ),
            ("/machine/i440fx", "Device '/machine/i440fx' not found"),
            ("d0", "Device 'd0' not found"),
            ("", " is not a hotpluggable device"),
            ("/machine", "/machine is not a hotpluggable device"),
            (
                "/machine/peripheral/",
                "/machine/peripheral/ is not a hotpluggable device",
            ),
            (
                "/machine/peripheral-anon",
                "/machine/peripheral-anon is not a hotpluggable device",
            ),
            (
                "vb/virtio-backend",
                "Bus 'virtio-bus' does not support hotplugging",
            ),
            (
                "/machine/peripheral-anon/device[0]/virtio-backend",
                "Bus 'virtio-bus' does not support hotplugging",
            ),
            ("vb/nothing", "Device 'vb/nothing' not found"),
        ] {
            assert_eq!(d.find(id).unwrap_err().to_string(), err, "{id}");
        }
        assert!(matches!(d.find("nope"), Err(DeviceError::NotFound(_))));
    }

    #[test]
    fn removals_pend_until_the_guest_ejects() {
        let mut d = launched();
        let first = d.begin_removal("nic0").unwrap();
        assert_eq!(
            first,
            Removal {
                slot: 3,
                qom_path: "/machine/peripheral/nic0".into(),
                repeated: false
            }
        );
        // The VM never ran: the request does not expire.
        assert_eq!(
            d.begin_removal("nic0").unwrap_err().to_string(),
            "Device nic0 is already in the process of unplug"
        );
        assert_eq!(
            d.begin_removal("/machine/peripheral/nic0")
                .unwrap_err()
                .to_string(),
            "Device /machine/peripheral/nic0 is already in the process of unplug"
        );
        // Still on the bus meanwhile: a new vmm-core gets it.
        assert_eq!(d.launch_lists().nics.len(), 1);
        d.removal_failed(&first);
        assert_eq!(d.begin_removal("nic0").unwrap().slot, 3);
        let gone = d.ejected(3).unwrap();
        assert_eq!(
            gone.backend_path(),
            "/machine/peripheral/nic0/virtio-backend"
        );
        assert!(d.ejected(3).is_none());
        assert_eq!(
            d.find("nic0").unwrap_err().to_string(),
            "Device 'nic0' not found"
        );
        // The slot is free again; the lists keep index order with a gap.
        let t = d.reserve(Model::Net, Some("nic1")).unwrap();
        assert_eq!(d.place(&t, None).unwrap(), 3);
        d.added(&t, nic(1, 3, "nic1"));
        let LaunchLists { disks, nics, .. } = d.launch_lists();
        assert_eq!(disks.iter().map(|l| l.index).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            nics.iter().map(|l| (l.index, l.slot)).collect::<Vec<_>>(),
            [(1, Some(3))]
        );
        // Once the VM has run, a request expires: device_del asks again.
        d.set_running(true);
        std::thread::sleep(Duration::from_millis(3));
        d.set_running(false);
        let asked = d.begin_removal("nic1").unwrap();
        assert!(!asked.repeated);
        let again = d.begin_removal("nic1").unwrap();
        assert_eq!((again.slot, again.repeated), (3, true));
        // A repeat vmm-core refused leaves it still to leave.
        d.removal_failed(&again);
        assert!(d.begin_removal("nic1").unwrap().repeated);
        // A launch device removed leaves a gap in the disks' indices too.
        d.begin_removal("/machine/peripheral-anon/device[0]")
            .unwrap();
        d.ejected(1).unwrap();
        assert_eq!(
            d.launch_lists()
                .disks
                .iter()
                .map(|l| (l.index, l.slot))
                .collect::<Vec<_>>(),
            [(1, Some(2))]
        );
    }
}
