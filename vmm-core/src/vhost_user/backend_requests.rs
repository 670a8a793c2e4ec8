//! The backend's own messages to the frontend (the vhost-user backend channel): today a
//! configuration change, after a resize. Whoever learns of a change first (the backend,
//! or the gateway that ordered a resize through `ConfigChangeHandle`) marks the
//! configuration stale, to be read again on the driver's next look, and raises the
//! configuration-change interrupt now.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use vhost::vhost_user::{HandlerResult, VhostUserFrontendReqHandler};

use crate::devices::virtio_pci::ConfigChanged;

pub struct BackendRequests {
    config_stale: AtomicBool,
    /// The transport's interrupt, once the device sits behind one.
    notify: Mutex<Option<ConfigChanged>>,
}

impl BackendRequests {
    /// Stale from the start: the first look reads the backend's configuration.
    pub fn new() -> Arc<BackendRequests> {
        Arc::new(BackendRequests {
            config_stale: AtomicBool::new(true),
            notify: Mutex::new(None),
        })
    }

    pub fn config_changed(&self) {
        self.mark_config_stale();
        if let Some(n) = self.notify.lock().as_ref() {
            n.notify();
        }
    }

    /// The configuration must be read again (a new backend, a read that failed).
    pub fn mark_config_stale(&self) {
        self.config_stale.store(true, Ordering::Release);
    }

    /// Whether the configuration must be read again; the caller reads it.
    pub fn take_config_stale(&self) -> bool {
        self.config_stale.swap(false, Ordering::AcqRel)
    }

    pub fn set_notify(&self, notify: ConfigChanged) {
        *self.notify.lock() = Some(notify);
    }
}

impl VhostUserFrontendReqHandler for BackendRequests {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        self.config_changed();
        Ok(0)
    }
}

/// Tells a device its configuration changed, for changes the gateway learns of first (a
/// resize it ordered): re-read on the guest's next look, with a config-change interrupt now.
#[derive(Clone)]
pub struct ConfigChangeHandle(Arc<BackendRequests>);

impl ConfigChangeHandle {
    pub fn new(requests: Arc<BackendRequests>) -> ConfigChangeHandle {
        ConfigChangeHandle(requests)
    }

    pub fn raise(&self) {
        self.0.config_changed();
    }
}
