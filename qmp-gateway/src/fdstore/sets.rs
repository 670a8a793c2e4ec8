//! The fd sets (add-fd/remove-fd/query-fdsets), shared by all clients and referenced as
//! /dev/fdset/N by the commands that open files. Each fd stays charged to the budget while
//! a set holds it. A set outlives the client that added it, as in QEMU, until the last
//! client leaves while the VM runs: then the sets nothing opened are closed (QEMU 7.2's
//! monitor_fdsets_cleanup; while the VM is not running they are kept for the next client).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::budget::HeldFd;
use super::error::FdError;

/// Most fds one set may hold, and most sets (the budget bounds them all together too).
pub const MAX_FDS_PER_SET: usize = 64;
pub const MAX_SETS: usize = 1024;

struct SetFd {
    fd: HeldFd,
    opaque: Option<String>,
}

#[derive(Default)]
struct Set {
    fds: Vec<SetFd>,
    /// A command opened /dev/fdset/N: what it opened may be opened again (QEMU keeps a
    /// set with duplicates in use).
    opened: bool,
}

#[derive(Default)]
pub struct FdSets(Mutex<BTreeMap<i64, Set>>);

impl FdSets {
    /// add-fd: puts `fd` in set `id` (or the lowest unused id); returns (set id, fd number).
    pub fn add(
        &self,
        id: Option<i64>,
        fd: HeldFd,
        opaque: Option<String>,
    ) -> Result<(i64, i64), FdError> {
        let mut sets = self.0.lock();
        let id = match id {
            Some(id) if id < 0 => return Err(FdError::NegativeSetId),
            Some(id) => id,
            None => (0..).find(|i| !sets.contains_key(i)).unwrap_or(0),
        };
        if !sets.contains_key(&id) && sets.len() >= MAX_SETS {
            return Err(FdError::TooManySets(MAX_SETS));
        }
        let set = sets.entry(id).or_default();
        if set.fds.len() >= MAX_FDS_PER_SET {
            return Err(FdError::SetFull {
                set: id,
                max: MAX_FDS_PER_SET,
            });
        }
        let number = i64::from(fd.as_raw_fd());
        set.fds.push(SetFd { fd, opaque });
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
                    .fds
                    .iter()
                    .position(|f| i64::from(f.fd.as_raw_fd()) == number)
                    .ok_or_else(missing)?;
                set.fds.remove(at);
                if set.fds.is_empty() {
                    sets.remove(&id);
                }
            }
        }
        Ok(())
    }

    pub fn query(&self) -> Value {
        let sets = self.0.lock();
        // Highest id first, as QEMU 7.2 lists them (it prepends while walking its
        // ordered list).
        Value::Array(
            sets.iter()
                .rev()
                .map(|(id, set)| {
                    let fds: Vec<Value> = set
                        .fds
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
        self.dup_with_access(id, want)
    }

    /// As dup_for_open, for an open with access mode `want` (O_RDONLY, O_WRONLY or
    /// O_RDWR: a file chardev opens O_WRONLY, as QEMU's).
    pub fn dup_with_access(&self, id: i64, want: i32) -> std::io::Result<OwnedFd> {
        let mut sets = self.0.lock();
        let set = sets
            .get_mut(&id)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        let f = set
            .fds
            .iter()
            .find(|f| {
                // SAFETY: F_GETFL on an fd we own.
                let flags = unsafe { libc::fcntl(f.fd.as_raw_fd(), libc::F_GETFL) };
                flags >= 0 && flags & libc::O_ACCMODE == want
            })
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EACCES))?;
        let dup = f.fd.try_clone_fd()?;
        set.opened = true;
        Ok(dup)
    }

    /// The last client left while the VM runs: closes the sets nothing opened (QEMU's
    /// rule); returns how many fds were closed.
    pub fn close_unopened(&self) -> usize {
        let mut sets = self.0.lock();
        let mut closed = 0;
        sets.retain(|_, set| {
            if !set.opened {
                closed += set.fds.len();
            }
            set.opened
        });
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdstore::budget::tests::{budget, devnull};
    use crate::fdstore::budget::Account;

    fn held(a: &Account) -> HeldFd {
        a.hold(devnull()).unwrap()
    }

    #[test]
    fn fdsets_allocate_query_and_remove_like_qemu() {
        let b = budget(100, 100);
        let a = b.account();
        let sets = FdSets::default();
        let (id, fd) = sets.add(Some(3), held(&a), Some("hello".into())).unwrap();
        assert_eq!(id, 3);
        assert_eq!(sets.add(None, held(&a), None).unwrap().0, 0);
        assert_eq!(sets.add(None, held(&a), None).unwrap().0, 1);
        let q = sets.query();
        let ids: Vec<_> = q
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["fdset-id"])
            .collect();
        assert_eq!(ids, [3, 1, 0], "highest first, as QEMU 7.2 lists them");
        assert_eq!(q[0]["fds"][0]["opaque"], "hello");
        assert_eq!(
            sets.remove(3, Some(999)).unwrap_err().to_string(),
            "File descriptor named 'fdset-id:3, fd:999' not found"
        );
        sets.remove(3, Some(fd)).unwrap();
        assert_eq!(
            sets.remove(3, None).unwrap_err().to_string(),
            "File descriptor named 'fdset-id:3' not found"
        );
        assert_eq!(b.held(), 2);
        assert!(sets.dup_for_open(0, false).is_ok());
        assert_eq!(
            sets.dup_for_open(0, true).unwrap_err().raw_os_error(),
            Some(libc::EACCES)
        );
        assert_eq!(
            sets.dup_for_open(7, false).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        assert!(sets.add(Some(-1), held(&a), None).is_err());
    }

    #[test]
    fn a_set_cannot_grow_without_bound() {
        let b = budget(1000, 1000);
        let a = b.account();
        let sets = FdSets::default();
        for _ in 0..MAX_FDS_PER_SET {
            sets.add(Some(1), held(&a), None).unwrap();
        }
        assert!(sets.add(Some(1), held(&a), None).is_err());
        assert_eq!(b.held(), MAX_FDS_PER_SET);
    }

    #[test]
    fn sets_nothing_opened_close_when_asked_and_give_their_charge_back() {
        let b = budget(10, 10);
        let a = b.account();
        let sets = FdSets::default();
        sets.add(Some(1), held(&a), None).unwrap();
        sets.add(Some(1), held(&a), None).unwrap();
        sets.add(Some(2), held(&a), None).unwrap();
        sets.dup_for_open(2, false).unwrap();
        drop(a);
        assert_eq!(sets.close_unopened(), 2);
        assert_eq!(b.held(), 1);
        assert_eq!(sets.query().as_array().map(Vec::len), Some(1));
        assert_eq!(sets.query()[0]["fdset-id"], 2);
    }
}
