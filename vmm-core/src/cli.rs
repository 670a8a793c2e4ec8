//! The VM options on a command line, shared by vmm-core (run on its own) and qmp-gateway
//! (which opens the files they name and passes them to vmm-core).

use std::path::PathBuf;

use crate::devices::serial::SerialConfig;

#[derive(clap::Args, Debug, Clone)]
pub struct VmArgs {
    /// Kernel to boot: a Linux bzImage or an ELF with a PVH entry note.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: usize,
    /// Serial console (COM1): stdout, none, file:PATH or unix:PATH (a socket the console
    /// listens on; clients connect to it).
    #[arg(long, default_value = "stdout", value_parser = |s: &str| s.parse::<SerialConfig>())]
    pub serial: SerialConfig,
    /// Start with the vCPUs stopped (run state "prelaunch") until `cont`.
    #[arg(short = 'S')]
    pub start_paused: bool,
}
