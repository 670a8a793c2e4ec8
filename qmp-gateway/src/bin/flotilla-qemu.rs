//! flotilla-qemu: a QEMU-compatible entry point for libvirt (a domain's <emulator>). It
//! reads QEMU 7.2's command line (qmp_gateway::qemu_cli), then execs the qmp-gateway next
//! to it with the gateway's options. exec keeps the fds libvirt passed (the monitor's
//! socket, taps, -add-fd's), which the command line names by number; this process opens
//! nothing, and what the Rust runtime opens is close-on-exec.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use qmp_gateway::chardev::linger;
use qmp_gateway::chardev::spec::Backend;
use qmp_gateway::qemu_cli::{translate, Outcome};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // QEMU prefixes its errors with its program name.
    let program = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "flotilla-qemu".into());
    let mut words = Vec::new();
    for a in args {
        match a.into_string() {
            Ok(s) => words.push(s),
            Err(a) => {
                eprintln!("{program}: {}: not UTF-8", a.to_string_lossy());
                return ExitCode::FAILURE;
            }
        }
    }
    let gateway_args = match translate(&words, &program) {
        Ok(Outcome::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Outcome::Run(a)) => a,
        Err(e) => {
            eprintln!("{program}: {e}");
            // libvirt reads why once it connected to the monitor it passed (linger.rs).
            let chardevs = (words.windows(2))
                .filter(|w| w[0] == "-chardev")
                .filter_map(|w| Backend::from_cli(&w[1]).ok());
            let listeners: Vec<_> = chardevs.map(|(_, b)| b).collect();
            linger::until_client_pending(&linger::inherited_listeners(&listeners), linger::LINGER);
            return ExitCode::FAILURE;
        }
    };
    let gateway = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("qmp-gateway"),
        Err(e) => {
            eprintln!("{program}: locating qmp-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    let e = Command::new(&gateway).args(&gateway_args).exec();
    eprintln!("{program}: running {}: {e}", gateway.display());
    ExitCode::FAILURE
}
