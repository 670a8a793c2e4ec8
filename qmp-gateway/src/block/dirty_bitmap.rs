//! A dirty bitmap as the gateway keeps it: its node, name and flags, and the shared
//! memory a disk's daemon marks into (the commands are bitmaps.rs').

use ipc::SharedBitmap;
use serde_json::{json, Value};

use crate::fdstore::Charge;

/// One dirty bitmap.
pub struct DirtyBitmap {
    /// The node it is on (an image node of the disk's chain).
    pub node: String,
    pub name: String,
    pub memory: SharedBitmap,
    pub persistent: bool,
    /// Marks writes (not created `disabled`; an inconsistent one keeps the flag it
    /// was stored with, and marks nothing).
    pub recording: bool,
    /// Loaded from the image marked in use: its bits may be stale (QEMU's
    /// `inconsistent`); only removing it is allowed.
    pub inconsistent: bool,
    /// Its memfd, charged to the client that added it.
    pub charge: Option<Charge>,
}

impl DirtyBitmap {
    /// BlockDirtyInfo, as QEMU 7.2 shows it; `busy`: a job uses it.
    pub fn info(&self, busy: bool) -> Value {
        let mut info = json!({
            "name": self.name,
            "recording": self.recording && !self.inconsistent,
            "persistent": self.persistent,
            "busy": busy,
            "granularity": self.memory.granularity(),
            "count": self.memory.dirty_bytes(),
        });
        if self.inconsistent {
            // QEMU lists the member only when it is true.
            info["inconsistent"] = json!(true);
        }
        info
    }

    /// What a daemon is told of it.
    pub fn spec(&self) -> ipc::DirtyBitmapSpec {
        ipc::DirtyBitmapSpec {
            name: self.name.clone(),
            size: self.memory.size(),
            granularity: self.memory.granularity(),
            recording: self.recording,
            persistent: self.persistent,
            inconsistent: self.inconsistent,
        }
    }
}
