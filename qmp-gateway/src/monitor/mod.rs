//! Monitors on chardevs, as QEMU's `-mon chardev=ID[,mode=control|readline][,id=..]
//! [,pretty=on|off]`: a QMP monitor (mode=control) is served by the same QMP server as
//! --qmp, an HMP monitor (mode=readline, the default) by hmp_session.rs. On a socket
//! chardev each connection is a new session (greeting or banner first); on any other
//! kind the chardev's bytes are one session for as long as it lives. The chardev is
//! claimed when the command line is read (before the VM starts, so a chardev given to a
//! monitor and to the UART is refused) and served once the QMP server runs.

pub mod hmp_session;
pub mod readline;
pub mod spec;

use std::collections::BTreeSet;
use std::sync::Arc;

pub use spec::{Mode, MonSpec};

use crate::chardev::{ChardevError, Chardevs, Handoff, MonitorLink};
use crate::qmp::conn::Conn;
use crate::qmp::server::Server;

/// Why a --mon cannot be served (QEMU 7.2's words).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MonitorError {
    #[error("chardev \"{0}\" not found")]
    NotFound(String),
    #[error("Device '{0}' is in use")]
    InUse(String),
    #[error("Duplicate ID '{0}' for mon")]
    DuplicateId(String),
    #[error("{0}")]
    Chardev(#[from] ChardevError),
}

/// Claims each monitor's chardev (the command line's check, before the VM starts).
pub fn claim(chardevs: &Chardevs, specs: &[MonSpec]) -> Result<(), MonitorError> {
    let mut ids = BTreeSet::new();
    for spec in specs {
        if let Some(id) = &spec.id {
            if !ids.insert(id.clone()) {
                return Err(MonitorError::DuplicateId(id.clone()));
            }
        }
        chardevs
            .claim(&spec.chardev, &spec.frontend())
            .map_err(|e| match e {
                ChardevError::NotFound(id) => MonitorError::NotFound(id),
                ChardevError::Busy(id) => MonitorError::InUse(id),
                other => MonitorError::Chardev(other),
            })?;
    }
    Ok(())
}

/// Serves the monitors `claim` claimed, through `server`.
pub fn start(server: &Server, specs: &[MonSpec]) -> Result<(), MonitorError> {
    let chardevs = &server.gateway().chardevs;
    for spec in specs {
        let handoff: Handoff = match spec.mode {
            Mode::Control => {
                let (server, pretty) = (server.clone(), spec.pretty);
                Arc::new(move |stream, presence| {
                    server.accept_pretty(Conn::from(stream), presence, pretty)
                })
            }
            Mode::Readline => {
                let server = server.clone();
                Arc::new(move |stream, _| hmp_session::start(&server, Conn::from(stream)))
            }
        };
        match chardevs.connect_monitor(&spec.chardev, handoff)? {
            MonitorLink::Connections => {}
            MonitorLink::Bytes(fd, oob) => {
                let conn = Conn::Unix(fd.into());
                match spec.mode {
                    Mode::Control => server.serve_byte_monitor(conn, spec.pretty, oob),
                    Mode::Readline => hmp_session::start(server, conn),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_refuse_as_qemu() {
        let chardevs = Chardevs::default();
        chardevs
            .add("c", crate::chardev::spec::Backend::Null, false)
            .unwrap();
        chardevs
            .add("d", crate::chardev::spec::Backend::Null, false)
            .unwrap();
        let spec = |s: &str| MonSpec::from_cli(s).unwrap();
        assert_eq!(
            claim(&chardevs, &[spec("chardev=zz")])
                .unwrap_err()
                .to_string(),
            "chardev \"zz\" not found"
        );
        assert_eq!(
            claim(&chardevs, &[spec("chardev=c,id=m"), spec("chardev=d,id=m")])
                .unwrap_err()
                .to_string(),
            "Duplicate ID 'm' for mon"
        );
        assert_eq!(
            claim(&chardevs, &[spec("chardev=d"), spec("chardev=d")])
                .unwrap_err()
                .to_string(),
            "Device 'd' is in use"
        );
        chardevs.shutdown();
    }
}
