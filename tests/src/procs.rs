//! Processes as /proc shows them, named so that a reused pid is not taken for the
//! process that had it before: (pid, start time). For checks that nothing a process
//! started outlives it, made with pids recorded while it lived.

use std::fmt;

/// One process: its pid and its start time (field 22 of /proc/PID/stat, in clock
/// ticks since boot), which a later process with the same pid does not share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

/// State (field 3), parent (field 4) and start time (field 22) of `pid`, if it exists.
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the
    // last ')' are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let parent = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, parent, start))
}

impl ProcId {
    /// The process that has `pid` now; panics if there is none.
    pub fn of(pid: i32) -> ProcId {
        let (_, _, start) = stat(pid).unwrap_or_else(|| panic!("no process {pid}"));
        ProcId { pid, start }
    }

    /// True while this very process exists, as a zombie too (nobody reaped it yet).
    pub fn exists(&self) -> bool {
        stat(self.pid).is_some_and(|(_, _, start)| start == self.start)
    }
}

impl fmt::Display for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        write!(f, "{} ({name}, started at tick {})", self.pid, self.start)
    }
}

/// Every live descendant of `pid` (children, their children, ...), found by scanning
/// /proc for parents; sorted.
pub fn descendants(pid: i32) -> Vec<ProcId> {
    let all: Vec<(i32, i32, u64, char)> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| stat(p).map(|(state, parent, start)| (p, parent, start, state)))
        .collect();
    let mut found = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for &(p, pp, start, state) in &all {
            if pp == parent && state != 'Z' {
                found.push(ProcId { pid: p, start });
                parents.push(p);
            }
        }
    }
    found.sort();
    found
}

/// The live (not zombie) child of `parent` whose command line holds `command`, waited
/// for up to `timeout` (a daemon being restarted); panics if none comes.
pub fn live_child(parent: i32, command: &str, timeout: std::time::Duration) -> i32 {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let found = std::fs::read_dir("/proc").ok().and_then(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .find(|&pid| {
                    let cmd =
                        std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    stat(pid).is_some_and(|(state, pp, _)| pp == parent && state != 'Z')
                        && cmd.contains(command)
                })
        });
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {command} under process {parent} within {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Thread `tid` (any process's) while it lives and is no zombie: its process (thread
/// group) and its name.
pub fn thread(tid: i32) -> Option<(i32, String)> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    if field("State:")?.starts_with('Z') {
        return None;
    }
    let tgid = field("Tgid:")?.parse().ok()?;
    Some((tgid, field("Name:")?.to_string()))
}

/// The block daemon (a live child of `gateway` run from its block-daemon binary) whose
/// resident I/O thread (the one named `vhost-iothread`, which serves its rings) is
/// `tid`.
pub fn block_daemon_io_thread(gateway: i32, tid: i32) -> Option<i32> {
    let (pid, name) = thread(tid)?;
    let (_, parent, _) = stat(pid)?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    let binary = cmdline.split('\0').next()?;
    (name == "vhost-iothread" && binary.contains("block-daemon") && parent == gateway)
        .then_some(pid)
}

/// How many times thread `tid` gave up the CPU to wait (voluntary_ctxt_switches): each
/// wake-up of an event loop that then waits again counts one.
pub fn thread_waits(tid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
