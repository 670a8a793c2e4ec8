//! Image locking as QEMU's file driver does it, so Flotilla and QEMU (qemu-system,
//! qemu-img, qemu-storage-daemon) keep off each other's images: open file description
//! (OFD) locks, shared, on one byte per permission. A user of an image holds byte
//! 100 + i for each permission i it takes, and byte 200 + i for each it does not let
//! others take; it may take permission i only if nobody holds byte 200 + i, and may
//! refuse others permission i only if nobody holds byte 100 + i. The permissions are
//! QEMU's BLK_PERM_* bits in its order (consistent read, write, write unchanged,
//! resize), and so are the refusals' texts.
//!
//! The locks belong to the open file description the gateway opened: the daemons get
//! that same description (SCM_RIGHTS), and the locks go when the last fd to it closes.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Where QEMU's locks start (libvirt keeps the first bytes).
const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// A set of QEMU's block permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms(u8);

impl Perms {
    pub const CONSISTENT_READ: Perms = Perms(1);
    pub const WRITE: Perms = Perms(2);
    pub const WRITE_UNCHANGED: Perms = Perms(4);
    pub const RESIZE: Perms = Perms(8);
    pub const NONE: Perms = Perms(0);
    pub const ALL: Perms = Perms(0xf);

    pub const fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    pub const fn without(self, other: Perms) -> Perms {
        Perms(self.0 & !other.0)
    }

    fn has(self, bit: usize) -> bool {
        self.0 & (1 << bit) != 0
    }

    /// What a guest's disk takes (QEMU's virtio-blk: it reads, and writes unless
    /// read-only) and what it lets others take (everything but writing: QEMU's default
    /// without share-rw).
    pub fn for_disk(read_only: bool) -> (Perms, Perms) {
        let take = if read_only {
            Perms::CONSISTENT_READ
        } else {
            Perms::CONSISTENT_READ.union(Perms::WRITE)
        };
        (take, Perms::ALL.without(Perms::WRITE))
    }

    /// What a qcow2 node takes on its image file, used by a disk or not (QEMU 7.2,
    /// seen in its locks): it also resizes the file as clusters are allocated, and lets
    /// nobody else write or resize it, even read-only.
    pub fn for_qcow2_disk(read_only: bool) -> (Perms, Perms) {
        let take = if read_only {
            Perms::CONSISTENT_READ
        } else {
            Perms::CONSISTENT_READ
                .union(Perms::WRITE)
                .union(Perms::RESIZE)
        };
        (
            take,
            Perms::ALL.without(Perms::WRITE).without(Perms::RESIZE),
        )
    }

    /// What a disk's top image takes: a qcow2 image's or another's.
    pub fn for_top(qcow2: bool, read_only: bool) -> (Perms, Perms) {
        if qcow2 {
            Perms::for_qcow2_disk(read_only)
        } else {
            Perms::for_disk(read_only)
        }
    }

    /// What a backing file's user takes (QEMU's bdrv_default_perms_for_cow): it reads,
    /// and lets others read and write without changing it, nothing more.
    pub fn for_backing() -> (Perms, Perms) {
        (
            Perms::CONSISTENT_READ,
            Perms::CONSISTENT_READ.union(Perms::WRITE_UNCHANGED),
        )
    }
}

/// QEMU's names for its permissions (bdrv_perm_names).
const NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another user refuses a permission we take.
    #[error("Failed to get \"{0}\" lock")]
    Taken(&'static str),
    /// Another user takes a permission we refuse others.
    #[error("Failed to get shared \"{0}\" lock")]
    Shared(&'static str),
    #[error("Failed to lock byte {byte}: {error}")]
    Lock { byte: i64, error: std::io::Error },
}

fn flock(kind: libc::c_short, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

/// Sets (F_RDLCK) or drops (F_UNLCK) our lock on one byte.
fn set(fd: BorrowedFd, kind: libc::c_short, byte: i64) -> std::io::Result<()> {
    let mut l = flock(kind, byte);
    // SAFETY: F_OFD_SETLK reads the flock struct we pass, on an fd we hold.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut l) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether anybody but us holds a lock on the byte (QEMU asks for a write lock).
fn held_by_others(fd: BorrowedFd, byte: i64) -> std::io::Result<bool> {
    let mut l = flock(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: F_OFD_GETLK reads and writes the flock struct we pass.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut l) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l.l_type != libc::F_UNLCK as libc::c_short)
}

/// The bytes a user with `take` and `share` holds.
fn bytes(take: Perms, share: Perms) -> impl Iterator<Item = i64> {
    let taken = (0..NAMES.len()).filter(move |&i| take.has(i));
    let refused = (0..NAMES.len()).filter(move |&i| !share.has(i));
    taken
        .map(|i| PERM_BASE + i as i64)
        .chain(refused.map(|i| SHARED_BASE + i as i64))
}

/// Takes the locks for a user of the image behind `fd` that takes `take` and lets
/// others take `share` (QEMU's order: lock first, then look for conflicts, so two
/// users starting at once cannot both win). On a conflict nothing stays locked.
pub fn lock(fd: BorrowedFd, take: Perms, share: Perms) -> Result<(), LockError> {
    let result = try_lock(fd, take, share);
    if result.is_err() {
        unlock(fd, take, share);
    }
    result
}

fn try_lock(fd: BorrowedFd, take: Perms, share: Perms) -> Result<(), LockError> {
    for byte in bytes(take, share) {
        set(fd, libc::F_RDLCK as libc::c_short, byte)
            .map_err(|error| LockError::Lock { byte, error })?;
    }
    let busy =
        |byte: i64| held_by_others(fd, byte).map_err(|error| LockError::Lock { byte, error });
    for (i, name) in NAMES.iter().enumerate() {
        if take.has(i) && busy(SHARED_BASE + i as i64)? {
            return Err(LockError::Taken(name));
        }
    }
    for (i, name) in NAMES.iter().enumerate() {
        if !share.has(i) && busy(PERM_BASE + i as i64)? {
            return Err(LockError::Shared(name));
        }
    }
    Ok(())
}

/// Drops the locks `lock` took with the same permissions.
pub fn unlock(fd: BorrowedFd, take: Perms, share: Perms) {
    for byte in bytes(take, share) {
        let _ = set(fd, libc::F_UNLCK as libc::c_short, byte);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn image(tag: &str) -> (std::path::PathBuf, std::fs::File, std::fs::File) {
        let path = std::env::temp_dir().join(format!("flotilla-lock-{tag}-{}", std::process::id()));
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let (a, b) = (open(), open());
        (path, a, b)
    }

    #[test]
    fn writers_exclude_each_other_readers_share() {
        let (path, a, b) = image("rw");
        let (rw_take, rw_share) = Perms::for_disk(false);
        let (ro_take, ro_share) = Perms::for_disk(true);
        lock(a.as_fd(), rw_take, rw_share).unwrap();
        // The same description may lock again (a second user in this process would
        // open its own).
        lock(a.as_fd(), rw_take, rw_share).unwrap();
        assert_eq!(
            lock(b.as_fd(), rw_take, rw_share).unwrap_err().to_string(),
            "Failed to get \"write\" lock"
        );
        assert_eq!(
            lock(b.as_fd(), ro_take, ro_share).unwrap_err().to_string(),
            "Failed to get shared \"write\" lock"
        );
        // A refused user left nothing behind: once the writer goes, readers share.
        unlock(a.as_fd(), rw_take, rw_share);
        lock(a.as_fd(), ro_take, ro_share).unwrap();
        lock(b.as_fd(), ro_take, ro_share).unwrap();
        // A resize (what block_resize takes) goes beside readers, which share it.
        let c = std::fs::OpenOptions::new().read(true).open(&path).unwrap();
        lock(c.as_fd(), Perms::RESIZE, Perms::ALL).unwrap();
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_bytes_are_qemus() {
        let (take, share) = Perms::for_disk(false);
        assert_eq!(bytes(take, share).collect::<Vec<_>>(), [100, 101, 201]);
        let (take, share) = Perms::for_disk(true);
        assert_eq!(bytes(take, share).collect::<Vec<_>>(), [100, 201]);
        assert_eq!(bytes(Perms::RESIZE, Perms::ALL).collect::<Vec<_>>(), [103]);
        // As QEMU 7.2 holds a qcow2 chain (seen in /proc/locks).
        let (take, share) = Perms::for_qcow2_disk(false);
        assert_eq!(
            bytes(take, share).collect::<Vec<_>>(),
            [100, 101, 103, 201, 203]
        );
        let (take, share) = Perms::for_qcow2_disk(true);
        assert_eq!(bytes(take, share).collect::<Vec<_>>(), [100, 201, 203]);
        let (take, share) = Perms::for_backing();
        assert_eq!(bytes(take, share).collect::<Vec<_>>(), [100, 201, 203]);
    }
}
