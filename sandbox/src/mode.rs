//! How strictly the gateway asks a process to sandbox itself (`--sandbox`).

use std::str::FromStr;

/// How strictly the sandbox is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Everything, and a system call outside the allowlist kills the process (after it
    /// reported the call).
    Enforce,
    /// Everything, but a system call outside the allowlist is allowed and reported: for
    /// finding what an allowlist lacks.
    Log,
    /// No sandbox.
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Log => "log",
            Mode::Off => "off",
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "log" => Ok(Mode::Log),
            "off" => Ok(Mode::Off),
            _ => Err(format!("'{s}': expected enforce, log or off")),
        }
    }
}
