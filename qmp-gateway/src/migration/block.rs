//! Block migration in the migration layer (QMP migrate's `blk` and `inc`): on the source,
//! the disks' channels the block layer makes (block/migration.rs) go to the agent, which
//! sends the stream's DISKS record and waits for the destination's answer before the
//! first pass; the disks' progress shows in query-migrate's "disk". On the destination,
//! the agent's `DisksArriving` (the DISKS record) is answered with writable disks and
//! their channels, or with why not (the source then fails, saying so, and keeps its VM).
//! The disks' bytes go between the agents and the daemons, never through here.

use std::os::fd::{AsFd, OwnedFd};

use ipc::{AgentRequest, MigratedDisk, MigratedDisks};

use super::agent::Agent;
use super::progress::Disk;
use crate::block::BlockLayer;
use crate::children::link::LinkError;

/// What migrate's `blk` and `inc` ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskCopy {
    /// The disks are on storage both hosts reach (neither flag).
    Shared,
    /// `blk`: every writable disk's whole content, as the guest sees it.
    Full,
    /// `inc` (with or without `blk`, as QEMU): only what each disk's top image holds;
    /// the destination's images are over the same base.
    Incremental,
}

impl DiskCopy {
    pub fn from_flags(blk: bool, inc: bool) -> DiskCopy {
        match (blk, inc) {
            (_, true) => DiskCopy::Incremental,
            (true, false) => DiskCopy::Full,
            (false, false) => DiskCopy::Shared,
        }
    }
}

fn link_error(e: LinkError) -> String {
    match e {
        LinkError::Remote(r) => r.desc,
        other => other.to_string(),
    }
}

/// Source, once its agent has the destination's verdict: the disks whose content this
/// migration copies (none when `copy` is `Shared`) start marking the guest's writes, and
/// the agent announces them to the destination, which answers before this returns;
/// `progress` gets the disks' counters (query-migrate's "disk"). `zero_blocks` (the
/// capability): what reads as zeroes goes as zero runs rather than as data.
pub fn start_outgoing(
    block: &BlockLayer,
    agent: &Agent,
    copy: DiskCopy,
    zero_blocks: bool,
    progress: impl FnOnce(Disk),
) -> Result<(), String> {
    let sources = block
        .migration_sources(copy != DiskCopy::Shared)
        .map_err(|e| e.to_string())?;
    if sources.is_empty() {
        return Ok(());
    }
    let (disks, fds): (Vec<MigratedDisk>, Vec<OwnedFd>) = sources.into_iter().unzip();
    let total = disks.iter().map(|d| d.size).sum();
    progress(Disk {
        total,
        remaining: total,
        ..Disk::default()
    });
    let request = AgentRequest::Disks(MigratedDisks {
        incremental: copy == DiskCopy::Incremental,
        zero_blocks,
        disks,
    });
    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    agent.link.request(request, &fds).map_err(link_error)?;
    Ok(())
}

/// Destination: the source copies `disks`; the agent waits for this answer.
pub fn arriving(block: &BlockLayer, agent: &Agent, disks: MigratedDisks) {
    let indices: Vec<u32> = disks.disks.iter().map(|d| d.index).collect();
    let (answer, sinks) = match block.migration_sinks(&disks) {
        Ok(sinks) => (Ok(indices), sinks),
        Err(e) => {
            log::warn!("block migration: {e}");
            (Err(e.to_string()), Vec::new())
        }
    };
    let fds: Vec<_> = sinks.iter().map(|f| f.as_fd()).collect();
    if let Err(e) = agent.link.request(AgentRequest::DiskSinks(answer), &fds) {
        // The agent fails the migration on its own (it waits for this answer).
        log::warn!("block migration: answering the agent: {e}");
    }
}
