//! migration-agent: live migration of a running VM.
//! Not built yet: the binary says so and fails rather than pretend to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("migration-agent: not implemented yet: live migration of a running VM");
    ExitCode::from(2)
}
