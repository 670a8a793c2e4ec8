//! How the children are sandboxed (the mode) and how a child stopped by its seccomp
//! filter is reported: a log line and the sandbox-violation event.

use std::sync::Arc;

use crate::events::{Event, EventBus, SandboxViolation};

pub use ::sandbox::Mode;

/// How children are sandboxed, and where their violations are reported.
#[derive(Clone)]
pub struct Policy {
    pub mode: Mode,
    pub events: Arc<EventBus>,
}

impl Policy {
    /// Logs and announces that `process` (serving `device`, if any) was stopped for
    /// system call `nr`.
    pub fn report(&self, process: &str, device: Option<&str>, nr: i64) {
        let call = syscall_name(nr);
        match device {
            Some(d) => log::error!("{process} of {d}: sandbox violation: {call}"),
            None => log::error!("{process}: sandbox violation: {call}"),
        }
        self.events.emit(Event::SandboxViolation(SandboxViolation {
            process: process.to_string(),
            syscall: ::sandbox::syscalls::name(nr)
                .unwrap_or("unknown")
                .to_string(),
            number: nr,
            device: device.map(str::to_string),
        }));
    }
}

/// How a violation reads in logs and events: `socket (41)`.
pub fn syscall_name(nr: i64) -> String {
    match ::sandbox::syscalls::name(nr) {
        Some(name) => format!("{name} ({nr})"),
        None => format!("system call {nr}"),
    }
}
