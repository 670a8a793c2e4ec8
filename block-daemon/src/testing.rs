//! What the unit tests share: scratch image files on a real filesystem (under the
//! workspace's target directory, since O_DIRECT does not work on tmpfs, which /tmp may
//! be), removed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};

pub struct Scratch {
    pub file: File,
    pub path: PathBuf,
}

impl Scratch {
    /// A new file of `len` bytes (zeroes), open for reading and writing; `tag` and the
    /// process id name it.
    pub fn new(tag: &str, len: u64) -> Scratch {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tmp");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("flotilla-{tag}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.set_len(len).unwrap();
        Scratch { file, path }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A loop device over a file (set up with `losetup`, which needs root), detached when
/// dropped; `sector_size`: its logical block size (4096 makes a 4 KiB-sector device).
pub struct LoopDevice(pub PathBuf);

impl LoopDevice {
    pub fn over(file: &Path, sector_size: u32) -> LoopDevice {
        let out = std::process::Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--sector-size",
                &sector_size.to_string(),
            ])
            .arg(file)
            .output()
            .unwrap_or_else(|e| panic!("losetup (util-linux) is needed by this test: {e}"));
        assert!(
            out.status.success(),
            "losetup --find --show (needs root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }

    /// The device opened read-write, O_DIRECT.
    pub fn open_direct(&self) -> File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&self.0)
            .unwrap()
    }
}

/// An ext4 filesystem made on `dev` and mounted on a fresh directory, unmounted when
/// dropped (before the device is let go).
pub struct Ext4Mount {
    pub dir: PathBuf,
}

impl Ext4Mount {
    pub fn on(dev: &LoopDevice) -> Ext4Mount {
        let run = |cmd: &mut std::process::Command, what: &str| {
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("{what} is needed by this test: {e}"));
            assert!(
                out.status.success(),
                "{what} (needs root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(
            std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&dev.0),
            "mkfs.ext4 (e2fsprogs)",
        );
        let dir = std::env::temp_dir().join(format!(
            "flotilla-mnt-{}-{}",
            std::process::id(),
            dev.0.display().to_string().replace('/', "_")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        run(
            std::process::Command::new("mount").arg(&dev.0).arg(&dir),
            "mount",
        );
        Ext4Mount { dir }
    }
}

impl Drop for Ext4Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}
