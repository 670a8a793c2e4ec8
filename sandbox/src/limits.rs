//! A process's resource limits: open files, processes, core dumps. A limit is lowered to
//! what the process may use, never raised above the hard limit it inherited (it could
//! not: raising a hard limit takes a privilege the sandbox does not have); a process
//! whose hard limit is below what it needs fails at once, saying how many files it needs
//! and how to raise the limit, instead of running out of descriptors later.

use std::sync::atomic::{AtomicU64, Ordering};

/// Resource limits for one process.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// RLIMIT_NOFILE: the most the process lets itself hold (at most its hard limit).
    pub open_files: u64,
    /// The fewest open files the process needs for the largest configuration it serves
    /// without being told more (a daemon: its device with the most queues it accepts).
    pub open_files_needed: u64,
    /// RLIMIT_NPROC (threads count; at most the hard limit).
    pub processes: u64,
}

/// Why a limit could not be read, set, or met.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("{what}: {error}")]
    Sys {
        what: &'static str,
        error: std::io::Error,
    },
    /// The hard limit is below what the process needs.
    #[error(
        "RLIMIT_NOFILE: {process} needs {needed} open files{purpose}, but its hard limit is \
         {hard}; raise the hard limit of the gateway (ulimit -Hn, prlimit --nofile, systemd's \
         LimitNOFILE=)"
    )]
    HardLimit {
        process: String,
        needed: u64,
        /// " for this VM (...)", or nothing.
        purpose: String,
        hard: u64,
    },
    /// Above what the process allows itself (its `Limits::open_files`).
    #[error(
        "RLIMIT_NOFILE: {process} needs {needed} open files{purpose}, more than the {ceiling} \
         it allows itself"
    )]
    Ceiling {
        process: String,
        needed: u64,
        purpose: String,
        ceiling: u64,
    },
}

/// The open-files limit `apply` set (0: not set; the process reads its own), and the
/// hard limit the process had inherited then.
static APPLIED_OPEN_FILES: AtomicU64 = AtomicU64::new(0);
static INHERITED_HARD: AtomicU64 = AtomicU64::new(0);

fn get(
    resource: libc::__rlimit_resource_t,
    what: &'static str,
) -> Result<libc::rlimit, LimitError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(resource, &mut lim) } < 0 {
        return Err(LimitError::Sys {
            what,
            error: std::io::Error::last_os_error(),
        });
    }
    Ok(lim)
}

/// Sets `resource` (soft and hard) to `wanted`, or to the hard limit if that is lower;
/// returns the value set.
fn set_within_hard(
    resource: libc::__rlimit_resource_t,
    wanted: u64,
    what: &'static str,
) -> Result<u64, LimitError> {
    let value = wanted.min(get(resource, what)?.rlim_max);
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(resource, &lim) } < 0 {
        return Err(LimitError::Sys {
            what,
            error: std::io::Error::last_os_error(),
        });
    }
    Ok(value)
}

/// Applies `limits` to the calling process (`process` names it in errors): each within
/// its hard limit, after checking that the hard limit on open files covers what the
/// process needs.
pub fn apply(process: &str, limits: Limits) -> Result<(), LimitError> {
    let hard = get(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE")?.rlim_max;
    if hard < limits.open_files_needed {
        return Err(LimitError::HardLimit {
            process: process.to_string(),
            needed: limits.open_files_needed,
            purpose: String::new(),
            hard,
        });
    }
    let open_files = set_within_hard(libc::RLIMIT_NOFILE, limits.open_files, "RLIMIT_NOFILE")?;
    INHERITED_HARD.store(hard, Ordering::SeqCst);
    APPLIED_OPEN_FILES.store(open_files, Ordering::SeqCst);
    set_within_hard(libc::RLIMIT_NPROC, limits.processes, "RLIMIT_NPROC")?;
    set_within_hard(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    Ok(())
}

/// Checks that the process may hold `needed` open files (`purpose`: what for, in the
/// error: " for this VM (...)"). Sandboxed, it compares with the limit `apply` set (the
/// sandbox allows no getrlimit); otherwise it raises its soft limit towards the hard one
/// if that is what it takes.
pub fn ensure_open_files(process: &str, needed: u64, purpose: &str) -> Result<(), LimitError> {
    let applied = APPLIED_OPEN_FILES.load(Ordering::SeqCst);
    let (soft, hard) = if applied > 0 {
        (applied, INHERITED_HARD.load(Ordering::SeqCst))
    } else {
        let lim = get(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE")?;
        (lim.rlim_cur, lim.rlim_max)
    };
    if needed <= soft {
        return Ok(());
    }
    if needed > hard {
        return Err(LimitError::HardLimit {
            process: process.to_string(),
            needed,
            purpose: purpose.to_string(),
            hard,
        });
    }
    if applied > 0 {
        // Sandboxed: below its hard limit, but above the ceiling it set itself.
        return Err(LimitError::Ceiling {
            process: process.to_string(),
            needed,
            purpose: purpose.to_string(),
            ceiling: applied,
        });
    }
    let lim = libc::rlimit {
        rlim_cur: needed,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } < 0 {
        return Err(LimitError::Sys {
            what: "RLIMIT_NOFILE",
            error: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_need_within_the_limits_passes_and_one_above_the_hard_limit_says_so() {
        let hard = get(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE").unwrap().rlim_max;
        assert!(ensure_open_files("test", 16, "").is_ok());
        if hard < u64::MAX {
            let err = ensure_open_files("test", hard + 1, " for this VM (1 vCPU)").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "RLIMIT_NOFILE: test needs {} open files for this VM (1 vCPU), but its \
                     hard limit is {hard}; raise the hard limit of the gateway (ulimit -Hn, \
                     prlimit --nofile, systemd's LimitNOFILE=)",
                    hard + 1
                )
            );
        }
    }
}
