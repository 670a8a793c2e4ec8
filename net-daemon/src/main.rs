//! net-daemon: the vhost-user-net backend for one NIC (issue 6).
//! Not built yet: the binary says so and fails rather than pretend to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("net-daemon: not implemented yet: the vhost-user-net backend for one NIC (issue 6)");
    ExitCode::from(2)
}
