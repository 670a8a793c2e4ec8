//! The QEMU options `flotilla-qemu` reads, and how QEMU 7.2 splits a command line into
//! them: `-name` or `--name`, the argument (if the option takes one) in the next word.

use super::error::CliError;

/// The options Flotilla reads and whether each takes an argument (QEMU's HAS_ARG). Any
/// other is refused as QEMU refuses an option it does not know.
const OPTIONS: &[(&str, bool)] = &[
    ("S", false),
    ("accel", true),
    ("add-fd", true),
    ("append", true),
    ("audiodev", true),
    ("blockdev", true),
    ("boot", true),
    ("chardev", true),
    ("cpu", true),
    ("daemonize", false),
    ("device", true),
    ("display", true),
    ("enable-kvm", false),
    ("h", false),
    ("help", false),
    ("incoming", true),
    ("initrd", true),
    ("kernel", true),
    ("m", true),
    ("machine", true),
    ("M", true),
    ("mon", true),
    ("msg", true),
    ("name", true),
    ("netdev", true),
    ("no-acpi", false),
    ("no-shutdown", false),
    ("no-user-config", false),
    ("nodefaults", false),
    ("nographic", false),
    ("object", true),
    ("overcommit", true),
    ("pidfile", true),
    ("qmp", true),
    ("rtc", true),
    ("sandbox", true),
    ("serial", true),
    ("smp", true),
    ("uuid", true),
    ("version", false),
];

/// One option of the command line: its name (without dashes) and its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    pub name: &'static str,
    pub arg: Option<String>,
}

/// Splits `args` (without the program name) into options, as QEMU's lookup_opt does.
pub fn split(args: &[String]) -> Result<Vec<Opt>, CliError> {
    let mut out = Vec::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let Some(rest) = word.strip_prefix('-') else {
            // QEMU takes a bare word as a disk image (-hda); Flotilla's disks are
            // -blockdev and -device.
            return Err(CliError::Option {
                option: word.clone(),
                message: "Flotilla takes disks as -blockdev with -device only, not as a \
                          disk image argument"
                    .into(),
            });
        };
        let rest = rest.strip_prefix('-').unwrap_or(rest);
        let Some(&(name, has_arg)) = OPTIONS.iter().find(|(n, _)| *n == rest) else {
            return Err(CliError::Option {
                option: word.clone(),
                message: "invalid option".into(),
            });
        };
        let arg = if has_arg {
            let Some(a) = words.next() else {
                return Err(CliError::Option {
                    option: word.clone(),
                    message: "requires an argument".into(),
                });
            };
            Some(a.clone())
        } else {
            None
        };
        // -M is -machine's short name.
        let name = if name == "M" { "machine" } else { name };
        out.push(Opt { name, arg });
    }
    Ok(out)
}
