//! `flotilla-qemu`'s translation: QEMU 7.2's command line, as libvirt 9.0 writes it for a
//! KVM x86_64 domain (and for its capability probe), into qmp-gateway's options. A pure
//! function of the words: nothing is opened here, and the inherited fds the command line
//! names (fd=N) are the gateway's to take once flotilla-qemu execs it.
//!
//! `options` splits the words into QEMU's options; `machine` reads the machine, CPU and
//! memory options; `devices` the -device/-object/-netdev ones; `host` the process's
//! options and those accepted as what Flotilla always does; `version` prints -version
//! and -help; `error` is a refusal, in QEMU's words where QEMU refuses the same thing.
//! What is accepted and refused, and why: docs/libvirt.md.

pub mod devices;
pub mod error;
pub mod host;
pub mod machine;
pub mod options;
pub mod version;

use serde_json::{Map, Value};

use crate::machine_none::{Accel, MachineType};
use devices::DeviceUse;
pub use error::CliError;
use machine::Machine;

/// What the command line asks flotilla-qemu to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Run qmp-gateway with these arguments (without the program name).
    Run(Vec<String>),
    /// Print this (-version, -help) and exit.
    Print(String),
}

/// The words of a QEMU command line (without the program name) as an Outcome; `program`
/// is the name -help shows.
pub fn translate(args: &[String], program: &str) -> Result<Outcome, CliError> {
    let opts = options::split(args)?;
    // -version and -help answer whatever else is there, as QEMU's do (the first wins).
    for o in &opts {
        match o.name {
            "version" => return Ok(Outcome::Print(version::version())),
            "help" | "h" => return Ok(Outcome::Print(version::help(program))),
            _ => {}
        }
    }
    let mut t = Translation::default();
    for o in &opts {
        t.option(o.name, o.arg.as_deref().unwrap_or_default())?;
    }
    t.finish().map(Outcome::Run)
}

#[derive(Default)]
struct Translation {
    out: Vec<String>,
    machine: Machine,
    memory: Option<String>,
    /// -object's: (its properties, the gateway's --object text), in order.
    objects: Vec<(Map<String, Value>, String)>,
    uart: Option<String>,
    serial: Option<String>,
    nodefaults: bool,
    nographic: bool,
}

impl Translation {
    fn pass(&mut self, flag: &str, value: &str) {
        self.out.push(flag.to_string());
        self.out.push(value.to_string());
    }

    /// The one UART (COM1) is not given to a chardev yet.
    fn uart_free(&self, name: &str, arg: &str) -> Result<(), CliError> {
        match self.uart.is_some() || self.serial.is_some() {
            true => Err(CliError::at(
                name,
                Some(arg),
                "Flotilla's PC has one UART, COM1, and it is taken",
            )),
            false => Ok(()),
        }
    }

    fn option(&mut self, name: &str, arg: &str) -> Result<(), CliError> {
        match name {
            "S" => self.out.push("-S".into()),
            "name" => {
                let guest = host::name(arg)?;
                self.pass("--name", &guest);
            }
            "uuid" => {
                if !crate::ids::valid_uuid(arg) {
                    return Err(CliError::at(
                        name,
                        Some(arg),
                        "failed to parse UUID string: wrong format",
                    ));
                }
                self.pass("--uuid", arg);
            }
            "machine" => machine::machine(arg, &mut self.machine)?,
            "accel" => machine::accel(arg, &mut self.machine)?,
            "enable-kvm" => self.machine.accel = Accel::Kvm,
            "cpu" => {
                machine::cpu(arg)?;
                self.pass("--cpu", arg);
            }
            "m" => self.memory = Some(arg.to_string()),
            "smp" => {
                let smp = machine::smp(arg)?;
                self.pass("--cpus", &smp.cpus.to_string());
                if let Some(max) = smp.max_cpus {
                    self.pass("--max-cpus", &max.to_string());
                }
            }
            "object" => {
                let props = devices::object(arg)?;
                let text = devices::object_text(arg, &props)?;
                self.objects.push((props, text));
            }
            "device" => match devices::device(arg)? {
                DeviceUse::Gateway(text) => self.pass("--device", &text),
                DeviceUse::Uart(chardev) => {
                    self.uart_free(name, arg)?;
                    self.uart = Some(chardev);
                }
            },
            "serial" => {
                let ok = ["none", "stdio"].contains(&arg)
                    || arg.starts_with("chardev:")
                    || arg.starts_with("file:");
                if !ok {
                    return Err(CliError::at(
                        name,
                        Some(arg),
                        "Flotilla's -serial is none, stdio, chardev:ID or file:PATH",
                    ));
                }
                self.uart_free(name, arg)?;
                self.serial = Some(arg.to_string());
            }
            "netdev" => {
                let text = devices::netdev(arg)?;
                self.pass("--netdev", &text);
            }
            "blockdev" => self.pass("--blockdev", arg),
            "chardev" => self.pass("--chardev", arg),
            "mon" => self.pass("--mon", arg),
            "qmp" => match host::qmp(arg)? {
                host::Qmp::Unix(path) => self.pass("--qmp", &path),
                host::Qmp::Tcp(addr) => self.pass("--qmp-tcp", &addr),
            },
            "add-fd" => {
                let text = host::add_fd(arg)?;
                self.pass("--add-fd", &text);
            }
            "kernel" => self.pass("--kernel", arg),
            "initrd" => self.pass("--initrd", arg),
            "append" => self.pass("--cmdline", arg),
            "incoming" => self.pass("--incoming", arg),
            "pidfile" => self.pass("--pidfile", arg),
            "daemonize" => self.out.push("--daemonize".into()),
            "no-shutdown" => self.out.push("--no-shutdown".into()),
            // libvirt writes it for a domain without <features><acpi/>.
            "no-acpi" => {
                return Err(CliError::at(
                    name,
                    None,
                    "Flotilla's PC always has ACPI (its power button, PCI and vCPU \
                     hotplug): add <acpi/> to the domain's <features>",
                ))
            }
            // No configuration files are read and there are no default devices.
            "no-user-config" => {}
            "nodefaults" => self.nodefaults = true,
            // No display; QEMU's -nographic also puts the default serial on stdio.
            "nographic" => self.nographic = true,
            _ => host::accepted(name, arg)?,
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<String>, CliError> {
        machine::check_accel(&self.machine)?;
        if self.machine.kind == MachineType::None {
            self.pass("--machine", "none");
        }
        if self.machine.accel == Accel::Tcg {
            self.pass("--accel", "tcg");
        }
        // The RAM's backend: folded into --memory, not made as an object.
        let ram_id = self.machine.memory_backend.clone();
        let backend = match &ram_id {
            None => None,
            Some(id) => {
                let found = self
                    .objects
                    .iter()
                    .find(|(p, _)| p.get("id").and_then(Value::as_str) == Some(id.as_str()));
                let (props, _) = found
                    .ok_or_else(|| CliError::plain(format!("Memory backend '{id}' not found")))?;
                Some((id.as_str(), props))
            }
        };
        let memory = machine::ram(self.memory.as_deref(), backend)?;
        let mut tail = Vec::new();
        if let Some(m) = memory {
            tail.extend(["--memory".to_string(), m]);
        }
        for (props, text) in &self.objects {
            if props.get("id").and_then(Value::as_str) != ram_id.as_deref() {
                tail.extend(["--object".to_string(), text.clone()]);
            }
        }
        // QEMU's default serial, which -nodefaults removes, is stdio with -nographic
        // and a graphical console (none here) otherwise.
        let serial = match (self.uart.take(), self.serial.take()) {
            (Some(chardev), _) => format!("chardev:{chardev}"),
            (None, Some(s)) if s == "stdio" => "stdout".into(),
            (None, Some(s)) => s,
            (None, None) if self.nographic && !self.nodefaults => "stdout".into(),
            (None, None) => "none".into(),
        };
        // The none machine has no UART.
        if self.machine.kind == MachineType::Pc {
            tail.extend(["--serial".to_string(), serial]);
        }
        self.out.extend(tail);
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests;
