//! The process-wide part of the sandbox, applied once, early, before any thread starts
//! serving: an empty read-only root, rlimits (`limits.rs`), no capabilities, no new
//! privileges, and a
//! Landlock domain that allows no file access, no TCP, and no signals or abstract-socket
//! connections out of the domain. Order matters: the mounts need CAP_SYS_ADMIN, so they
//! come before the capabilities go.

use std::ffi::CString;

use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};

use crate::limits::{self, LimitError, Limits};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{what}: {error}")]
    Sys {
        what: &'static str,
        error: std::io::Error,
    },
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error("landlock: {0}")]
    Landlock(String),
}

fn check(rc: libc::c_int, what: &'static str) -> Result<(), JailError> {
    if rc < 0 {
        Err(JailError::Sys {
            what,
            error: std::io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

fn cstr(s: &str) -> CString {
    // Only called with literals below, none of which holds a NUL.
    CString::new(s).unwrap_or_default()
}

/// What was applied, for the process's log line.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    /// Landlock enforced fully (false: the kernel lacks some of it).
    pub landlock_full: bool,
}

/// Replaces the file system view with an empty read-only tmpfs, in a mount namespace of
/// our own (made here if the gateway did not).
fn empty_root() -> Result<(), JailError> {
    // SAFETY: plain system calls on constant C strings that outlive them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)")?;
        check(
            libc::mount(
                std::ptr::null(),
                cstr("/").as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making mounts private",
        )?;
        let new_root = cstr("/tmp");
        check(
            libc::mount(
                cstr("flotilla-jail").as_ptr(),
                new_root.as_ptr(),
                cstr("tmpfs").as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                cstr("size=4k,mode=0500").as_ptr().cast(),
            ),
            "mounting the empty root",
        )?;
        check(libc::chdir(new_root.as_ptr()), "chdir to the new root")?;
        // pivot_root(".", "."): the old root ends up stacked on the new one, and goes
        // with a lazy unmount; no directory for it is needed.
        check(
            libc::syscall(libc::SYS_pivot_root, cstr(".").as_ptr(), cstr(".").as_ptr()) as i32,
            "pivot_root",
        )?;
        check(
            libc::umount2(cstr(".").as_ptr(), libc::MNT_DETACH),
            "unmounting the host's root",
        )?;
        check(libc::chdir(cstr("/").as_ptr()), "chdir /")?;
        check(
            libc::mount(
                std::ptr::null(),
                cstr("/").as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ),
            "making the root read-only",
        )?;
    }
    Ok(())
}

fn drop_capabilities() -> Result<(), JailError> {
    // SAFETY: prctl and capset with integer arguments and structs we own.
    unsafe {
        for cap in 0..=63 {
            // EINVAL past the last capability this kernel knows: done.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(JailError::Sys {
                    what: "dropping the bounding set",
                    error: std::io::Error::last_os_error(),
                });
            }
        }
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "clearing ambient capabilities",
        )?;
        // struct __user_cap_header_struct { version, pid }, two data words for v3.
        let header: [u32; 2] = [0x2008_0522, 0];
        let data: [u32; 6] = [0; 6];
        check(
            libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) as i32,
            "capset",
        )?;
    }
    Ok(())
}

fn landlock() -> Result<bool, JailError> {
    let abi = ABI::V6;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::AbstractUnixSocket | Scope::Signal))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(|e| JailError::Landlock(e.to_string()))?;
    Ok(status.ruleset == RulesetStatus::FullyEnforced)
}

/// Applies the process-wide sandbox to the calling process (`process` names it in
/// errors; call it before starting threads: Landlock and no_new_privs apply to the
/// caller and what it starts after).
pub fn lockdown(process: &str, wanted: Limits) -> Result<Applied, JailError> {
    empty_root()?;
    limits::apply(process, wanted)?;
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc, "PR_SET_NO_NEW_PRIVS")?;
    let landlock_full = landlock()?;
    drop_capabilities()?;
    Ok(Applied { landlock_full })
}
