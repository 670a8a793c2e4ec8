//! Who a sandboxed child is on the host. Root inside its user namespace, outside it is a
//! uid, and the gid of the same number, of its own: leased from a range
//! (`--sandbox-ids`, by default 65536 ids from 0x7F000000) for as long as the child
//! lives, so that no other process runs as it and may signal it, not another child, not
//! another gateway's, not whatever runs as nobody. Gateways on one host lease under OFD
//! locks on one byte per id of one lock file (as systemd's DynamicUser does with its own
//! lock files); an id the user database names, that /etc/subuid or /etc/subgid delegate,
//! or that a running process has, is skipped. A gateway without privilege can map only
//! its own ids, and does (spawn.rs): it leases nothing.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use parking_lot::Mutex;

/// A range of ids, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    first: u32,
    last: u32,
}

/// The default: in the part of the id space systemd's UIDS-GIDS documents as unused
/// (1879048192 to 2147352575), clear of system and regular users, nobody, DynamicUser's
/// and containers' ranges and subordinate ids as useradd hands them out, and below 2^31
/// (which some tools take for negative).
pub const DEFAULT_RANGE: IdRange = IdRange {
    first: 0x7F00_0000,
    last: 0x7F00_FFFF,
};

/// Where the gateways of one host take their leases.
pub const LOCK_DIR: &str = "/run/flotilla";
pub const LOCK_FILE: &str = "/run/flotilla/sandbox-ids.lock";

/// Ids no child may have: root, nobody, 16-bit -1 and -1.
const RESERVED: [(u32, &str); 4] = [
    (0, "root"),
    (65534, "nobody"),
    (65535, "(uid_t) -1 of 16-bit programs"),
    (u32::MAX, "(uid_t) -1"),
];

impl FromStr for IdRange {
    type Err = String;

    fn from_str(s: &str) -> Result<IdRange, String> {
        let (first, last) = s
            .split_once('-')
            .ok_or_else(|| format!("'{s}': expected FIRST-LAST (two ids)"))?;
        let id = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("'{s}': '{v}' is not an id (0 to 4294967295)"))
        };
        let range = IdRange {
            first: id(first)?,
            last: id(last)?,
        };
        if range.first > range.last {
            return Err(format!("'{s}': FIRST is above LAST"));
        }
        if let Some((id, what)) = RESERVED.iter().find(|(id, _)| range.contains(*id)) {
            return Err(format!("'{s}' holds {id}, {what}"));
        }
        Ok(range)
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl IdRange {
    fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

/// Why no id could be leased.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("sandbox ids: {LOCK_FILE}: {0}")]
    LockFile(std::io::Error),
    #[error("sandbox ids: locking id {id} in {LOCK_FILE}: {error}")]
    Lock { id: u32, error: std::io::Error },
    #[error(
        "no free sandbox id in {range} (--sandbox-ids): {ours} in use by this gateway's \
         children, the others by other processes or gateways, or named in the user database"
    )]
    Exhausted { range: IdRange, ours: usize },
}

/// The leases of this gateway.
struct Pool {
    range: IdRange,
    /// Its byte `id` is locked (OFD) while this gateway leases `id`.
    lock: File,
    leased: Mutex<BTreeSet<u32>>,
    /// /etc/subuid and /etc/subgid: (first, count).
    delegated: Vec<(u64, u64)>,
}

/// An id leased to one child; given back when dropped (after the child has been reaped).
pub struct IdLease {
    id: u32,
    pool: Arc<Pool>,
}

impl IdLease {
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        self.pool.release(self.id);
    }
}

/// The ranges a subordinate-id file delegates (`name:first:count` lines).
fn delegated(path: &Path) -> Vec<(u64, u64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':').skip(1);
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

/// Every uid and gid a process in /proc runs as (real, effective, saved, file system).
fn ids_of_processes() -> BTreeSet<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        e.file_name().to_str()?.parse::<u32>().ok()?;
        std::fs::read_to_string(e.path().join("status")).ok()
    })
    .flat_map(|status| {
        status
            .lines()
            .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:"))
            .flat_map(|l| l[4..].split_whitespace().filter_map(|v| v.parse().ok()))
            .collect::<Vec<u32>>()
    })
    .collect()
}

/// Whether the user database names `id` as a user or a group (a lookup that fails for
/// a reason other than "none" counts as named: the id is left alone).
fn named(id: u32) -> bool {
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: all-zero is a valid value for these plain C structs, filled in below.
    let (mut pwd, mut grp): (libc::passwd, libc::group) = unsafe { std::mem::zeroed() };
    let mut user = std::ptr::null_mut();
    let mut group = std::ptr::null_mut();
    // SAFETY: the reentrant lookups write into our structs and buffer, whose sizes we
    // pass, and set the result pointers to them or to null.
    let (u, g) = unsafe {
        (
            libc::getpwuid_r(id, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut user),
            libc::getgrgid_r(id, &mut grp, buf.as_mut_ptr(), buf.len(), &mut group),
        )
    };
    u == libc::ERANGE || g == libc::ERANGE || !user.is_null() || !group.is_null()
}

impl Pool {
    fn open(range: IdRange) -> Result<Pool, IdError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(LOCK_DIR)
            .map_err(IdError::LockFile)?;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(LOCK_FILE)
            .map_err(IdError::LockFile)?;
        let mut delegated_ids = delegated(Path::new("/etc/subuid"));
        delegated_ids.extend(delegated(Path::new("/etc/subgid")));
        Ok(Pool {
            range,
            lock,
            leased: Mutex::new(BTreeSet::new()),
            delegated: delegated_ids,
        })
    }

    /// Locks (or unlocks) byte `id` of the lock file: false if another gateway holds it.
    fn lock_byte(&self, id: u32, lock: bool) -> std::io::Result<bool> {
        let fl = libc::flock {
            l_type: if lock { libc::F_WRLCK } else { libc::F_UNLCK } as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: libc::off_t::from(id),
            l_len: 1,
            l_pid: 0,
        };
        // SAFETY: an OFD lock request on a file we hold, with a struct we own.
        if unsafe { libc::fcntl(self.lock.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EACCES) => Ok(false),
            _ => Err(e),
        }
    }

    fn lease(self: &Arc<Self>) -> Result<IdLease, IdError> {
        let mut leased = self.leased.lock();
        let running = ids_of_processes();
        let free = |id: &u32| {
            !leased.contains(id)
                && !running.contains(id)
                && !self.delegated.iter().any(|&(first, count)| {
                    (first..first.saturating_add(count)).contains(&u64::from(*id))
                })
        };
        for id in (self.range.first..=self.range.last).filter(free) {
            if !self
                .lock_byte(id, true)
                .map_err(|error| IdError::Lock { id, error })?
            {
                continue;
            }
            if named(id) {
                let _ = self.lock_byte(id, false);
                continue;
            }
            leased.insert(id);
            return Ok(IdLease {
                id,
                pool: self.clone(),
            });
        }
        Err(IdError::Exhausted {
            range: self.range,
            ours: leased.len(),
        })
    }

    fn release(&self, id: u32) {
        let mut leased = self.leased.lock();
        if let Err(e) = self.lock_byte(id, false) {
            log::warn!("sandbox id {id}: unlocking it: {e}");
        }
        leased.remove(&id);
    }
}

/// This gateway's leases: opened by `configure`, or with the default range on first use.
static POOL: Mutex<Option<Arc<Pool>>> = Mutex::new(None);

/// Leases come from `range` from now on. Called once at start (before any child), so that
/// a lock file that cannot be opened stops the gateway there. Without privilege nothing
/// is leased (children run as the gateway's own user) and this does nothing.
pub fn configure(range: IdRange) -> Result<(), IdError> {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return Ok(());
    }
    *POOL.lock() = Some(Arc::new(Pool::open(range)?));
    Ok(())
}

/// A free id for a new child.
pub fn lease() -> Result<IdLease, IdError> {
    let pool = {
        let mut slot = POOL.lock();
        match &*slot {
            Some(pool) => pool.clone(),
            None => slot.insert(Arc::new(Pool::open(DEFAULT_RANGE)?)).clone(),
        }
    };
    pool.lease()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_what_no_child_may_be() {
        let r: IdRange = "2130706432-2130771967".parse().unwrap();
        assert_eq!(r, DEFAULT_RANGE);
        assert_eq!(r.to_string(), "2130706432-2130771967");
        for (bad, says) in [
            ("10", "expected FIRST-LAST"),
            ("a-b", "'a' is not an id"),
            ("5-3", "FIRST is above LAST"),
            ("0-10", "holds 0, root"),
            ("65530-65540", "holds 65534, nobody"),
            ("4294967290-4294967295", "holds 4294967295"),
        ] {
            let e = bad.parse::<IdRange>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn subordinate_id_files_are_read_as_ranges() {
        let dir = std::env::temp_dir().join(format!("flotilla-subuid-{}", std::process::id()));
        std::fs::write(&dir, "alice:100000:65536\n# junk\nbob:165536:65536\n").unwrap();
        assert_eq!(delegated(&dir), [(100_000, 65_536), (165_536, 65_536)]);
        std::fs::remove_file(&dir).unwrap();
        assert!(delegated(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn a_range_is_leased_once_each_and_used_again_after_release() {
        // Unit tests run as root here; elsewhere the lock file cannot be made.
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } != 0 {
            return;
        }
        // Ids of our own, high enough that nothing on a test host has them.
        let first = 0x7F3F_0000 + (std::process::id() % 1000) * 4;
        let range = IdRange {
            first,
            last: first + 2,
        };
        let pool = Arc::new(Pool::open(range).unwrap());
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        assert_eq!([a.id(), b.id(), c.id()], [first, first + 1, first + 2]);
        let e = pool.lease().err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "no free sandbox id in {range} (--sandbox-ids): 3 in use by this gateway's \
                 children, the others by other processes or gateways, or named in the user \
                 database"
            )
        );
        // Another gateway (another open file description) finds them taken.
        let other = Arc::new(Pool::open(range).unwrap());
        assert!(other.lease().is_err());
        drop(b);
        let taken = other.lease().unwrap();
        assert_eq!(taken.id(), first + 1);
        assert!(pool.lease().is_err());
        drop(a);
        assert_eq!(pool.lease().unwrap().id(), first);
    }
}
