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
