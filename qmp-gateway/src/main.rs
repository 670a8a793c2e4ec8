//! qmp-gateway: the QMP front door and supervisor of the other processes (issue 3).
//! Not built yet: the binary says so and fails rather than pretend to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("qmp-gateway: not implemented yet: the QMP front door and supervisor of the other processes (issue 3)");
    ExitCode::from(2)
}
