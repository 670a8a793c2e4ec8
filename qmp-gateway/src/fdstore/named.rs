//! A client's named fds (getfd/closefd): closed when the client goes, each charged to the
//! client while the gateway holds it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use parking_lot::Mutex;

use super::budget::HeldFd;
use super::error::FdError;

#[derive(Default)]
pub struct NamedFds(Mutex<HashMap<String, HeldFd>>);

impl NamedFds {
    pub fn insert(&self, name: &str, fd: HeldFd) -> Result<(), FdError> {
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(FdError::NameStartsWithDigit);
        }
        // Replacing a name closes the fd it had, as QEMU does.
        self.0.lock().insert(name.to_string(), fd);
        Ok(())
    }

    pub fn close(&self, name: &str) -> Result<(), FdError> {
        self.0
            .lock()
            .remove(name)
            .map(drop)
            .ok_or_else(|| FdError::NameNotFound(name.to_string()))
    }

    /// Takes a named fd out (add_client: it becomes a connection).
    pub fn take(&self, name: &str) -> Result<HeldFd, FdError> {
        self.0
            .lock()
            .remove(name)
            .ok_or_else(|| FdError::NameNotFound(name.to_string()))
    }

    /// A duplicate of a named fd, to send to another process.
    pub fn dup(&self, name: &str) -> Result<OwnedFd, FdError> {
        let map = self.0.lock();
        let fd = map
            .get(name)
            .ok_or_else(|| FdError::NameNotFound(name.to_string()))?;
        fd.try_clone_fd().map_err(|error| FdError::Dup {
            name: name.to_string(),
            error,
        })
    }

    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdstore::budget::tests::{budget, devnull};

    #[test]
    fn named_fds() {
        let b = budget(10, 10);
        let client = b.account();
        let n = NamedFds::default();
        n.insert("a", client.hold(devnull()).unwrap()).unwrap();
        n.insert("a", client.hold(devnull()).unwrap()).unwrap();
        assert_eq!(n.len(), 1);
        // The replaced fd gave its charge back.
        assert_eq!(client.held(), 1);
        assert!(n.insert("1a", client.hold(devnull()).unwrap()).is_err());
        assert_eq!(client.held(), 1);
        assert!(n.dup("a").is_ok());
        n.close("a").unwrap();
        assert_eq!(
            n.close("a").unwrap_err().to_string(),
            "File descriptor named 'a' not found"
        );
        assert_eq!(b.held(), 0);
    }
}
