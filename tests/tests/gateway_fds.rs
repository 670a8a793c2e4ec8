//! File descriptors passed with SCM_RIGHTS: getfd/closefd (per client) and
//! add-fd/remove-fd/query-fdsets (shared), as QEMU does them, and fds that no command
//! takes are closed, not hoarded.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use flotilla_tests::qmp::{Gateway, QmpClient};
use serde_json::json;

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Sends a command with fds attached, as qemu.qmp's send_fd_scm does (a 1-byte message
/// carrying the fd, then the command).
fn with_fd(c: &mut QmpClient, fd: BorrowedFd, command: &str) -> serde_json::Value {
    c.send_with_fds(b" ", &[fd]);
    c.send_raw(command.as_bytes());
    c.reply()
}

#[test]
fn getfd_and_closefd() {
    let gw = Gateway::start(&[]);
    let pid = gw.vm.pid() as u32;
    let mut c = gw.client();
    // Each client costs the gateway a few fds of its own: connect them all first.
    let mut other = gw.client();
    let before = open_fds(pid);
    let (r, _w) = pipe();
    assert_eq!(
        c.err("getfd", json!({"fdname": "p"})).1,
        "No file descriptor supplied via SCM_RIGHTS"
    );
    let reply = with_fd(
        &mut c,
        r.as_fd(),
        r#"{"execute":"getfd","arguments":{"fdname":"p"}}"#,
    );
    assert_eq!(reply, json!({"return": {}}));
    assert_eq!(open_fds(pid), before + 1, "the gateway holds the fd");
    // The same name again replaces (and closes) the old one.
    with_fd(
        &mut c,
        r.as_fd(),
        r#"{"execute":"getfd","arguments":{"fdname":"p"}}"#,
    );
    assert_eq!(open_fds(pid), before + 1);
    let reply = with_fd(
        &mut c,
        r.as_fd(),
        r#"{"execute":"getfd","arguments":{"fdname":"9p"}}"#,
    );
    assert_eq!(
        reply["error"]["desc"],
        "Parameter 'fdname' expects a name not starting with a digit"
    );
    // Another client does not see this client's names.
    assert_eq!(
        other.err("closefd", json!({"fdname": "p"})).1,
        "File descriptor named 'p' not found"
    );
    assert_eq!(c.ok("closefd", json!({"fdname": "p"})), json!({}));
    assert_eq!(open_fds(pid), before);
    assert_eq!(
        c.err("closefd", json!({"fdname": "p"})).1,
        "File descriptor named 'p' not found"
    );
    // A client's named fds close when it disconnects.
    with_fd(
        &mut c,
        r.as_fd(),
        r#"{"execute":"getfd","arguments":{"fdname":"q"}}"#,
    );
    assert_eq!(open_fds(pid), before + 1);
    drop(c);
    // Its connection's own fds go too, hence the 3 per client.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while open_fds(pid) != before - 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "fd of a gone client still open"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn fdsets() {
    let gw = Gateway::start(&[]);
    let pid = gw.vm.pid() as u32;
    let mut c = gw.client();
    let mut other = gw.client();
    let before = open_fds(pid);
    let (r, w) = pipe();
    let a = with_fd(
        &mut c,
        r.as_fd(),
        r#"{"execute":"add-fd","arguments":{"fdset-id":3,"opaque":"hello"}}"#,
    );
    assert_eq!(a["return"]["fdset-id"], 3);
    let fd3 = a["return"]["fd"].as_i64().unwrap();
    let b = with_fd(&mut c, w.as_fd(), r#"{"execute":"add-fd"}"#);
    assert_eq!(b["return"]["fdset-id"], 0, "lowest free id");
    let fd0 = b["return"]["fd"].as_i64().unwrap();
    // The numbers are the gateway's own open fds.
    assert!(std::path::Path::new(&format!("/proc/{pid}/fd/{fd3}")).exists());
    assert_eq!(open_fds(pid), before + 2);
    // Sets are shared: another client sees them.
    assert_eq!(
        other.ok("query-fdsets", json!({})),
        json!([
            {"fdset-id": 0, "fds": [{"fd": fd0}]},
            {"fdset-id": 3, "fds": [{"fd": fd3, "opaque": "hello"}]},
        ])
    );
    assert_eq!(
        c.err("remove-fd", json!({"fdset-id": 3, "fd": 9999})).1,
        "File descriptor named 'fdset-id:3, fd:9999' not found"
    );
    assert_eq!(
        c.ok("remove-fd", json!({"fdset-id": 3, "fd": fd3})),
        json!({})
    );
    assert_eq!(c.ok("remove-fd", json!({"fdset-id": 0})), json!({}));
    assert_eq!(
        c.err("remove-fd", json!({"fdset-id": 0})).1,
        "File descriptor named 'fdset-id:0' not found"
    );
    assert_eq!(c.ok("query-fdsets", json!({})), json!([]));
    assert_eq!(open_fds(pid), before);
    assert_eq!(
        c.err("add-fd", json!({})).1,
        "No file descriptor supplied via SCM_RIGHTS"
    );
}

#[test]
fn fds_no_command_takes_are_closed() {
    let gw = Gateway::start(&[]);
    let pid = gw.vm.pid() as u32;
    let mut c = gw.client();
    let before = open_fds(pid);
    let (r, _w) = pipe();
    // An fd sent with a command that takes none.
    let reply = with_fd(&mut c, r.as_fd(), r#"{"execute":"query-kvm"}"#);
    assert_eq!(reply["return"]["enabled"], true);
    // Several fds with getfd: it keeps one, the rest are closed.
    c.send_with_fds(b" ", &[r.as_fd(), r.as_fd(), r.as_fd()]);
    c.send_raw(br#"{"execute":"getfd","arguments":{"fdname":"one"}}"#);
    assert_eq!(c.reply(), json!({"return": {}}));
    assert_eq!(open_fds(pid), before + 1);
}

#[test]
fn a_thousand_fds_in_one_message() {
    let gw = Gateway::start(&[]);
    let pid = gw.vm.pid() as u32;
    let mut c = gw.client();
    let mut watcher = gw.client();
    let before = open_fds(pid);
    let (r, _w) = pipe();
    // The kernel takes at most 253 fds per sendmsg: 4 x 250 ahead of one command.
    let fds: Vec<BorrowedFd> = (0..250).map(|_| r.as_fd()).collect();
    for _ in 0..4 {
        c.send_with_fds(b" ", &fds);
    }
    c.send_raw(br#"{"execute":"getfd","arguments":{"fdname":"x"}}"#);
    assert_eq!(c.reply(), json!({"return": {}}));
    assert_eq!(
        open_fds(pid),
        before + 1,
        "the gateway kept more than the one fd getfd takes"
    );
    assert_eq!(watcher.ok("query-status", json!({}))["status"], "running");
}
