//! block-daemon: the vhost-user-blk backend serving block nodes (issue 4).
//! Not built yet: the binary says so and fails rather than pretend to run.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("block-daemon: not implemented yet: the vhost-user-blk backend serving block nodes (issue 4)");
    ExitCode::from(2)
}
