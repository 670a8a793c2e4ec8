//! What two processes both need to name or open on the host: the VM options of a command
//! line (vmm-core on its own, or the gateway that opens their files for it), MAC
//! addresses, and a NIC's host side (a tap, a datagram socket), which the gateway opens
//! for net-daemon and net-daemon opens itself when it runs on its own.

pub mod mac;
pub mod net_port;
pub mod size;
pub mod vm_options;

pub use mac::{format_mac, parse_mac};
pub use net_port::{open_datagram, open_tap};
pub use size::{parse_size, SizeError};
pub use vm_options::{MemoryConfig, SerialConfig, VmArgs, MAX_MEMORY_SLOTS};
