//! The guest's UART as a chardev's frontend: the command line's `--chardev`s are opened,
//! `--serial` names the UART's chardev (`chardev:ID`, or QEMU's label "serial0" for a
//! chardev made from today's forms: stdout is stdio, file:PATH a file, unix:PATH a
//! socket server that does not wait), and the UART is connected to it.

use std::os::fd::OwnedFd;

use ipc::host::SerialConfig;

use super::spec::{Address, Backend};
use super::{ChardevError, Chardevs};

/// The UART's name as a frontend (QEMU's label for -serial's own chardev).
pub const UART: &str = "serial0";

/// Opens `specs` (id and backend, in command-line order) and the chardev `serial`
/// makes; returns vmm-core's end of the UART's connection (None: no console).
pub fn open_command_line(
    chardevs: &Chardevs,
    specs: &[(String, Backend)],
    serial: &SerialConfig,
) -> Result<Option<OwnedFd>, ChardevError> {
    for (id, backend) in specs {
        // A server with wait=on waits for its client here, before the VM starts, as
        // QEMU's -chardev does.
        chardevs.add(id, backend.clone(), true)?;
    }
    let own = |backend| chardevs.add(UART, backend, false).map(|_| UART.to_string());
    let id = match serial {
        SerialConfig::None => return Ok(None),
        SerialConfig::Chardev(id) => id.clone(),
        SerialConfig::Stdout => own(Backend::Stdio)?,
        SerialConfig::File(p) => own(Backend::File {
            out: p.clone(),
            input: None,
            append: false,
        })?,
        SerialConfig::Unix(p) => own(Backend::Socket {
            addr: Address::Unix(p.clone()),
            server: true,
            wait: false,
            reconnect: 0,
            nodelay: false,
        })?,
    };
    chardevs.attach(&id, UART).map(Some)
}
