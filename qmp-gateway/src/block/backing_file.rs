//! change-backing-file: the backing file name (and format) in the header of an image
//! of a disk's chain, rewritten by the disk's daemon when the image is the top it
//! writes, else here on the image file (QEMU reopens a read-only backing file
//! read-write for it too). QEMU 7.2's checks and texts; as QEMU does, the format
//! written is the image's own format name.

use std::fs::File;

use ipc::BlockRequest;

use super::error::BlockError;
use super::graph;
use super::options::Driver;
use super::BlockLayer;

fn fail(msg: impl Into<String>) -> BlockError {
    BlockError::Snapshot(msg.into())
}

/// Who rewrites the header.
enum Writer {
    Daemon(std::sync::Arc<crate::children::link::Link<super::disk::BlockProtocol>>),
    /// The image's path, opened read-write here.
    Here(String),
}

impl BlockLayer {
    pub fn change_backing_file(
        &self,
        device: &str,
        image_node: &str,
        backing: &str,
    ) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let (image, format, writer) = {
            let state = self.state.lock();
            let root = state.lookup_node(Some(device), Some(device))?;
            state.job_busy(&root)?;
            let image = state
                .graph
                .node(image_node)
                .and_then(|_| state.graph.image_node(image_node))
                .ok_or_else(|| BlockError::NoDeviceNorNode {
                    device: String::new(),
                    node: image_node.to_string(),
                })?;
            if image.backing.is_none() {
                return Err(fail(
                    "not allowing backing file change on an image without a backing file",
                ));
            }
            let in_chain = state.graph.chain(&root).iter().any(|n| {
                state
                    .graph
                    .image_node(&n.name)
                    .is_some_and(|i| i.name == image.name)
            });
            if !in_chain {
                return Err(fail(format!(
                    "'{device}' and image file are not in the same chain"
                )));
            }
            let served_top = state.disks.iter().find(|d| {
                state
                    .graph
                    .image_node(&d.root)
                    .is_some_and(|i| i.name == image.name)
            });
            let writer = match served_top.and_then(|d| d.daemon.as_ref()) {
                Some(daemon) if image.driver == Driver::Qcow2 => {
                    Writer::Daemon(daemon.link.clone())
                }
                _ => Writer::Here(
                    state
                        .graph
                        .protocol_of(&image.name)
                        .map(|p| p.filename.clone())
                        .ok_or_else(|| BlockError::NoImage(image.name.clone()))?,
                ),
            };
            (image.name.clone(), image.driver.name(), writer)
        };
        let failed = |e: String| fail(format!("Could not change backing file to '{backing}': {e}"));
        match writer {
            Writer::Daemon(link) => {
                link.request(
                    BlockRequest::ChangeBackingFile {
                        backing_file: backing.to_string(),
                        backing_format: Some(format.to_string()),
                    },
                    &[],
                )?;
            }
            Writer::Here(path) => {
                let file = File::from(graph::open_path(&path, Driver::File, true)?);
                block_daemon::formats::qcow2::header_cluster::change_backing(
                    &file,
                    backing,
                    Some(format),
                )
                .map_err(|e| failed(e.to_string()))?;
            }
        }
        let mut state = self.state.lock();
        state.refresh_image(&image);
        let below = state.graph.node(&image).and_then(|n| n.backing.clone());
        state.graph.set_backing(&image, below.as_deref());
        Ok(())
    }
}
