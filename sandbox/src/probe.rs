//! Test builds only (feature `probe`): a sandboxed process does something it must not,
//! when its environment asks (`FLOTILLA_PROBE_<PROCESS>=ACTION[,ACTION...][@DELAY_MS]`),
//! and says on stderr what came of it: `PROBE <action>: allowed` or `PROBE <action>:
//! denied (<error>)`. Under `--sandbox enforce` the first action ends the process with a
//! reported violation; under `log` each one shows what the other layers do.

use std::ffi::CString;
use std::time::Duration;

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

/// One forbidden action; `sibling`: a pid outside the process (the gateway's).
fn run(action: &str, sibling: libc::pid_t) {
    // SAFETY: each call gets valid pointers to locals; results are only reported.
    let rc: libc::c_long = unsafe {
        match action {
            "open-passwd" => libc::open(c("/etc/passwd").as_ptr(), libc::O_RDONLY).into(),
            "write-outside" => libc::open(
                c("/tmp/flotilla-probe").as_ptr(),
                libc::O_CREAT | libc::O_WRONLY,
                0o600,
            )
            .into(),
            "execve" => {
                let sh = c("/bin/sh");
                let argv = [sh.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()).into()
            }
            "socket-inet" => {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    fd.into()
                } else {
                    // A socket alone is not the network: try to reach the host.
                    let addr = libc::sockaddr_in {
                        sin_family: libc::AF_INET as u16,
                        sin_port: 22u16.to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
                        },
                        sin_zero: [0; 8],
                    };
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
            "ioctl-terminal" => libc::ioctl(2, libc::TIOCSTI, c("x").as_ptr()).into(),
            "ptrace-sibling" => libc::ptrace(libc::PTRACE_ATTACH, sibling, 0, 0),
            "mount" => libc::mount(
                c("none").as_ptr(),
                c("/").as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                std::ptr::null(),
            )
            .into(),
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
    let var = format!(
        "FLOTILLA_PROBE_{}",
        process.to_ascii_uppercase().replace('-', "_")
    );
    let Ok(spec) = std::env::var(&var) else {
        return;
    };
    let sibling: libc::pid_t = std::env::var("FLOTILLA_PROBE_SIBLING")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let (actions, delay) = match spec.split_once('@') {
        Some((a, d)) => (a.to_string(), d.parse().unwrap_or(0)),
        None => (spec, 0),
    };
    let work = move || {
        std::thread::sleep(Duration::from_millis(delay));
        for action in actions.split(',') {
            run(action, sibling);
        }
    };
    if delay == 0 {
        work();
    } else {
        let _ = std::thread::Builder::new().name("probe".into()).spawn(work);
    }
}
