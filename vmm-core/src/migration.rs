//! vmm-core's part in a migration. On the source: dirty logging on and off, syncs of
//! KVM's log into the shared one, the stop-and-copy's stop and the device state out.
//! On the destination: guest RAM's memfd for the agent to fill, and the device state in.
//! Guest memory itself never passes through here: the agent reads and writes the memfd.
//! A live upgrade uses the same state out and in, with guest RAM's memfd handed over
//! as it is (`upgrade_info`).

use std::os::fd::OwnedFd;

use ipc::{RemoteError, VmmReply};

use crate::dirty_log::{self, DirtyLog};
use crate::vm::Vm;

/// What a request answers: the reply and the fds it carries.
pub type Answer = (Result<VmmReply, RemoteError>, Vec<OwnedFd>);

fn fail(e: impl std::fmt::Display) -> Answer {
    (Err(RemoteError::generic(e.to_string())), Vec::new())
}

/// The source's dirty logging, while a migration runs.
#[derive(Default)]
pub struct Outgoing {
    log: Option<DirtyLog>,
}

impl Outgoing {
    /// Logging on; the answer carries guest RAM's memfd and the log's.
    pub fn start(&mut self, vm: &Vm) -> Answer {
        if self.log.is_some() {
            return fail("a migration is already in progress");
        }
        let log = match DirtyLog::start(&vm.vm, &vm.ram) {
            Ok(log) => log,
            Err(e) => return fail(e),
        };
        let fds = (vm.ram.memfd().try_clone())
            .and_then(|ram| Ok((ram, log.file()?)))
            .map(|(ram, log)| vec![OwnedFd::from(ram), OwnedFd::from(log)]);
        let fds = match fds {
            Ok(fds) => fds,
            Err(e) => {
                let _ = log.stop(&vm.vm, &vm.ram);
                return fail(format!("handing over guest memory: {e}"));
            }
        };
        if let Err(e) = vm.set_backends_dirty_log(Some(&log)) {
            let _ = log.stop(&vm.vm, &vm.ram);
            return fail(e);
        }
        let reply = VmmReply::Migration {
            windows: dirty_log::windows(&vm.ram),
            bitmap_len: log.log().len(),
        };
        self.log = Some(log);
        (Ok(reply), fds)
    }

    pub fn sync(&self, vm: &Vm) -> Answer {
        match &self.log {
            Some(log) => match log.sync(&vm.vm, &vm.ram) {
                Ok(pages) => (Ok(VmmReply::Dirty { pages }), Vec::new()),
                Err(e) => fail(e),
            },
            None => fail("no migration is in progress"),
        }
    }

    /// Logging off (the migration ended one way or another); harmless when it is off.
    pub fn end(&mut self, vm: &Vm) -> Answer {
        if let Some(log) = self.log.take() {
            let backends = vm.set_backends_dirty_log(None);
            let kvm = log.stop(&vm.vm, &vm.ram).map_err(|e| e.to_string());
            if let Err(e) = backends.and(kvm) {
                return fail(e);
            }
        }
        (Ok(VmmReply::Done), Vec::new())
    }
}

/// The destination's guest RAM for the agent to write into.
pub fn incoming_memory(vm: &Vm) -> Answer {
    match vm.ram.memfd().try_clone() {
        Ok(ram) => (
            Ok(VmmReply::Memory {
                windows: dirty_log::windows(&vm.ram),
            }),
            vec![OwnedFd::from(ram)],
        ),
        Err(e) => fail(format!("handing over guest memory: {e}")),
    }
}

/// Before a live upgrade: the devices' shapes, and guest RAM's memfd for the vmm-core
/// that takes over.
pub fn upgrade_info(vm: &Vm) -> Answer {
    match vm.ram.memfd().try_clone() {
        Ok(ram) => (
            Ok(VmmReply::Upgrade {
                links: vm.link_shapes(),
            }),
            vec![OwnedFd::from(ram)],
        ),
        Err(e) => fail(format!("handing over guest memory: {e}")),
    }
}
