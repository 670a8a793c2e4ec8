//! Standalone mode's images: the one place the daemon opens paths (under the gateway,
//! every image arrives as an fd). The export's image and, for qcow2, its backing files
//! by the names their headers give (a relative name is relative to the directory of the
//! image that names it, as QEMU resolves it), each with the format its overlay's header
//! names or, without one, the format probed (QEMU's rule for backing files). Backing
//! files are opened read-only.

use std::fs::File;
use std::path::Path;

use ipc::{ImageFormat, ImageLayer};

/// The format of an export's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatName {
    Raw,
    Qcow2,
}

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

/// The layers (top first) and their files for `image` in `format`.
pub fn open_chain(
    image: &Path,
    format: FormatName,
    read_only: bool,
) -> Result<(Vec<ImageLayer>, Vec<File>), String> {
    let file = open_file(image, !read_only)?;
    let layer = |format| ImageLayer {
        node_name: image.display().to_string(),
        format,
        filename: image.display().to_string(),
    };
    match format {
        FormatName::Raw => Ok((vec![layer(ImageFormat::Raw)], vec![file])),
        FormatName::Qcow2 => Ok((
            vec![layer(ImageFormat::Qcow2(Default::default()))],
            vec![file],
        )),
    }
}
