//! Helpers for Flotilla's integration tests: where the binaries, the test guest and the
//! Debian kernel are, and a child-process wrapper that reads a VM's console line by line
//! with deadlines, so a hung guest fails a test instead of hanging it.
//!
//! Anything a test needs that the machine lacks is a test failure naming what is
//! missing, never a skip.

pub mod balloon;
pub mod blk;
pub mod cpu_hotplug;
pub mod frame_reflector;
pub mod input;
pub mod kdump;
pub mod libvirt;
pub mod linux;
pub mod mem_hotplug;
pub mod migration;
pub mod net;
pub mod procs;
pub mod qemu;
pub mod qmp;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A workspace binary (built by `cargo build --workspace --bins`, which scripts/test
/// does first). FLOTILLA_BIN_DIR overrides where to look.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("FLOTILLA_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        // target/<profile>/deps/<test> -> target/<profile>
        None => std::env::current_exe()
            .expect("current exe")
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps")
            .to_path_buf(),
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "missing binary {}: build it with `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// Runs one of our scripts once per test process and returns the last line it printed.
pub fn script_output(cell: &'static OnceLock<PathBuf>, env: &str, script: &str) -> PathBuf {
    cell.get_or_init(|| {
        if let Some(p) = std::env::var_os(env) {
            return PathBuf::from(p);
        }
        let out = Command::new(repo_root().join("scripts").join(script))
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running scripts/{script}: {e}"));
        assert!(
            out.status.success(),
            "scripts/{script} failed ({}); set {env} or fix the script",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
    })
    .clone()
}

/// The test guest ELF (tests/guest, built by scripts/build-guest).
pub fn test_guest() -> PathBuf {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    let p = script_output(&GUEST, "FLOTILLA_TEST_GUEST", "build-guest");
    assert!(p.is_file(), "test guest {} does not exist", p.display());
    p
}

/// The unpacked Debian kernel package (scripts/fetch-linux).
pub fn linux_dir() -> PathBuf {
    static LINUX: OnceLock<PathBuf> = OnceLock::new();
    script_output(&LINUX, "FLOTILLA_LINUX_DIR", "fetch-linux")
}

/// Debian's bzImage.
pub fn linux_bzimage() -> PathBuf {
    let boot = linux_dir().join("boot");
    std::fs::read_dir(&boot)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/fetch-linux)", boot.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .unwrap_or_else(|| panic!("no vmlinuz-* in {}", boot.display()))
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn path_arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// True on hosts whose KVM is kvm-pvm (no VMX/SVM; guest ring 0 is emulated).
pub fn kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Resident memory of a process, in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A program from the host, or a failure saying which package provides it.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("missing `{name}`: install the Debian package {package} (scripts/setup does)")
        })
}

/// A scratch directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    pub fn new_in(base: &Path, tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = base.join(format!("flotilla-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process (a VMM) whose stdout and stderr are read line by line.
pub struct Vm {
    child: Child,
    lines: Receiver<String>,
    transcript: Arc<Mutex<Vec<String>>>,
    /// How many of the two output readers reached end of file.
    drained: Arc<AtomicUsize>,
    status: Option<ExitStatus>,
}

fn pump(
    source: impl Read + Send + 'static,
    tx: mpsc::Sender<String>,
    log: Arc<Mutex<Vec<String>>>,
    drained: Arc<AtomicUsize>,
    tag: &'static str,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end_matches('\r').to_string();
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{tag}{line}"));
            let _ = tx.send(line);
        }
        drained.fetch_add(1, Ordering::SeqCst);
    });
}

impl Vm {
    pub fn spawn(mut cmd: Command) -> Vm {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let drained = Arc::new(AtomicUsize::new(0));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        pump(stdout, tx.clone(), transcript.clone(), drained.clone(), "");
        pump(stderr, tx, transcript.clone(), drained.clone(), "[stderr] ");
        Vm {
            child,
            lines,
            transcript,
            drained,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the VM printed so far, stdout and stderr interleaved.
    pub fn transcript(&self) -> String {
        self.transcript
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Waits for a line for which `matches` holds; panics with the transcript on
    /// timeout, on a guest panic or error line, or when the process ends first.
    pub fn expect_line(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(line) if line.starts_with("GUEST PANIC") => {
                    panic!(
                        "guest panicked while waiting for {what}:\n{}",
                        self.transcript()
                    )
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {what} within {timeout:?}; output so far:\n{}",
                        self.transcript()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait(Duration::from_secs(5));
                    panic!(
                        "process ended ({status:?}) before {what}; output:\n{}",
                        self.transcript()
                    )
                }
            }
        }
    }

    /// Waits for a line starting with `prefix`.
    pub fn expect_prefix(&mut self, prefix: &str, timeout: Duration) -> String {
        self.expect_line(prefix, timeout, |l| l.starts_with(prefix))
    }

    /// Whether the process has ended (it is reaped; `wait` then returns at once).
    pub fn exited(&mut self) -> bool {
        self.status.is_some() || matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the process to exit; panics with the transcript on timeout.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                // The transcript is complete once both pipes reached end of file (a
                // grandchild holding them open would not let that happen: bounded).
                let drain_deadline = Instant::now() + Duration::from_secs(5);
                while self.drained.load(Ordering::SeqCst) < 2 && Instant::now() < drain_deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "process still running after {timeout:?}; output:\n{}",
                    self.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ends the process gracefully (SIGTERM, so it can clean up what it started), and
    /// kills it if it is still there after `grace`. Never panics (used in drops).
    pub fn terminate(&mut self, grace: Duration) {
        if self.status.is_some() || !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal to the process (by pid: it is our child).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }
}

/// A whole run of the test guest with `scenario=poweroff`: the READY line for exactly
/// this configuration, the power-off, and a successful exit.
pub fn expect_ready_then_poweroff(vm: &mut Vm, cpus: usize, memory_mib: u64, timeout: Duration) {
    let ready = vm.expect_prefix("GUEST READY", timeout);
    assert_eq!(
        ready,
        format!("GUEST READY cpus={cpus} mem_mib={memory_mib}")
    );
    vm.expect_prefix("GUEST POWEROFF", timeout);
    let status = vm.wait(timeout);
    assert!(
        status.success(),
        "exited with {status}:\n{}",
        vm.transcript()
    );
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command to completion and returns (status, stdout, stderr).
pub fn run_to_end(cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut vm = Vm::spawn(cmd);
    let status = vm.wait(timeout);
    let transcript = vm.transcript();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for l in transcript.lines() {
        match l.strip_prefix("[stderr] ") {
            Some(e) => err.push(e),
            None => out.push(l),
        }
    }
    (status, out.join("\n"), err.join("\n"))
}
