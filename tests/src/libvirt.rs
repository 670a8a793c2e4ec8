//! libvirt 9.0's embedded QEMU driver (`virsh -c 'qemu:///embed?root=DIR'`: no libvirtd,
//! no systemd) for the tests that drive an emulator through it: the driver's root with
//! the qemu.conf ../shared/HOST.md gives, one virsh process that takes command after
//! command (so the driver that started a domain also sees its events, as libvirtd would),
//! and the processes a root's domains left, ended by pid when a test fails.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::require_tool;

/// The embedded driver's root under `dir`: root runs the emulator, no cgroups, namespaces
/// or security driver, the emulator's output in log files. Returns the connection URI.
pub fn embed_root(dir: &Path) -> String {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).expect("etc");
    std::fs::write(
        etc.join("qemu.conf"),
        "user = \"root\"\ngroup = \"root\"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n\
         security_driver = \"none\"\nremember_owner = 0\nstdio_handler = \"file\"\n",
    )
    .expect("qemu.conf");
    format!("qemu:///embed?root={}", dir.display())
}

/// The processes whose command line names `needle` (what a root's domains started).
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Ends (SIGKILL, by pid) what the domains of a root left running when a test fails: a
/// libvirt that crashed or a test that stopped half-way does not end its emulators.
pub struct Leftovers(pub String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in processes_naming(&self.0) {
            // Ours: its command line names our temporary directory.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The line virsh's `echo` prints after each command, so the command's output ends there.
const END: &str = "@@flotilla-virsh-done@@";
/// virsh's prompt, which it prints (with the line read) when its input is not a terminal.
const PROMPT: &str = "virsh # ";

/// One virsh process on an embedded root, fed commands on its standard input. Its
/// standard output and error come through one pipe, in order; libvirt's own log goes to
/// `DIR/virsh.log` (the monitor's traffic, for a failing test's reader).
pub struct Virsh {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    log: PathBuf,
}

impl Virsh {
    pub fn start(dir: &Path) -> Virsh {
        let uri = embed_root(dir);
        Virsh::connect(&uri, &dir.join("virsh.log"))
    }

    /// One virsh process on connection `uri` (a libvirtd's, say), its log in `log`.
    pub fn connect(uri: &str, log: &Path) -> Virsh {
        let virsh = require_tool("virsh", "libvirt-clients (with libvirt-daemon-driver-qemu)");
        let log = log.to_path_buf();
        let (reader, writer) = std::io::pipe().expect("pipe");
        let mut child = Command::new(virsh)
            .args(["-q", "-c", uri])
            .env("LIBVIRT_LOG_OUTPUTS", format!("1:file:{}", log.display()))
            .env("LIBVIRT_LOG_FILTERS", "1:qemu.qemu_monitor 3:*")
            .stdin(Stdio::piped())
            .stdout(writer.try_clone().expect("pipe"))
            .stderr(writer)
            .spawn()
            .expect("starting virsh");
        let stdin = child.stdin.take().expect("virsh's stdin");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Virsh {
            child,
            stdin,
            lines,
            log,
        }
    }

    /// Runs one command; its output (with `error: ...` lines, which virsh prints on a
    /// failure) as trimmed lines, empty ones left out.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Vec<String> {
        // virsh flushes what a command printed when it reads its next line: the empty
        // line after the marker brings the marker out.
        writeln!(self.stdin, "{command}\necho {END}\n").expect("writing to virsh");
        self.stdin.flush().expect("writing to virsh");
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map(|l| {
                // Readline's prompt and echo of the next line follow a command's last
                // output on the same line.
                let output = l.find(PROMPT).map_or(&l[..], |at| &l[..at]);
                output.trim().to_string()
            });
            match line {
                Ok(line) if line == END => return out,
                Ok(line) if line.is_empty() => {}
                Ok(line) => out.push(line),
                Err(_) => panic!(
                    "virsh `{command}` did not finish in {timeout:?} (libvirt's log: {}); \
                     so far: {out:?}",
                    self.log.display()
                ),
            }
        }
    }

    /// Runs a command that must succeed; its output.
    pub fn ok(&mut self, command: &str, timeout: Duration) -> Vec<String> {
        let out = self.run(command, timeout);
        assert!(
            !out.iter().any(|l| l.starts_with("error:")),
            "virsh `{command}` failed: {out:?} (libvirt's log: {})",
            self.log.display()
        );
        out
    }
}

impl Drop for Virsh {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second libvirt on this machine, for a migration's destination: libvirt 9.0's
/// libvirtd (Debian 12 has no virtqemud) run by hand, without systemd. A privileged
/// libvirtd keeps its state in fixed places (/etc/libvirt for qemu.conf, /run/libvirt,
/// /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt): it runs in a mount namespace
/// of its own (`unshare -m`) where those are `dir`'s or empty tmpfs, so it shares
/// nothing with the host's or another test's; the network namespace is the host's (the
/// migration goes over loopback tcp). Its socket is `dir/sock/libvirt-sock`, its host
/// UUID its own (libvirt refuses a migration to the host it comes from), its qemu.conf the
/// embedded roots'. Ended (SIGTERM, by pid) when dropped: the namespace and its tmpfs go
/// with it; the emulators it started outlive it (as libvirtd's do), so end them first.
pub struct Libvirtd {
    child: Child,
    pub uri: String,
    pub log: PathBuf,
}

impl Libvirtd {
    pub fn start(dir: &Path) -> Libvirtd {
        let libvirtd = require_tool("libvirtd", "libvirt-daemon");
        let unshare = require_tool("unshare", "util-linux");
        let etc = dir.join("etc");
        let run = dir.join("run");
        let sock = dir.join("sock");
        for d in [&etc, &run, &sock] {
            std::fs::create_dir_all(d).expect("libvirtd's dirs");
        }
        // The qemu.conf of the embedded roots (embed_root writes it in DIR/etc).
        embed_root(dir);
        let log = dir.join("libvirtd.log");
        std::fs::write(
            etc.join("libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{sock}\"\nunix_sock_rw_perms = \"0700\"\n\
                 auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
                 host_uuid = \"6b0c1e6a-2f4e-4f7b-9a33-0f1e2d3c4b5a\"\n\
                 log_outputs = \"1:file:{log}\"\n\
                 log_filters = \"1:qemu.qemu_monitor 1:qemu.qemu_migration 3:*\"\n",
                sock = sock.display(),
                log = log.display(),
            ),
        )
        .expect("libvirtd.conf");
        let script = format!(
            "mount --bind {etc} /etc/libvirt && mount --bind {run} /run/libvirt && \
             mount -t tmpfs tmpfs /var/lib && mount -t tmpfs tmpfs /var/cache && \
             mount -t tmpfs tmpfs /var/log && exec {libvirtd} -f {etc}/libvirtd.conf -p {dir}/libvirtd.pid",
            etc = etc.display(),
            run = run.display(),
            dir = dir.display(),
            libvirtd = libvirtd.display(),
        );
        // unshare and sh exec: the child's pid is libvirtd's.
        let child = Command::new(unshare)
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("libvirtd.err")).expect("libvirtd.err"))
            .spawn()
            .expect("starting libvirtd");
        let socket = sock.join("libvirt-sock");
        let mut daemon = Libvirtd {
            child,
            uri: format!("qemu+unix:///system?socket={}", socket.display()),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                let err = std::fs::read_to_string(dir.join("libvirtd.err")).unwrap_or_default();
                panic!("libvirtd ended at its start ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "libvirtd made no socket in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until file `path` has a line starting with `prefix` after byte `skip`; the line
/// and the byte after it (where to look for the next one).
pub fn wait_for_line(path: &Path, skip: usize, prefix: &str, timeout: Duration) -> (String, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read(path).unwrap_or_default();
        // A file shorter than before was started again (libvirt truncates a domain's
        // console file when it starts the domain).
        let from = if text.len() < skip { 0 } else { skip };
        let tail = String::from_utf8_lossy(&text[from..]).into_owned();
        let mut at = from;
        for line in tail.split_inclusive('\n') {
            at += line.len();
            // The guest ends a line when it starts the next: the last has no newline.
            if line.starts_with(prefix) {
                return (line.trim_end().to_string(), at);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no line starting {prefix:?} in {} within {timeout:?}:\n{tail}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
