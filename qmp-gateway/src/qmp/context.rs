//! The context a command's handler runs in (the gateway, the client's fds, the command
//! table), the handler itself (typed by its command's arguments), and a command as the
//! table holds it: its name, its handler, its return type, the process that serves it,
//! how far it is covered, whether it may run out of band.

use ipc::{VmmReply, VmmRequest};
use serde_json::{Map, Value};

use super::args::{self, Arguments};
use super::protocol::{QmpError, QmpResult};
use super::qapi::{Member, Ty};
use crate::fdstore::{Account, Charge, FdError, HeldFd, NamedFds};
use crate::gateway::{ExitReason, Gateway};

/// Which process serves a command (the gateway answers the rest itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Gateway,
    VmmCore,
    /// The daemon of the disk the command names (or each disk's, merged).
    BlockDaemon,
    /// The daemon of the NIC the command names (or each NIC's, merged).
    NetDaemon,
}

/// How far a command is implemented (docs/qmp-coverage.md is checked against this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Done,
    /// Implemented with limits docs/qmp-coverage.md states.
    Partly,
    /// Answered as QEMU answers it when the device does not exist.
    NoDevice,
}

/// An fd that came ahead of a command: held (and charged to its client), or refused by
/// the fd budget, in which case a command that takes it reports why.
pub type ReceivedFd = Result<HeldFd, FdError>;

/// Everything a handler may touch.
pub struct Ctx<'a> {
    pub gw: &'a Gateway,
    /// The calling client's named fds.
    pub named_fds: &'a NamedFds,
    /// The calling client's account with the fd budget.
    pub fd_account: &'a Account,
    /// The fds that arrived with this command (SCM_RIGHTS).
    pub fds: Vec<ReceivedFd>,
    /// Set by quit: the gateway ends once the reply is on its way.
    pub exit_after_reply: Option<ExitReason>,
    /// The command table (query-commands and query-qmp-schema list it).
    pub commands: &'static [Command],
}

impl Ctx<'_> {
    /// The fd sent with the command, as QEMU's getfd/add-fd take it (the first; any
    /// others are closed when the command ends).
    pub fn take_fd(&mut self) -> Result<HeldFd, QmpError> {
        if self.fds.is_empty() {
            return Err(QmpError::generic(
                "No file descriptor supplied via SCM_RIGHTS",
            ));
        }
        Ok(self.fds.remove(0)?)
    }

    /// Charges `n` fds the command is about to make the gateway hold (a backend it
    /// opens) to the calling client.
    pub fn charge_fds(&self, n: usize) -> Result<Charge, QmpError> {
        Ok(self.fd_account.charge(n)?)
    }

    /// A call to vmm-core.
    pub fn vmm(&self, request: VmmRequest) -> Result<VmmReply, QmpError> {
        Ok(self.gw.vmm.request(request, &[])?)
    }
}

/// What runs a command: its arguments' members, and the run itself from arguments
/// checked against them.
pub trait Handler: Sync {
    fn members(&self) -> &'static [Member];

    /// Reads `args` as the command's arguments (QEMU's messages for what is missing,
    /// mistyped or unexpected) and runs the command.
    fn run(&self, ctx: &mut Ctx, args: Map<String, Value>) -> QmpResult;

    /// What serde reads for the arguments (None: decoded by hand).
    #[cfg(test)]
    fn serde_fields(&self) -> Option<&'static [&'static str]>;

    /// Whether `args` decode (for the tests that hold types and members together).
    #[cfg(test)]
    fn decodes(&self, args: Map<String, Value>) -> Result<(), QmpError>;
}

/// A handler that takes its command's typed arguments `A`.
pub struct Typed<A>(pub fn(&mut Ctx, A) -> QmpResult);

impl<A: Arguments> Handler for Typed<A> {
    fn members(&self) -> &'static [Member] {
        A::MEMBERS
    }

    fn run(&self, ctx: &mut Ctx, args: Map<String, Value>) -> QmpResult {
        (self.0)(ctx, args::read(args)?)
    }

    #[cfg(test)]
    fn serde_fields(&self) -> Option<&'static [&'static str]> {
        A::serde_fields()
    }

    #[cfg(test)]
    fn decodes(&self, args: Map<String, Value>) -> Result<(), QmpError> {
        A::decode(args).map(drop)
    }
}

/// One row of the command table.
pub struct Command {
    pub name: &'static str,
    pub handler: &'static dyn Handler,
    pub ret: Ty,
    pub allow_oob: bool,
    pub owner: Owner,
    pub coverage: Coverage,
}

impl Command {
    /// The arguments' members.
    pub fn args(&self) -> &'static [Member] {
        self.handler.members()
    }
}
