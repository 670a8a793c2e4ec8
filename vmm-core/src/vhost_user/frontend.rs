//! A virtio device served by a vhost-user backend (block-daemon, net-daemon,
//! qemu-storage-daemon, ...), as the virtio-pci transport sees it, surviving the
//! backend's restarts: the common part of every vhost-user device. The link to the
//! backend is `link`'s, keeping it connected is `reconnect`'s, and what differs between
//! device types comes from the device's `DeviceModel` (`blk`, `net`).

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::backend_requests::{BackendRequests, ConfigChangeHandle};
use super::deadline::Deadline;
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
    /// space are settled here, the backend given `within` for all of it. When the
    /// backend later hangs up, `reconnect` says where the next one comes from. On an
    /// error the connection is closed.
    pub fn new(
        name: String,
        model: impl DeviceModel,
        stream: UnixStream,
        reconnect: Reconnect,
        ram: &GuestRam,
        within: Duration,
    ) -> Result<VhostUserDevice, VhostUserError> {
        let requests = BackendRequests::new();
        let mut link = Link::new(name, Box::new(model), ram, requests.clone())?;
        let deadline = Deadline::start(&stream, within).map_err(VhostUserError::BackendChannel)?;
        // Read now what the driver will read first.
        let connected = link.connect(stream).and_then(|()| link.read_config_now());
        let connected = match deadline.finish() {
            true => Err(VhostUserError::NoAnswer(within)),
            false => connected,
        };
        if let Err(e) = connected {
            link.close();
            return Err(e);
        }
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

    fn unplug(&mut self) {
        self.link.lock().close();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use vhost::vhost_user::message::VhostUserProtocolFeatures;

    use super::*;
    use crate::vhost_user::test_backend::{mock_refusing_config, mock_watched, Journal};
    use crate::vhost_user::Blk;

    const SHORT: Duration = Duration::from_millis(200);

    fn ram() -> GuestRam {
        GuestRam::new(4).unwrap()
    }

    fn disk(
        stream: UnixStream,
        reconnect: Reconnect,
        within: Duration,
    ) -> Result<VhostUserDevice, VhostUserError> {
        VhostUserDevice::new(
            "disk 7".into(),
            Blk::new(1),
            stream,
            reconnect,
            &ram(),
            within,
        )
    }

    /// Whether `peer` (the backend's end) sees the connection closed (reset, when our
    /// end had not read everything).
    fn hung_up(peer: &mut UnixStream) -> bool {
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        match peer.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    #[test]
    fn a_backend_that_never_answers_fails_the_device_in_bounded_time() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let e = disk(ours, Reconnect::new(None).0, SHORT).err().unwrap();
        assert!(
            matches!(e, VhostUserError::NoAnswer(d) if d == SHORT),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(hung_up(&mut theirs), "its connection is closed");
    }

    #[test]
    fn a_backend_that_hangs_up_or_talks_nonsense_fails_the_device() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let e = disk(ours, Reconnect::new(None).0, SHORT).err().unwrap();
        assert!(matches!(e, VhostUserError::Protocol { .. }), "{e}");
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(&[0xa5; 64]).unwrap();
        let e = disk(ours, Reconnect::new(None).0, SHORT).err().unwrap();
        assert!(matches!(e, VhostUserError::Protocol { .. }), "{e}");
        assert!(hung_up(&mut theirs));
    }

    /// The vhost crate's backends answer a failed GET_CONFIG with an empty payload,
    /// and its frontend then waits for the payload: only the deadline ends that.
    #[test]
    fn a_configuration_the_backend_refuses_fails_the_device() {
        let journal = Journal::default();
        let (stream, ended) = mock_refusing_config(&journal);
        let e = disk(stream, Reconnect::new(None).0, SHORT).err().unwrap();
        assert!(matches!(e, VhostUserError::NoAnswer(_)), "{e}");
        assert!(ended.recv_timeout(Duration::from_secs(5)).is_ok(), "closed");
    }

    /// Waits until only `n` holders of `link` are left (its supervisor thread is one).
    fn holders_drop_to(link: &Arc<Mutex<Link>>, n: usize) -> bool {
        let until = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(link) > n {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn an_unplugged_device_lets_its_backend_go_and_takes_no_other() {
        let journal = Journal::default();
        let (stream, ended) = mock_watched(&journal, VhostUserProtocolFeatures::empty());
        let (reconnect, handover) = Reconnect::new(None);
        let mut device = disk(stream, reconnect, SHORT).unwrap();
        let link = device.link();
        assert_eq!(
            Arc::strong_count(&link),
            3,
            "the device, the supervisor and us"
        );
        // Time for the supervisor to wait on its own handle on the connection, which
        // must not keep it open.
        std::thread::sleep(Duration::from_millis(50));
        VirtioDevice::unplug(&mut device);
        assert!(
            ended.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the backend saw the hang-up"
        );
        assert!(holders_drop_to(&link, 2), "the supervisor thread ended");
        // A connection handed over now is not taken: its backend is hung up on.
        let (next, next_ended) = mock_watched(&journal, VhostUserProtocolFeatures::empty());
        handover.unwrap().hand_over(next);
        assert!(next_ended.recv_timeout(Duration::from_secs(5)).is_ok());
        let (again, _) = mock_watched(&journal, VhostUserProtocolFeatures::empty());
        assert!(matches!(
            link.lock().connect(again),
            Err(VhostUserError::Unplugged)
        ));
    }

    #[test]
    fn an_unplugged_device_with_a_socket_path_does_not_connect_again() {
        let dir = std::env::temp_dir().join(format!("vmm-core-unplug-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("backend.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let journal = Journal::default();
        let (stream, ended) = mock_watched(&journal, VhostUserProtocolFeatures::empty());
        let (reconnect, _) = Reconnect::new(Some(path));
        let mut device = disk(stream, reconnect, SHORT).unwrap();
        let link = device.link();
        VirtioDevice::unplug(&mut device);
        assert!(ended.recv_timeout(Duration::from_secs(5)).is_ok());
        assert!(holders_drop_to(&link, 2), "the supervisor thread ended");
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            listener.accept().is_err(),
            "nobody connected to the path again"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The names of this process's threads.
    fn threads() -> Vec<String> {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect()
    }

    #[test]
    fn an_unplugged_device_ends_the_thread_serving_its_backends_channel() {
        let journal = Journal::default();
        let protocol = VhostUserProtocolFeatures::BACKEND_REQ;
        let (stream, _ended) = mock_watched(&journal, protocol);
        let (reconnect, _handover) = Reconnect::new(None);
        // A name of its own: thread names are seen process-wide.
        let mut device = VhostUserDevice::new(
            "disk 9".into(),
            Blk::new(1),
            stream,
            reconnect,
            &ram(),
            SHORT,
        )
        .unwrap();
        let serving = || threads().iter().any(|t| t == "disk 9 requests");
        assert!(serving());
        VirtioDevice::unplug(&mut device);
        let until = Instant::now() + Duration::from_secs(5);
        while serving() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !serving(),
            "the backend keeps its end open, ours is shut down"
        );
    }
}
