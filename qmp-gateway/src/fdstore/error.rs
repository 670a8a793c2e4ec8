//! Why a client's fd request failed: QEMU's texts where QEMU has one; the budget's own
//! where QEMU has no limit (qmp/errors.rs makes each a GenericError, QEMU's class for fd
//! errors).

#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("Parameter 'fdname' expects a name not starting with a digit")]
    NameStartsWithDigit,
    #[error("File descriptor named '{0}' not found")]
    NameNotFound(String),
    #[error("duplicating fd '{name}': {error}")]
    Dup { name: String, error: std::io::Error },
    #[error("Parameter 'fdset-id' expects a non-negative value")]
    NegativeSetId,
    /// The most sets there may be.
    #[error("at most {0} fd sets")]
    TooManySets(usize),
    #[error("fd set {set} already holds {max} fds")]
    SetFull { set: i64, max: usize },
    #[error("File descriptor named 'fdset-id:{0}' not found")]
    SetNotFound(i64),
    #[error("File descriptor named 'fdset-id:{set}, fd:{fd}' not found")]
    FdNotInSet { set: i64, fd: i64 },
    /// The client's share of the budget is spent.
    #[error(
        "Too many file descriptors: this client holds {0}, its limit (closefd, remove-fd, \
         netdev_del or blockdev-del give some back)"
    )]
    ClientLimit(usize),
    /// The gateway's total for its clients is spent.
    #[error(
        "Too many file descriptors: the gateway holds {0} for its clients, its limit (set \
         by its RLIMIT_NOFILE)"
    )]
    GatewayLimit(usize),
}
