//! The VM options of a command line. vmm-core takes them when it runs on its own; the
//! gateway takes the same options, opens the files they name and launches vmm-core with
//! the fds.

use std::path::PathBuf;
use std::str::FromStr;

use super::size::parse_size;

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
    /// Guest RAM (MiB without a suffix), and memory hotplug's DIMM slots and most memory,
    /// as QEMU's -m reads them: `[size=]SIZE[,slots=N,maxmem=SIZE]`.
    #[arg(long, default_value = "256", value_parser = |s: &str| s.parse::<MemoryConfig>())]
    pub memory: MemoryConfig,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: usize,
    /// The most vCPUs the VM may have (CPU hotplug: cpu-add, device_add of a CPU); the
    /// default is --cpus (none can be added). QEMU's -smp N,maxcpus=M.
    #[arg(long)]
    pub max_cpus: Option<usize>,
    /// Serial console (COM1): stdout, none, file:PATH, unix:PATH (a socket the console
    /// listens on; clients connect to it) or, with qmp-gateway, chardev:ID (a --chardev).
    #[arg(long, default_value = "stdout", value_parser = |s: &str| s.parse::<SerialConfig>())]
    pub serial: SerialConfig,
    /// Start with the vCPUs stopped (run state "prelaunch") until `cont`.
    #[arg(short = 'S')]
    pub start_paused: bool,
}

/// `--memory`: RAM, and memory hotplug's shape (QEMU's -m).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// RAM in MiB.
    pub mib: u64,
    /// DIMM slots (0: no memory hotplug).
    pub slots: u64,
    /// RAM and DIMMs together at most (maxmem).
    pub max_bytes: Option<u64>,
}

/// QEMU's ACPI_MAX_RAM_SLOTS.
pub const MAX_MEMORY_SLOTS: u64 = 256;
const MIB: u64 = 1 << 20;

impl MemoryConfig {
    /// Memory hotplug's shape, with slots (and so a maxmem above RAM); None without.
    pub fn hotplug(&self) -> Option<crate::MemoryHotplug> {
        let max_bytes = self.max_bytes?;
        let slots = u32::try_from(self.slots).ok().filter(|&s| s > 0)?;
        Some(crate::MemoryHotplug { slots, max_bytes })
    }
}

impl FromStr for MemoryConfig {
    type Err = String;

    /// QEMU 7.2's -m: its options (the first may leave out `size=`), then its checks, with
    /// its words; and RAM in whole MiB, Flotilla's own rule.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad_size = |name: &str| {
            format!(
                "Parameter '{name}' expects a non-negative number below 2^64 (optional suffix \
                 k, M, G, T, P or E)"
            )
        };
        let (mut size, mut slots, mut maxmem) = (None, None, None);
        // QemuOpts' ",," is a comma inside a value.
        let unescaped = s.replace(",,", "\0");
        let parts: Vec<String> = unescaped.split(',').map(|p| p.replace('\0', ",")).collect();
        for (i, part) in parts.iter().enumerate() {
            let part = part.as_str();
            let (key, value) = match part.split_once('=') {
                // An escaped comma before the '=' is part of the first option's value.
                Some((key, _)) if i == 0 && key.contains(',') => ("size", part),
                Some(kv) => kv,
                None if i == 0 => ("size", part),
                None => (part, ""),
            };
            match key {
                "size" => size = Some(value),
                "slots" => slots = Some(value),
                "maxmem" => maxmem = Some(value),
                _ => return Err(format!("Invalid parameter '{key}'")),
            }
        }
        // A size ending in a digit is in MiB (QEMU's legacy suffix-less -m).
        let ram = match size {
            Some(text) => {
                let unit = if text.ends_with(|c: char| c.is_ascii_digit()) {
                    MIB
                } else {
                    1
                };
                parse_size(text, unit).map_err(|_| bad_size("size"))?
            }
            None => 256 * MIB,
        };
        let max_bytes = match maxmem {
            Some(text) => Some(parse_size(text, 1).map_err(|_| bad_size("maxmem"))?),
            None => None,
        };
        let slots = match slots {
            // strtoull's way: a minus sign wraps.
            Some(text) => {
                let (digits, negative) = match text.strip_prefix('-') {
                    Some(rest) => (rest, true),
                    None => (text, false),
                };
                let n: u64 = digits
                    .parse()
                    .map_err(|_| "Parameter 'slots' expects a number".to_string())?;
                Some(if negative { n.wrapping_neg() } else { n })
            }
            None => None,
        };
        match (max_bytes, slots) {
            (Some(max), _) if max < ram => {
                return Err(format!(
                    "invalid value of maxmem: maximum memory size ({max:#x}) must be at least \
                     the initial memory size ({ram:#x})"
                ))
            }
            (Some(max), Some(n)) if n > 0 && max == ram => {
                return Err(format!(
                    "invalid value of maxmem: memory slots were specified but maximum memory \
                     size ({max:#x}) is equal to the initial memory size ({ram:#x})"
                ))
            }
            (None, Some(_)) => return Err("slots specified but no max-size".into()),
            _ => {}
        }
        let slots = slots.unwrap_or(0);
        if max_bytes.is_some_and(|max| max > ram) {
            if slots > MAX_MEMORY_SLOTS {
                return Err(format!("unsupported amount of memory slots: {slots}"));
            }
            if max_bytes.is_some_and(|max| max % 4096 != 0) {
                return Err("maximum memory size must by aligned to multiple of 4096 bytes".into());
            }
        }
        if ram % MIB != 0 {
            return Err(format!(
                "the RAM size ({ram:#x} bytes) must be a whole number of MiB here"
            ));
        }
        Ok(MemoryConfig {
            mib: ram / MIB,
            slots,
            max_bytes,
        })
    }
}

/// Where the serial console goes, as `--serial` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
    Stdout,
    File(PathBuf),
    Unix(PathBuf),
    /// A chardev the gateway's command line made (`--chardev ...,id=ID`).
    Chardev(String),
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
                Some(("chardev", id)) if !id.is_empty() => Ok(SerialConfig::Chardev(id.into())),
                _ => Err(format!(
                    "--serial {s}: expected stdout, none, file:PATH, unix:PATH or chardev:ID"
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
        assert_eq!("chardev:c0".parse(), Ok(SerialConfig::Chardev("c0".into())));
        assert!("chardev:".parse::<SerialConfig>().is_err());
        assert!("file:".parse::<SerialConfig>().is_err());
        assert!("tcp:1".parse::<SerialConfig>().is_err());
    }

    #[test]
    fn memory_reads_as_qemus_m() {
        let m = |s: &str| s.parse::<MemoryConfig>();
        let ok = |mib, slots, max_bytes| {
            Ok(MemoryConfig {
                mib,
                slots,
                max_bytes,
            })
        };
        assert_eq!(m("128"), ok(128, 0, None));
        assert_eq!(m("128,slots=4,maxmem=1G"), ok(128, 4, Some(1 << 30)));
        assert_eq!(
            m("size=1G,maxmem=2g,slots=0x2"),
            Err("Parameter 'slots' expects a number".into())
        );
        assert_eq!(m("size=1G,maxmem=2g,slots=2"), ok(1024, 2, Some(2 << 30)));
        assert_eq!(m("1.5G,slots=1,maxmem=2G"), ok(1536, 1, Some(2 << 30)));
        assert_eq!(m("134217728B"), ok(128, 0, None));
        // A maxmem without a suffix is in bytes; repeated options: the last one counts.
        assert_eq!(
            m("128,maxmem=1073741824,slots=1,slots=2"),
            ok(128, 2, Some(1 << 30))
        );
        // QEMU's words (as QEMU 7.2 prints them, its two-line hint on one line).
        for (text, error) in [
            ("128,slots=4", "slots specified but no max-size"),
            ("128,slots=300,maxmem=1G", "unsupported amount of memory slots: 300"),
            ("128,slots=-1,maxmem=1G", "unsupported amount of memory slots: 18446744073709551615"),
            ("128,maxmem=64M", "invalid value of maxmem: maximum memory size (0x4000000) must be at least the initial memory size (0x8000000)"),
            ("128,slots=2,maxmem=128M", "invalid value of maxmem: memory slots were specified but maximum memory size (0x8000000) is equal to the initial memory size (0x8000000)"),
            ("128,slots=x,maxmem=1G", "Parameter 'slots' expects a number"),
            ("128,maxmem=1G,foo=1", "Invalid parameter 'foo'"),
            ("128,maxmem=1073741825", "maximum memory size must by aligned to multiple of 4096 bytes"),
            ("x", "Parameter 'size' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)"),
            ("128,maxmem=x", "Parameter 'maxmem' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)"),
            ("128,,slots=1", "Parameter 'size' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E)"),
            ("128,slots", "Parameter 'slots' expects a number"),
            ("1025K", "the RAM size (0x100400 bytes) must be a whole number of MiB here"),
        ] {
            assert_eq!(m(text), Err(error.to_string()), "{text}");
        }
    }
}
