//! The VM options of a command line. vmm-core takes them when it runs on its own; the
//! gateway takes the same options, opens the files they name and launches vmm-core with
//! the fds.

use std::path::PathBuf;
use std::str::FromStr;

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
    /// The most vCPUs the VM may have (CPU hotplug: cpu-add, device_add of a CPU); the
    /// default is --cpus (none can be added). QEMU's -smp N,maxcpus=M.
    #[arg(long)]
    pub max_cpus: Option<usize>,
    /// Serial console (COM1): stdout, none, file:PATH or unix:PATH (a socket the console
    /// listens on; clients connect to it).
    #[arg(long, default_value = "stdout", value_parser = |s: &str| s.parse::<SerialConfig>())]
    pub serial: SerialConfig,
    /// Start with the vCPUs stopped (run state "prelaunch") until `cont`.
    #[arg(short = 'S')]
    pub start_paused: bool,
}

/// Where the serial console goes, as `--serial` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
    Stdout,
    File(PathBuf),
    Unix(PathBuf),
    None,
}

impl FromStr for SerialConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let path = |p: &str| {
            if p.is_empty() {
                Err(format!("--serial {s}: empty path"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        match s {
            "stdout" | "stdio" => Ok(SerialConfig::Stdout),
            "none" => Ok(SerialConfig::None),
            _ => match s.split_once(':') {
                Some(("file", p)) => Ok(SerialConfig::File(path(p)?)),
                Some(("unix", p)) => Ok(SerialConfig::Unix(path(p)?)),
                _ => Err(format!(
                    "--serial {s}: expected stdout, none, file:PATH or unix:PATH"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_serial_specs() {
        assert_eq!("stdout".parse(), Ok(SerialConfig::Stdout));
        assert_eq!("none".parse(), Ok(SerialConfig::None));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(SerialConfig::File("/tmp/x".into()))
        );
        assert_eq!(
            "unix:/tmp/s".parse(),
            Ok(SerialConfig::Unix("/tmp/s".into()))
        );
        assert!("file:".parse::<SerialConfig>().is_err());
        assert!("tcp:1".parse::<SerialConfig>().is_err());
    }
}
