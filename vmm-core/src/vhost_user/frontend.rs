//! A virtio device served by a vhost-user backend (block-daemon, net-daemon,
//! qemu-storage-daemon, ...), as the virtio-pci transport sees it, surviving the
//! backend's restarts: the common part of every vhost-user device. The link to the
//! backend is `link`'s, keeping it connected is `reconnect`'s, and what differs between
//! device types comes from the device's `DeviceModel` (`blk`, `net`).

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use parking_lot::Mutex;

use super::backend_requests::{BackendRequests, ConfigChangeHandle};
use super::link::{Link, VhostUserError, QUEUE_MAX_SIZE};
use super::model::DeviceModel;
use super::reconnect::{spawn_supervisor, Reconnect};
use crate::devices::virtio_pci::{ActiveQueue, ConfigChanged, VirtioDevice};
use crate::memory::GuestRam;

pub struct VhostUserDevice {
    link: Arc<Mutex<Link>>,
    requests: Arc<BackendRequests>,
}

impl VhostUserDevice {
    /// A `model` device named `name` in logs, whose backend is on `stream` (already
    /// connected): ownership, features, protocol features, queue count and configuration
    /// space are settled here. When the backend later hangs up, `reconnect` says where
    /// the next one comes from.
    pub fn new(
        name: String,
        model: impl DeviceModel,
        stream: UnixStream,
        reconnect: Reconnect,
        ram: &GuestRam,
    ) -> Result<VhostUserDevice, VhostUserError> {
        let requests = BackendRequests::new();
        let mut link = Link::new(name, Box::new(model), ram, requests.clone())?;
        link.connect(stream)?;
        // Read now what the driver will read first.
        link.config_space();
        let link = Arc::new(Mutex::new(link));
        spawn_supervisor(link.clone(), reconnect).map_err(VhostUserError::BackendChannel)?;
        Ok(VhostUserDevice { link, requests })
    }

    /// The link itself, for what the VM's control loop does to every backend at once
    /// (a migration's dirty log).
    pub fn link(&self) -> Arc<Mutex<Link>> {
        self.link.clone()
    }

    /// A `model` device shaped as another vmm-core's was (a live upgrade), with no
    /// backend yet: its connection comes through `reconnect` once the VM's state is in.
    pub fn shaped(
        name: String,
        model: impl DeviceModel,
        shape: &ipc::LinkShape,
        reconnect: Reconnect,
        ram: &GuestRam,
    ) -> Result<VhostUserDevice, VhostUserError> {
        let requests = BackendRequests::new();
        let mut link = Link::new(name, Box::new(model), ram, requests.clone())?;
        link.preset(shape)?;
        let link = Arc::new(Mutex::new(link));
        spawn_supervisor(link.clone(), reconnect).map_err(VhostUserError::BackendChannel)?;
        Ok(VhostUserDevice { link, requests })
    }

    pub fn config_change_handle(&self) -> ConfigChangeHandle {
        ConfigChangeHandle::new(self.requests.clone())
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u16 {
        self.link.lock().model().device_type()
    }

    fn pci_class(&self) -> u32 {
        self.link.lock().model().pci_class()
    }

    fn num_queues(&self) -> usize {
        self.link.lock().num_queues()
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_MAX_SIZE
    }

    fn features(&self) -> u64 {
        self.link.lock().offered_features()
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let mut link = self.link.lock();
        let config = link.config_space();
        for (i, b) in data.iter_mut().enumerate() {
            *b = config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Neither device type lets the driver write its configuration: virtio-blk's is
        // read-only unless CONFIG_WCE is offered, which this frontend does not pass
        // through, and virtio-net's fields are all the device's.
    }

    fn activate(&mut self, features: u64, queues: &[ActiveQueue]) -> Result<(), String> {
        self.link.lock().activate(features, queues)
    }

    fn reset(&mut self) {
        self.link.lock().reset();
    }

    fn set_config_changed(&mut self, notify: ConfigChanged) {
        self.requests.set_notify(notify);
    }

    fn save_state(&self) -> Vec<u8> {
        self.link.lock().model().save_state()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.link.lock().model_mut().restore_state(state)
    }

    fn resume(&mut self, features: u64, queues: &[ActiveQueue]) -> Result<(), String> {
        self.link.lock().resume(features, queues)
    }
}
