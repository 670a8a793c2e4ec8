//! File descriptors clients hand the gateway: named ones (getfd, per client, closed when
//! the client goes) and fd sets (add-fd, shared by all clients, referenced as
//! /dev/fdset/N by the commands that open files). The gateway holds them and sends
//! duplicates over ipc to the process that uses them.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd};

use parking_lot::Mutex;
use serde_json::{json, Value};

/// Why a client's fd request failed (QEMU's texts).
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
    #[error("at most {MAX_SETS} fd sets")]
    TooManySets,
    #[error("fd set {0} already holds {MAX_FDS_PER_SET} fds")]
    SetFull(i64),
    #[error("File descriptor named 'fdset-id:{0}' not found")]
    SetNotFound(i64),
    #[error("File descriptor named 'fdset-id:{set}, fd:{fd}' not found")]
    FdNotInSet { set: i64, fd: i64 },
}

/// A client's named fds (getfd/closefd).
#[derive(Default)]
pub struct NamedFds(Mutex<HashMap<String, OwnedFd>>);

impl NamedFds {
    pub fn insert(&self, name: &str, fd: OwnedFd) -> Result<(), FdError> {
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

    /// A duplicate of a named fd, to send to another process.
    pub fn dup(&self, name: &str) -> Result<OwnedFd, FdError> {
        let map = self.0.lock();
        let fd = map
            .get(name)
            .ok_or_else(|| FdError::NameNotFound(name.to_string()))?;
        fd.try_clone().map_err(|error| FdError::Dup {
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

struct SetFd {
    fd: OwnedFd,
    opaque: Option<String>,
}

/// Most fds one set may hold, and most sets: a client cannot make the gateway hoard fds.
pub const MAX_FDS_PER_SET: usize = 64;
pub const MAX_SETS: usize = 1024;

#[derive(Default)]
pub struct FdSets(Mutex<BTreeMap<i64, Vec<SetFd>>>);

impl FdSets {
    /// add-fd: puts `fd` in set `id` (or the lowest unused id); returns (set id, fd number).
    pub fn add(
        &self,
        id: Option<i64>,
        fd: OwnedFd,
        opaque: Option<String>,
    ) -> Result<(i64, i64), FdError> {
        let mut sets = self.0.lock();
        let id = match id {
            Some(id) if id < 0 => return Err(FdError::NegativeSetId),
            Some(id) => id,
            None => (0..).find(|i| !sets.contains_key(i)).unwrap_or(0),
        };
        if !sets.contains_key(&id) && sets.len() >= MAX_SETS {
            return Err(FdError::TooManySets);
        }
        let set = sets.entry(id).or_default();
        if set.len() >= MAX_FDS_PER_SET {
            return Err(FdError::SetFull(id));
        }
        let number = i64::from(fd.as_raw_fd());
        set.push(SetFd { fd, opaque });
        Ok((id, number))
    }

    /// remove-fd: one fd of a set, or the whole set.
    pub fn remove(&self, id: i64, fd: Option<i64>) -> Result<(), FdError> {
        let mut sets = self.0.lock();
        let missing = || match fd {
            Some(fd) => FdError::FdNotInSet { set: id, fd },
            None => FdError::SetNotFound(id),
        };
        let set = sets.get_mut(&id).ok_or_else(missing)?;
        match fd {
            None => {
                sets.remove(&id);
            }
            Some(number) => {
                let at = set
                    .iter()
                    .position(|f| i64::from(f.fd.as_raw_fd()) == number)
                    .ok_or_else(missing)?;
                set.remove(at);
                if set.is_empty() {
                    sets.remove(&id);
                }
            }
        }
        Ok(())
    }

    pub fn query(&self) -> Value {
        let sets = self.0.lock();
        Value::Array(
            sets.iter()
                .map(|(id, fds)| {
                    let fds: Vec<Value> = fds
                        .iter()
                        .map(|f| {
                            let mut v = json!({"fd": f.fd.as_raw_fd()});
                            if let Some(o) = &f.opaque {
                                v["opaque"] = json!(o);
                            }
                            v
                        })
                        .collect();
                    json!({"fdset-id": id, "fds": fds})
                })
                .collect(),
        )
    }

    /// Opening /dev/fdset/N: a duplicate of the set's first fd whose access mode is the
    /// one asked for (QEMU's rule). Fails as opening would: ENOENT without such a set,
    /// EACCES when no fd has that mode.
    pub fn dup_for_open(&self, id: i64, write: bool) -> std::io::Result<OwnedFd> {
        let want = if write { libc::O_RDWR } else { libc::O_RDONLY };
        let sets = self.0.lock();
        let set = sets
            .get(&id)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        let f = set
            .iter()
            .find(|f| {
                // SAFETY: F_GETFL on an fd we own.
                let flags = unsafe { libc::fcntl(f.fd.as_raw_fd(), libc::F_GETFL) };
                flags >= 0 && flags & libc::O_ACCMODE == want
            })
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EACCES))?;
        f.fd.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn fdsets_allocate_query_and_remove_like_qemu() {
        let sets = FdSets::default();
        let (id, fd) = sets.add(Some(3), devnull(), Some("hello".into())).unwrap();
        assert_eq!(id, 3);
        assert_eq!(sets.add(None, devnull(), None).unwrap().0, 0);
        assert_eq!(sets.add(None, devnull(), None).unwrap().0, 1);
        let q = sets.query();
        assert_eq!(q.as_array().unwrap().len(), 3);
        assert_eq!(q[2]["fds"][0]["opaque"], "hello");
        assert_eq!(
            sets.remove(3, Some(999)).unwrap_err().to_string(),
            "File descriptor named 'fdset-id:3, fd:999' not found"
        );
        sets.remove(3, Some(fd)).unwrap();
        assert_eq!(
            sets.remove(3, None).unwrap_err().to_string(),
            "File descriptor named 'fdset-id:3' not found"
        );
        assert!(sets.dup_for_open(0, false).is_ok());
        assert_eq!(
            sets.dup_for_open(0, true).unwrap_err().raw_os_error(),
            Some(libc::EACCES)
        );
        assert_eq!(
            sets.dup_for_open(7, false).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert!(sets.add(Some(-1), devnull(), None).is_err());
    }

    #[test]
    fn a_set_cannot_grow_without_bound() {
        let sets = FdSets::default();
        for _ in 0..MAX_FDS_PER_SET {
            sets.add(Some(1), devnull(), None).unwrap();
        }
        assert!(sets.add(Some(1), devnull(), None).is_err());
    }

    #[test]
    fn named_fds() {
        let n = NamedFds::default();
        n.insert("a", devnull()).unwrap();
        n.insert("a", devnull()).unwrap();
        assert_eq!(n.len(), 1);
        assert!(n.insert("1a", devnull()).is_err());
        assert!(n.dup("a").is_ok());
        n.close("a").unwrap();
        assert_eq!(
            n.close("a").unwrap_err().to_string(),
            "File descriptor named 'a' not found"
        );
    }
}
