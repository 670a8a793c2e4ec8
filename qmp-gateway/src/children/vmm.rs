//! vmm-core as the gateway runs it: its process (ours to reap, by pid), the binary it
//! was started from, and the launch's files kept for the vmm-core that takes over in a
//! live upgrade (/dev/kvm, kernel, initrd, console; never the backend connections,
//! which a new vmm-core gets fresh).

use std::path::PathBuf;

use parking_lot::Mutex;

use super::spawn::Process;
use crate::launch::OpenedVm;

pub struct VmmChild {
    pub process: Mutex<Option<Process>>,
    pub binary: Mutex<PathBuf>,
    pub launch: Mutex<Option<OpenedVm>>,
}

impl VmmChild {
    pub fn new(binary: PathBuf) -> VmmChild {
        VmmChild {
            process: Mutex::new(None),
            binary: Mutex::new(binary),
            launch: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.lock().as_ref().map(Process::id)
    }
}
