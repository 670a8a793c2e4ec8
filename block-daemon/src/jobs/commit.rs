//! A commit below the served top: each chunk that an image from `top` down to just
//! above base holds is read through `top` and written into base, opened read-write
//! beside the chain (the gateway's fd). The guest does not write those images, so no
//! write waits for the job; the chain's own reading of base is not disturbed either:
//! base changes only where an image above it holds the data, which the chain reads
//! there. `done` (the gateway's memory) marks the chunks looked at, so a new daemon
//! carries on.
//!
//! At the end, with the device quiesced, base is flushed and opened again read-only
//! (the chain's old view of it no longer knows the clusters the job allocated), and the
//! image over top reads through it: the images between are out of the chain. That
//! image names base in its header here if it is the served top; the gateway rewrites a
//! lower image's header (it is read-only here).
//!
//! A commit of the served top is a mirror into base (see `mod.rs`).

use std::fs::File;
use std::sync::Arc;

use ipc::{errno_text, CommitSpec, IoOperation, JobSpec, SharedBitmap};

use super::control::{report, walk_in_order, End, Events, Shared};
use super::layers::{allocated_between, layer_at};
use crate::device::{BlkDevice, QUIESCE_TIMEOUT};
use crate::formats::chain::{self, ChainOptions};
use crate::formats::qcow2::Qcow2;
use crate::formats::{Format, FormatError};

pub struct Commit {
    pub device: BlkDevice,
    pub spec: JobSpec,
    pub commit: CommitSpec,
    /// The image at `top_depth`, read through its backing chain.
    pub top: Arc<dyn Format>,
    /// Base, opened read-write over its own backing chain.
    pub base: Arc<dyn Format>,
    /// Base's file again, to open it read-only at the end.
    pub base_file: File,
    pub options: ChainOptions,
    pub done: Arc<SharedBitmap>,
    pub shared: Arc<Shared>,
    pub events: Events,
}

impl Commit {
    pub fn run(self) {
        let end = self.copy_all();
        // Clean before the gateway hears of the end (a completed job closed it already).
        if !matches!(end, Ok(End::Completed)) {
            if let Err(e) = self.base.close() {
                log::warn!("job {}: closing base: {e}", self.spec.id);
            }
        }
        report(&self.shared, &self.events, end);
    }

    fn copy_all(&self) -> Result<End, String> {
        walk_in_order(
            &self.shared,
            &self.events,
            &self.spec,
            &self.done,
            self.top.virtual_size(),
            self.base.clone(),
            |offset, len| self.copy(offset, len),
            || self.finish(),
        )
    }

    /// Copies the chunk into base if an image above base holds some of it; the bytes
    /// copied.
    fn copy(&self, offset: u64, len: u64) -> Result<u64, (IoOperation, FormatError)> {
        let read = |e| (IoOperation::Read, e);
        let between = self.commit.base_depth - self.commit.top_depth;
        if !allocated_between(&self.top, 0, Some(between), offset, len).map_err(read)? {
            return Ok(0);
        }
        let mut buf = vec![0u8; len as usize];
        self.top.read(offset, &mut buf).map_err(read)?;
        let written = if buf.iter().all(|&b| b == 0) {
            self.base.write_zeroes(offset, len, false)
        } else {
            self.base.write(offset, &buf)
        };
        written.map_err(|e| (IoOperation::Write, e))?;
        Ok(len)
    }

    /// With the device quiesced: base made durable and read afresh, the image over top
    /// reading through it.
    fn finish(&self) -> Result<(), String> {
        let text = |e: FormatError| errno_text(&e.into_io());
        // Durable, nothing reserved, not dirty: it is read-only from now on.
        self.base.close().map_err(text)?;
        let file = self.base_file.try_clone().map_err(|e| errno_text(&e))?;
        let below = self.base.backing();
        let fresh = chain::open_over(
            &self.commit.base,
            file,
            below,
            &ChainOptions {
                writable: false,
                ..self.options.clone()
            },
        )
        .map_err(|e| e.to_string())?;
        let _quiesced = self
            .device
            .quiesce(QUIESCE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let served = self.device.disk().format();
        let overlay = layer_at(&served, self.commit.top_depth - 1)
            .ok_or_else(|| "the chain is not as deep as the job's top".to_string())?;
        let Some(qcow2) = overlay.as_any().and_then(|a| a.downcast_ref::<Qcow2>()) else {
            return Err(format!("a {} image has no backing file", overlay.name()));
        };
        if self.commit.top_depth == 1 && !self.device.disk().read_only() {
            qcow2
                .name_backing(
                    &self.commit.backing_file,
                    self.commit.backing_format.as_deref(),
                )
                .map_err(text)?;
        }
        qcow2.replace_backing(Some(fresh));
        log::info!(
            "job {}: committed into {}",
            self.spec.id,
            self.commit.base.filename
        );
        Ok(())
    }
}
