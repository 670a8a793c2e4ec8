//! Why a QEMU command line is refused: QEMU 7.2's words where QEMU refuses the same thing,
//! Flotilla's own (saying what it takes instead) where QEMU would accept it.

/// A refusal, printed as QEMU prints its own: `PROGRAM: MESSAGE`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// QEMU's error_report for an option: `-opt arg: message`.
    #[error("{option}: {message}")]
    Option { option: String, message: String },
    /// QEMU's messages that name no option (as QEMU prints them).
    #[error("{0}")]
    Plain(String),
}

impl CliError {
    /// A refusal of `-name arg` (QEMU's `-name arg: message` location prefix).
    pub fn at(name: &str, arg: Option<&str>, message: impl Into<String>) -> CliError {
        let option = match arg {
            Some(a) => format!("-{name} {a}"),
            None => format!("-{name}"),
        };
        CliError::Option {
            option,
            message: message.into(),
        }
    }

    pub fn plain(message: impl Into<String>) -> CliError {
        CliError::Plain(message.into())
    }
}
