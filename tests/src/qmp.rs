//! A small QMP client and a gateway fixture for the tests: raw enough to send malformed
//! input and fds, strict about what comes back.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{bin, test_guest, TempDir, Vm};

pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct QmpClient {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    /// Events read while waiting for replies.
    pub events: Vec<Value>,
    pub greeting: Value,
}

impl QmpClient {
    pub fn connect(path: &Path) -> QmpClient {
        // Between bind() and listen() a socket's path exists but refuses connections.
        let deadline = Instant::now() + TIMEOUT;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("{}: {e}", path.display()),
            }
        };
        QmpClient::over(stream)
    }

    /// A client on a connection made otherwise (a socketpair given with add_client):
    /// the greeting is read first.
    pub fn over(stream: UnixStream) -> QmpClient {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = QmpClient {
            stream,
            reader,
            events: Vec::new(),
            greeting: Value::Null,
        };
        c.greeting = c.read();
        assert!(
            c.greeting.get("QMP").is_some(),
            "not a greeting: {}",
            c.greeting
        );
        c
    }

    pub fn negotiated(path: &Path) -> QmpClient {
        let mut c = QmpClient::connect(path);
        assert_eq!(
            c.execute("qmp_capabilities", json!({})),
            json!({"return": {}})
        );
        c
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd]) {
        ipc::fds::send_with_fds(self.stream.as_raw_fd(), bytes, fds).unwrap();
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Reads one message; every line must end in CRLF and be one JSON object.
    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("QMP read (timeout?)");
        assert!(n > 0, "QMP connection closed");
        assert!(line.ends_with("\r\n"), "line without CRLF: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    /// Reads until a reply (return or error), keeping events aside.
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                return v;
            }
        }
    }

    pub fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let mut msg = json!({"execute": command});
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = arguments;
        }
        self.send_raw(msg.to_string().as_bytes());
        self.reply()
    }

    /// The return value of a command that must succeed.
    pub fn ok(&mut self, command: &str, arguments: Value) -> Value {
        let r = self.execute(command, arguments);
        r.get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{command} failed: {r}"))
    }

    /// The (class, desc) of a command that must fail.
    pub fn err(&mut self, command: &str, arguments: Value) -> (String, String) {
        let r = self.execute(command, arguments);
        error_of(&r)
    }

    /// Waits for an event (already seen or coming).
    pub fn event(&mut self, name: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i);
        }
        loop {
            let v = self.read();
            if v["event"] == name {
                return v;
            }
            if v.get("event").is_some() {
                self.events.push(v);
            } else {
                panic!("unexpected reply while waiting for {name}: {v}");
            }
        }
    }
}

impl QmpClient {
    /// The JOB_STATUS_CHANGE events of job `id` until (and with) status `last`.
    pub fn job_statuses_until(&mut self, id: &str, last: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let e = self.event("JOB_STATUS_CHANGE");
            assert_eq!(e["data"]["id"], id, "{e}");
            let s = e["data"]["status"].as_str().unwrap_or_default().to_string();
            seen.push(s.clone());
            if s == last {
                return seen;
            }
        }
    }

    /// The next event named `name` within `timeout` (None if none came), keeping the
    /// others aside; a reply meanwhile is a failure.
    pub fn event_within(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return Some(self.events.remove(i));
        }
        let deadline = Instant::now() + timeout;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            // A line cut by the timeout stays in the reader's buffer for the next read.
            match self.reader.fill_buf() {
                Ok([]) => panic!("QMP connection closed while waiting for {name}"),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None
                }
                Err(e) => panic!("QMP read: {e}"),
            }
            self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let v = self.read();
            if v["event"] == name {
                break Some(v);
            }
            assert!(
                v.get("event").is_some(),
                "unexpected reply while waiting for {name}: {v}"
            );
            self.events.push(v);
        };
        self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        result
    }
}

/// Waits for `vm` to create its QMP socket at `path`.
pub fn wait_for_socket(path: &Path, vm: &Vm) {
    let deadline = Instant::now() + TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no QMP socket at {}:\n{}",
            path.display(),
            vm.transcript()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn error_of(reply: &Value) -> (String, String) {
    let e = reply
        .get("error")
        .unwrap_or_else(|| panic!("expected an error, got {reply}"));
    (
        e["class"].as_str().unwrap_or_default().to_string(),
        e["desc"].as_str().unwrap_or_default().to_string(),
    )
}

/// qmp-gateway running the test guest, with a QMP socket in a scratch directory.
pub struct Gateway {
    pub vm: Vm,
    pub dir: TempDir,
    pub qmp: PathBuf,
}

impl Gateway {
    pub fn start(extra: &[&str]) -> Gateway {
        Gateway::start_with(2, "", extra)
    }

    pub fn start_with(cpus: usize, cmdline: &str, extra: &[&str]) -> Gateway {
        let dir = TempDir::new("gateway");
        let qmp = dir.path().join("qmp.sock");
        let mut cmd = Command::new(bin("qmp-gateway"));
        cmd.arg("--kernel").arg(test_guest());
        // A --memory in `extra` takes the default's place.
        if !extra.contains(&"--memory") {
            cmd.args(["--memory", "128"]);
        }
        cmd.args(["--cpus", &cpus.to_string(), "--cmdline", cmdline])
            .arg("--qmp")
            .arg(&qmp)
            .args(extra);
        Gateway::spawn(cmd, dir, qmp)
    }

    /// Runs `cmd`, a gateway whose QMP socket is `qmp` (in `dir`), until the socket is
    /// there.
    pub fn spawn(cmd: Command, dir: TempDir, qmp: PathBuf) -> Gateway {
        let vm = Vm::spawn(cmd);
        wait_for_socket(&qmp, &vm);
        Gateway { vm, dir, qmp }
    }

    pub fn client(&self) -> QmpClient {
        QmpClient::negotiated(&self.qmp)
    }

    /// vmm-core's pid: the process that owns the vCPU threads.
    pub fn vmm_pid(&self) -> i32 {
        let mut c = self.client();
        let cpus = c.ok("query-cpus-fast", json!({}));
        let tid = cpus[0]["thread-id"].as_i64().expect("thread-id");
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).expect("vCPU thread");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Tgid")
    }

    /// Waits for the gateway to exit; then checks that nothing it started is left.
    pub fn expect_clean_exit(&mut self, vmm_pid: i32, success: bool) {
        let status = self.vm.wait(TIMEOUT);
        assert_eq!(
            status.success(),
            success,
            "exit {status}:\n{}",
            self.vm.transcript()
        );
        assert!(!self.qmp.exists(), "QMP socket left behind");
        // vmm-core is reaped by the gateway, so not even a zombie remains.
        assert!(
            !Path::new(&format!("/proc/{vmm_pid}")).exists(),
            "vmm-core (pid {vmm_pid}) outlived the gateway"
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A failing test shows what the gateway and the guest said.
        if std::thread::panicking() {
            eprintln!("--- gateway output ---\n{}", self.vm.transcript());
        }
        // The gateway removes its sockets and stops its children on SIGTERM.
        self.vm.terminate(Duration::from_secs(10));
    }
}

/// The JSON types of `v`, recursively: objects keep their keys, arrays become the set
/// of their elements' shapes (QEMU's answers and ours compared by form, not content).
pub fn shape(v: &Value) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(n) if n.is_f64() => json!("number"),
        Value::Number(_) => json!("int"),
        Value::String(_) => json!("string"),
        Value::Array(items) => {
            let set: std::collections::BTreeSet<String> =
                items.iter().map(|i| shape(i).to_string()).collect();
            Value::Array(
                set.iter()
                    .map(|s| serde_json::from_str(s).expect("a shape is JSON"))
                    .collect(),
            )
        }
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
    }
}
