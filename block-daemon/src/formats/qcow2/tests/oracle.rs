//! Test helpers: a temporary directory and qemu-img / qemu-io runs (a missing tool fails
//! the test naming it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "flotilla-qcow2-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(tool: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} is needed by this test ({e}); scripts/setup installs qemu-utils")
    });
    out
}

/// Runs a tool and asserts it succeeded; its stdout.
pub fn ok(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a tool expecting failure; its stderr.
pub fn fails(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args);
    assert!(
        !out.status.success(),
        "{tool} {args:?} unexpectedly succeeded"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qemu-img create -f qcow2 -o OPTS FILE SIZE`.
pub fn img_create(path: &Path, opts: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([s(path), size]);
    ok("qemu-img", &args);
}

/// `qemu-io -c CMD` on a qcow2 image.
pub fn io(path: &Path, cmd: &str) {
    ok("qemu-io", &["-f", "qcow2", "-c", cmd, s(path)]);
}

/// `qemu-img check` output as JSON text; asserts no corruption and no leaks.
pub fn check_clean(path: &Path) {
    let out = run("qemu-img", &["check", "--output=json", s(path)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check {}: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("\"leaks\""), "leaks: {text}");
    assert!(!text.contains("\"corruptions\""), "corruptions: {text}");
}

/// qemu-img info --output=json.
pub fn info(path: &Path) -> String {
    ok("qemu-img", &["info", "--output=json", "-U", s(path)])
}
