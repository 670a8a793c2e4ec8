//! query-command-line-options, answered from cli_options.rs's table.

use serde::Deserialize;

use crate::cli_options;
use crate::qmp::args::serde_arguments;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, Ty};

#[derive(Debug, Deserialize)]
pub struct QueryCommandLineOptions {
    pub option: Option<String>,
}

serde_arguments!(QueryCommandLineOptions, [opt("option", Ty::Str)]);

pub fn query_command_line_options(_: &mut Ctx, a: QueryCommandLineOptions) -> QmpResult {
    cli_options::describe(a.option.as_deref()).map_err(|e| QmpError::generic(e.to_string()))
}
