//! File descriptors clients hand the gateway (and the command line's --add-fd, `command_line.rs`,
//! and the numbered fds every fd= option takes, `inherited.rs`),
//! and how many it holds for them: named ones
//! (getfd, per client, closed when the client goes: `named.rs`), fd sets (add-fd, shared
//! by all clients, referenced as /dev/fdset/N by the commands that open files, closed as
//! QEMU closes them: `sets.rs`), and the budget every such fd is charged to while the
//! gateway holds it, per client and in total (`budget.rs`, derived from RLIMIT_NOFILE at
//! start; the images blockdev-add opens are charged to it too). The gateway holds them and
//! sends duplicates over ipc to the process that uses them.

pub mod budget;
pub mod command_line;
pub mod error;
pub mod inherited;
pub mod named;
pub mod sets;

pub use budget::{Account, BudgetError, Charge, FdBudget, FdLimits, HeldFd, Reservation};
pub use error::FdError;
pub use named::NamedFds;
pub use sets::{FdSets, MAX_FDS_PER_SET, MAX_SETS};
