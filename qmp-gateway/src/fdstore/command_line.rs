//! The command line's `--add-fd set=N,fd=M[,opaque=S]` (QEMU's -add-fd): an fd the
//! gateway's parent left open (libvirt's serial log, for one) put in fd set N, as add-fd
//! puts a client's, so /dev/fdset/N paths open it. The VM's own: charged to no client.

use std::str::FromStr;

use super::budget::HeldFd;
use super::inherited;
use super::sets::FdSets;
use crate::keyval;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFd {
    pub set: i64,
    pub fd: i32,
    pub opaque: Option<String>,
}

/// Why an --add-fd is refused (QEMU 7.2's words).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddFdError {
    #[error("Invalid parameter '{0}'")]
    Parameter(String),
    #[error("fd option is required and must be non-negative")]
    NoFd,
    #[error("fd cannot be a standard I/O stream")]
    Stdio,
    #[error("set option is required and must be non-negative")]
    NoSet,
    #[error("fd is not valid or already in use")]
    NotOpen,
    #[error("{0}")]
    Set(String),
}

impl FromStr for AddFd {
    type Err = AddFdError;

    fn from_str(s: &str) -> Result<AddFd, AddFdError> {
        let opts = keyval::qemu_opts(s, "fd");
        let number = |key: &str| {
            opts.get(key)
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|n| *n >= 0)
        };
        if let Some(key) = opts
            .keys()
            .find(|k| !["set", "fd", "opaque"].contains(&k.as_str()))
        {
            return Err(AddFdError::Parameter(key.clone()));
        }
        let fd = number("fd")
            .and_then(|n| i32::try_from(n).ok())
            .ok_or(AddFdError::NoFd)?;
        if fd <= libc::STDERR_FILENO {
            return Err(AddFdError::Stdio);
        }
        let set = number("set").ok_or(AddFdError::NoSet)?;
        let opaque = opts
            .get("opaque")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        Ok(AddFd { set, fd, opaque })
    }
}

/// Takes each inherited fd into its set, close-on-exec from now on (no child inherits
/// it; the process that uses it gets a duplicate). An fd is taken once.
pub fn take(sets: &FdSets, add: &[AddFd]) -> Result<(), (String, AddFdError)> {
    for a in add {
        let at = |e| (format!("set={},fd={}", a.set, a.fd), e);
        // QEMU's words cover both: not open, or taken already.
        let fd = inherited::take(a.fd).map_err(|_| at(AddFdError::NotOpen))?;
        sets.add(Some(a.set), HeldFd::uncharged(fd), a.opaque.clone())
            .map_err(|e| at(AddFdError::Set(e.to_string())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_qemus_add_fd() {
        assert_eq!(
            "set=0,fd=6,opaque=serial0-source".parse(),
            Ok(AddFd {
                set: 0,
                fd: 6,
                opaque: Some("serial0-source".into())
            })
        );
        for (text, e) in [
            ("set=0", AddFdError::NoFd),
            ("fd=-1,set=0", AddFdError::NoFd),
            ("fd=2,set=0", AddFdError::Stdio),
            ("fd=5", AddFdError::NoSet),
            ("fd=5,set=x", AddFdError::NoSet),
            ("fd=5,set=0,x=1", AddFdError::Parameter("x".into())),
        ] {
            assert_eq!(text.parse::<AddFd>(), Err(e), "{text}");
        }
    }

    #[test]
    fn an_fd_not_open_or_taken_twice_is_refused() {
        let sets = FdSets::default();
        let file = std::fs::File::open("/dev/null").unwrap();
        let n = std::os::fd::IntoRawFd::into_raw_fd(file);
        let add = |set| AddFd {
            set,
            fd: n,
            opaque: None,
        };
        assert_eq!(
            take(&sets, &[add(1), add(2)]).map_err(|(_, e)| e),
            Err(AddFdError::NotOpen)
        );
        // The first was taken into set 1 (and is closed with the sets).
        assert!(sets.dup_for_open(1, false).is_ok());
        assert!(sets.dup_for_open(2, false).is_err());
    }
}
