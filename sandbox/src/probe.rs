//! Test builds only (feature `probe`): a process does something a sandboxed process must
//! not, when its environment asks (`FLOTILLA_PROBE_<PROCESS>=ACTION[,ACTION...][@DELAY_MS]`),
//! and says on stderr what came of it: `PROBE <action>: allowed` or `PROBE <action>:
//! denied (<error>)`. Under `--sandbox enforce` the first action ends the process with a
//! reported violation; under `log` each one shows what the other layers do; under `off`
//! each one must succeed, which shows that its target is one the sandbox alone keeps the
//! process from.
//!
//! So every target is one that works without a sandbox, given by the test:
//! `FLOTILLA_PROBE_FILE` (a readable file), `FLOTILLA_PROBE_DIR` (a writable directory
//! with an empty directory `mnt` in it), `FLOTILLA_PROBE_TCP` (`IP:PORT` of a listening
//! socket), `FLOTILLA_PROBE_EXEC` (a program; it says `PROBE execve: allowed` itself),
//! `FLOTILLA_PROBE_SIBLING` (the pid of a process that may be killed), and a pseudo
//! terminal the probe opens before the sandbox closes the file system (`prepare`).

use std::ffi::CString;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The pty (its terminal side) opened by `prepare` for `ioctl-terminal`, or -1.
static TERMINAL: AtomicI32 = AtomicI32::new(-1);

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// One line in one write: the process's log lines, written by other threads, may not
/// land in the middle of it (eprintln! may write a line in pieces).
fn say(line: String) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

fn outcome(action: &str, rc: libc::c_long) {
    if rc < 0 {
        say(format!("PROBE {action}: denied ({})", errno()));
    } else {
        say(format!("PROBE {action}: allowed"));
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn var(name: &str) -> Option<String> {
    std::env::var(format!("FLOTILLA_PROBE_{name}")).ok()
}

/// The environment variable that names `process`'s actions.
fn actions_var(process: &str) -> String {
    process.to_ascii_uppercase().replace('-', "_")
}

/// Opens a pseudo terminal and keeps its terminal side for `ioctl-terminal`; call it
/// before the sandbox (which hides /dev). Does nothing unless that action is asked for.
pub fn prepare(process: &str) {
    if !var(&actions_var(process)).is_some_and(|a| a.contains("ioctl-terminal")) {
        return;
    }
    // SAFETY: plain calls on descriptors we own; ptsname_r writes into our buffer.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 || libc::grantpt(master) < 0 || libc::unlockpt(master) < 0 {
            say(format!("PROBE ioctl-terminal: no pty ({})", errno()));
            return;
        }
        let mut name = [0 as libc::c_char; 64];
        if libc::ptsname_r(master, name.as_mut_ptr(), name.len()) != 0 {
            say(format!("PROBE ioctl-terminal: no pty name ({})", errno()));
            return;
        }
        let terminal = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if terminal < 0 {
            say(format!("PROBE ioctl-terminal: no pty ({})", errno()));
            return;
        }
        // The master stays open (leaked on purpose) so the terminal side stays usable.
        TERMINAL.store(terminal, Ordering::Relaxed);
    }
}

/// `ADDR:PORT` as a sockaddr_in (127.0.0.1:1 if it does not parse: connecting there is
/// refused, which the test's control run would show).
fn tcp_target() -> libc::sockaddr_in {
    let addr: std::net::SocketAddrV4 = var("TCP")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 1));
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One forbidden action.
fn run(action: &str) {
    let dir = var("DIR").unwrap_or_else(|| "/nonexistent".into());
    let sibling: libc::pid_t = var("SIBLING").and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: each call gets valid pointers to locals; results are only reported.
    let rc: libc::c_long = unsafe {
        match action {
            "open-file" => libc::open(
                c(&var("FILE").unwrap_or_else(|| "/etc/passwd".into())).as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
            .into(),
            "write-outside" => libc::open(
                c(&format!("{dir}/probe-written")).as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o600,
            )
            .into(),
            "execve" => {
                let program = c(&var("EXEC").unwrap_or_else(|| "/bin/true".into()));
                let argv = [program.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()).into()
            }
            "socket-inet" => {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    fd.into()
                } else {
                    // A socket alone is not the network: reach the test's listener.
                    let addr = tcp_target();
                    libc::connect(
                        fd,
                        (&addr as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                    .into()
                }
            }
            "kill-sibling" => libc::kill(sibling, libc::SIGKILL).into(),
            // Pushing input into a terminal (TIOCSTI): an ioctl no process here needs.
            "ioctl-terminal" => libc::ioctl(
                TERMINAL.load(Ordering::Relaxed),
                libc::TIOCSTI,
                c("x").as_ptr(),
            )
            .into(),
            "ptrace-sibling" => libc::ptrace(libc::PTRACE_ATTACH, sibling, 0, 0),
            "mount" => {
                let target = c(&format!("{dir}/mnt"));
                let rc = libc::mount(
                    c("none").as_ptr(),
                    target.as_ptr(),
                    c("tmpfs").as_ptr(),
                    0,
                    std::ptr::null(),
                );
                // Mounted (no sandbox): leave nothing behind.
                if rc == 0 {
                    libc::umount2(target.as_ptr(), libc::MNT_DETACH);
                }
                rc.into()
            }
            other => {
                say(format!("PROBE {other}: unknown action"));
                return;
            }
        }
    };
    outcome(action, rc);
}

/// Runs the actions `FLOTILLA_PROBE_<PROCESS>` names, after its delay on a thread of
/// their own (the filter is inherited), or at once.
pub fn from_env(process: &str) {
    let Some(spec) = var(&actions_var(process)) else {
        return;
    };
    let (actions, delay) = match spec.split_once('@') {
        Some((a, d)) => (a.to_string(), d.parse().unwrap_or(0)),
        None => (spec, 0),
    };
    let work = move || {
        std::thread::sleep(Duration::from_millis(delay));
        for action in actions.split(',') {
            run(action);
        }
    };
    if delay == 0 {
        work();
    } else {
        let _ = std::thread::Builder::new().name("probe".into()).spawn(work);
    }
}
