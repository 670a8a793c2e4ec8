//! Standalone mode's images: the one place the daemon opens paths (under the gateway,
//! every image arrives as an fd). The export's image and, for qcow2, its backing files
//! by the names their headers give (a relative name is relative to the directory of the
//! image that names it, as QEMU resolves it), each with the format its overlay's header
//! names or, without one, the format probed (QEMU's rule for backing files). Backing
//! files are opened read-only; a chain that comes back to an image it went through, or
//! goes deeper than `MAX_DEPTH`, is refused.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipc::{ImageFormat, ImageLayer, Qcow2Options};

use crate::formats::chain::BACKING;
use crate::formats::probe;
use crate::formats::qcow2::header::Header;

/// The format of an export's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatName {
    Raw,
    Qcow2,
}

/// The most images a chain may have (the top included).
pub const MAX_DEPTH: usize = 64;

fn open_file(path: &Path, writable: bool) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| {
            format!(
                "Could not open '{}': {}",
                path.display(),
                ipc::errno_text(&e)
            )
        })
}

/// Where the backing file `name` that `overlay` names lies.
pub fn resolve_backing(overlay: &Path, name: &str) -> Result<PathBuf, String> {
    if name.starts_with("json:") {
        return Err(format!(
            "'{}': backing file names of the json: kind are not supported",
            overlay.display()
        ));
    }
    let named = Path::new(name);
    Ok(match overlay.parent() {
        Some(dir) if named.is_relative() => dir.join(named),
        _ => named.to_path_buf(),
    })
}

/// The layers (top first) and their files for `image` in `format`.
pub fn open_chain(
    image: &Path,
    format: FormatName,
    read_only: bool,
) -> Result<(Vec<ImageLayer>, Vec<File>), String> {
    let mut layers = Vec::new();
    let mut files: Vec<File> = Vec::new();
    let mut seen = Vec::new();
    let mut next = Some((image.to_path_buf(), format));
    while let Some((path, format)) = next.take() {
        // A backing file's failure reads as QEMU's: once "Could not open backing
        // file: " per level below the top.
        let nested = |e: String| format!("{}{e}", BACKING.repeat(layers.len()));
        if layers.len() == MAX_DEPTH {
            return Err(format!(
                "'{}': the backing chain is deeper than {MAX_DEPTH} images",
                image.display()
            ));
        }
        let file = open_file(&path, layers.is_empty() && !read_only).map_err(nested)?;
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if seen.contains(&(meta.dev(), meta.ino())) {
            // qemu-img info --backing-chain's words.
            return Err(format!(
                "Backing file '{}' creates an infinite loop.",
                path.display()
            ));
        }
        seen.push((meta.dev(), meta.ino()));
        let filename = path.display().to_string();
        let image_format = match format {
            FormatName::Raw => ImageFormat::Raw,
            FormatName::Qcow2 => {
                let header = Header::read(&file).map_err(|e| nested(e.to_string()))?;
                if let Some(name) = &header.backing_file {
                    let backing = resolve_backing(&path, name)?;
                    let format = match header.backing_format.as_deref() {
                        Some(f) => f.to_string(),
                        None => {
                            let below =
                                |e: String| format!("{}{e}", BACKING.repeat(layers.len() + 1));
                            let probe_file = open_file(&backing, false).map_err(below)?;
                            probe(&probe_file)
                                .map_err(|e| below(e.to_string()))?
                                .to_string()
                        }
                    };
                    let format = match format.as_str() {
                        "raw" => FormatName::Raw,
                        "qcow2" => FormatName::Qcow2,
                        other => {
                            return Err(format!(
                                "'{}': backing format '{other}' is not served (raw or qcow2)",
                                backing.display()
                            ))
                        }
                    };
                    next = Some((backing, format));
                }
                ImageFormat::Qcow2(Qcow2Options::default())
            }
        };
        layers.push(ImageLayer {
            node_name: filename.clone(),
            format: image_format,
            filename,
        });
        files.push(file);
    }
    Ok((layers, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_resolve_against_the_overlays_directory() {
        let at = |o: &str, n: &str| resolve_backing(Path::new(o), n).unwrap();
        assert_eq!(at("/a/b/top.qcow2", "base.raw"), Path::new("/a/b/base.raw"));
        assert_eq!(
            at("/a/b/top.qcow2", "../c/base"),
            Path::new("/a/b/../c/base")
        );
        assert_eq!(at("/a/b/top.qcow2", "/abs/base"), Path::new("/abs/base"));
        assert_eq!(at("top.qcow2", "base"), Path::new("base"));
        assert!(resolve_backing(Path::new("/t"), "json:{}").is_err());
    }
}
