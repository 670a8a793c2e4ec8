//! The migration agent as the gateway runs it: a daemon of its own kind (started,
//! sandboxed and stopped like the device daemons), one per migration, on either side.

use ipc::{AgentEvent, AgentReply, AgentRequest};

use crate::children::daemon::{Daemon, DaemonKind};
use crate::children::link::Protocol;

pub struct AgentKind;

impl Protocol for AgentKind {
    type Call = AgentRequest;
    type Answer = AgentReply;
    type Event = AgentEvent;
}

impl DaemonKind for AgentKind {
    const PROCESS: &'static str = "migration-agent";
    const NAME: &'static str = "migration agent";

    fn quit() -> AgentRequest {
        AgentRequest::Quit
    }

    fn opened(answer: &AgentReply) -> bool {
        *answer == AgentReply::Done
    }
}

pub type Agent = Daemon<AgentKind>;
