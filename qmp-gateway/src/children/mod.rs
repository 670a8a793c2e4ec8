//! The gateway's children (vmm-core, a block daemon per disk, a net daemon per NIC):
//! how one is started (spawn, from the one spawner thread, as an id of its own: ids;
//! sandbox), the control link to it (calls, answers, events), a device daemon's life
//! (daemon), one started ahead of its device (spare) and the restarts of those that die
//! (supervise); vmm-core's process and the files a successor needs (vmm); a vmm-core
//! started for the CPUID alone, with no VM (cpuid_probe).

pub mod cpuid_probe;
pub mod daemon;
pub mod ids;
pub mod link;
pub mod sandbox;
pub mod spare;
pub mod spawn;
pub mod spawner;
pub mod supervise;
pub mod vmm;
