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

/// A raw image for backing chains in these tests (the real one is formats::raw).
pub struct RawFile(pub std::fs::File, pub u64);

impl RawFile {
    pub fn open(p: &Path) -> RawFile {
        let f = std::fs::File::open(p).unwrap();
        let n = f.metadata().unwrap().len();
        RawFile(f, n)
    }
}

impl crate::formats::Format for RawFile {
    fn name(&self) -> &'static str {
        "raw"
    }
    fn virtual_size(&self) -> u64 {
        self.1
    }
    fn map(
        &self,
        offset: u64,
        len: u64,
        _w: bool,
    ) -> Result<crate::formats::Mapping, crate::formats::FormatError> {
        use std::os::fd::AsRawFd;
        Ok(crate::formats::Mapping {
            extents: vec![crate::formats::Extent::File {
                fd: self.0.as_raw_fd(),
                offset,
                len,
            }],
            guard: crate::formats::MapGuard::none(),
        })
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), crate::formats::FormatError> {
        use std::os::unix::fs::FileExt;
        self.0.read_exact_at(buf, offset)?;
        Ok(())
    }
    fn write(&self, _: u64, _: &[u8]) -> Result<(), crate::formats::FormatError> {
        Err(crate::formats::FormatError::ReadOnly)
    }
    fn flush(&self) -> Result<(), crate::formats::FormatError> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> Result<(), crate::formats::FormatError> {
        Err(crate::formats::FormatError::ReadOnly)
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> Result<(), crate::formats::FormatError> {
        Err(crate::formats::FormatError::ReadOnly)
    }
    fn resize(&self, _: u64) -> Result<(), crate::formats::FormatError> {
        Err(crate::formats::FormatError::ReadOnly)
    }
}

/// A seeded generator (xorshift64*), so failures repeat.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `qemu-img convert -O raw` of an image: its guest bytes.
pub fn raw_bytes(p: &Path, fmt: &str) -> Vec<u8> {
    let out = p.with_extension("converted.raw");
    ok(
        "qemu-img",
        &["convert", "-U", "-f", fmt, "-O", "raw", s(p), s(&out)],
    );
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    b
}

/// `qemu-img convert -c -O qcow2 -o cluster_size=CS SRC DST`: compressed clusters.
pub fn compress(src: &Path, dst: &Path, cluster_size: &str) {
    let opt = format!("cluster_size={cluster_size}");
    ok(
        "qemu-img",
        &["convert", "-c", "-O", "qcow2", "-o", &opt, s(src), s(dst)],
    );
}

/// Runs qemu-io commands on a qcow2 image and then its `abort` (a crash: the dirty bit
/// stays set with lazy refcounts).
pub fn io_then_abort(path: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.extend(["-c", "abort", s(path)]);
    let out = run("qemu-io", &args);
    assert!(!out.status.success(), "qemu-io abort did not abort");
}

/// A file created (or truncated) for reading and writing.
pub fn new_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// qemu-img check finds the image clean and qemu-img compare finds it equal to a raw
/// image holding `mirror`.
pub fn compare_with_raw(d: &TempDir, p: &Path, mirror: &[u8]) {
    check_clean(p);
    let raw = d.path("mirror.raw");
    std::fs::write(&raw, mirror).unwrap();
    ok(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(p), s(&raw)],
    );
}

/// qemu-img check: no corruption (leaks allowed: what a failed write may leave).
pub fn check_no_corruption(p: &std::path::Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", s(p)])
        .output()
        .expect("qemu-img is needed by this test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "qemu-img check: {text}"
    );
    assert!(!text.contains("ERROR"), "qemu-img check: {text}");
}
