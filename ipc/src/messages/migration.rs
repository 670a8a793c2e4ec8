//! gateway <-> migration-agent: the agent of one migration, on the source or on the
//! destination. The gateway makes the connection (it connects or listens; the agent's
//! sandbox creates no socket) and hands it over with guest memory; the agent does every
//! byte of the migration stream. On the source the gateway paces the passes (each
//! `SendPass` works for a bounded time and reports), on the destination the agent
//! receives on its own thread and reports by events.

use serde::{Deserialize, Serialize};

use super::{Call, Message, Upcall};
use crate::messages::net::RxFilterState;
use crate::messages::vmm::{memory_files, DimmLaunch, RamWindow};
use crate::userfault::MappedRange;

/// How the migration stream is carried: the fd in the frame after guest memory's.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// A connected stream socket (tcp:, unix:, fd: of a socket): the destination answers
    /// on it.
    Socket,
    /// A pipe or a file (exec:, fd: of a pipe): one way only, no answer.
    OneWay,
    /// A listening socket (destination): the agent accepts one connection.
    Listener,
}

/// What source and destination must agree on before any memory moves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MachineShape {
    pub memory: u64,
    pub vcpus: u32,
    /// Each disk's queue count, in launch order.
    pub disks: Vec<u32>,
    /// Each NIC's queue pairs, in launch order.
    pub nics: Vec<u32>,
    /// The DIMMs (pc-dimm), by memory slot: QEMU's rule, the destination has the same
    /// DIMMs in the same slots at the same addresses (their memory goes in the stream).
    pub dimms: Vec<DimmLaunch>,
}

/// The source's migration: guest memory's files (RAM's memfd, then each DIMM's, as the
/// windows name them), the dirty log (memfd), then the channel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OutgoingStart {
    pub channel: Channel,
    pub windows: Vec<RamWindow>,
    pub log_len: u64,
    pub shape: MachineShape,
    /// XBZRLE's cache size in bytes, when the capability is on.
    pub xbzrle_cache: Option<u64>,
    /// The compress capability's parameters, when it is on.
    pub compress: Option<CompressParams>,
    /// The postcopy-ram capability: the destination is told at once (the ADVISE
    /// record) and must have it too; `AgentRequest::Postcopy` may switch later.
    pub postcopy: bool,
}

/// How the source deflates pages (QMP's compress-level, compress-threads,
/// compress-wait-thread).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressParams {
    /// zlib's level, 0 (none) to 9.
    pub level: u8,
    /// Worker threads, at least 1.
    pub threads: u8,
    /// All workers busy: wait for one (true), or send the page whole (false).
    pub wait_thread: bool,
}

/// The destination's migration: guest memory's files (as the windows name them), then
/// the channel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IncomingStart {
    pub channel: Channel,
    pub windows: Vec<RamWindow>,
    pub shape: MachineShape,
    /// Threads that inflate compressed pages (QMP's decompress-threads), started at the
    /// first one.
    pub decompress_threads: u8,
}

/// A disk a block migration copies: its index in launch order and its size in bytes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigratedDisk {
    pub index: u32,
    pub size: u64,
}

/// A block migration's disks (QMP migrate's `blk`; `inc`: only what each top image
/// holds goes, over a base both sides have), as the stream's DISKS record lists them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MigratedDisks {
    pub incremental: bool,
    /// The `zero-blocks` capability: chunks that read as zeroes go as DISK_ZERO runs;
    /// off (QEMU's default), as DISK_DATA like any other. The source's choice alone: the
    /// DISKS record does not carry it (a destination takes either record), so one read
    /// from the stream says false.
    pub zero_blocks: bool,
    pub disks: Vec<MigratedDisk>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AgentRequest {
    Outgoing(OutgoingStart),
    /// Source, before the first pass: these disks go too. The DISKS record is sent and
    /// (two-way channels) the destination's answer awaited. The frame carries one disk
    /// channel per disk, in order: the agent's end of a socket pair whose other end the
    /// disk's block daemon serves (`BlockRequest::MigrationSource`, `ipc::disk_channel`).
    Disks(MigratedDisks),
    /// Destination: the answer to `AgentEvent::DisksArriving`: the disks it named are
    /// writable here, with one disk channel each in the frame, in the order named
    /// (`BlockRequest::MigrationSink`), or why not.
    DiskSinks(Result<Vec<u32>, String>),
    /// Sends the pages the dirty log marks (the first pass: every page) for at most
    /// `budget_ms`, at most `max_bandwidth` bytes per second (0: unlimited).
    SendPass {
        first: bool,
        budget_ms: u32,
        max_bandwidth: u64,
    },
    /// The VM is stopped and every dirty page sent: the device state goes, the stream
    /// ends, and (two-way channels) the destination's answer is awaited.
    Finish {
        state: Vec<u8>,
        /// The VM ran before the stop-and-copy (the destination starts it).
        running: bool,
    },
    Incoming(IncomingStart),
    /// The destination's vmm-core took the state: the source may let go (or not).
    Resumed(Result<(), String>),
    /// Source, VM stopped, instead of `Finish`: the switch to postcopy. The pages still
    /// to send (the pass's unsent ones and those dirtied since they went) are named to
    /// the destination (DISCARD), the device state goes, and the agent sends those pages
    /// from then on by itself, the ones the destination asks for first. Answered once
    /// the destination's vmm-core took the state (or with why not: the VM may then run
    /// here again).
    Postcopy {
        state: Vec<u8>,
        running: bool,
        /// max-postcopy-bandwidth, bytes per second (0: unlimited).
        max_bandwidth: u64,
    },
    /// Source, after `Postcopy`: waits up to `wait_ms` for the postcopy phase to end;
    /// answered with `AgentReply::Postcopy`.
    PostcopyProgress {
        wait_ms: u32,
    },
    /// Destination, answering `AgentEvent::PostcopyAdvised`: whether this side can
    /// take postcopy (the capability is on, the host has what it needs), or why not.
    PostcopyAdvice(Result<(), String>),
    /// Destination, answering `AgentEvent::StateArrived` of a postcopy migration before
    /// the state is restored: the userfaultfds of the processes that map guest RAM, in
    /// the frame: vmm-core's first (its mapping: `vmm`, where pages are placed), then
    /// `backends` more whose mappings follow with `PostcopyRanges`.
    PostcopyFaults {
        vmm: Vec<MappedRange>,
        backends: u32,
    },
    /// Destination: where backend `backend` (of `PostcopyFaults`) maps guest RAM.
    PostcopyRanges {
        backend: u32,
        ranges: Vec<MappedRange>,
    },
    /// The migration is over: the agent exits.
    Quit,
}

impl Message for AgentRequest {
    fn fd_count(&self) -> usize {
        match self {
            AgentRequest::Outgoing(s) => memory_files(&s.windows) + 2,
            AgentRequest::Incoming(s) => memory_files(&s.windows) + 1,
            AgentRequest::Disks(d) => d.disks.len(),
            AgentRequest::DiskSinks(Ok(disks)) => disks.len(),
            AgentRequest::PostcopyFaults { backends, .. } => 1 + *backends as usize,
            _ => 0,
        }
    }
}

pub type ToAgent = Call<AgentRequest>;

/// What one pass (or the part of it a `SendPass` did) moved.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Bytes written to the channel.
    pub bytes: u64,
    /// Pages sent whole.
    pub normal_pages: u64,
    /// Pages sent as zero pages.
    pub zero_pages: u64,
    /// XBZRLE's cache hits and what they cost, as QEMU counts them: pages sent as
    /// deltas (their bytes with 3 of header), unchanged ones (nothing sent) and overflows
    /// (sent whole, a page each).
    pub xbzrle_pages: u64,
    pub xbzrle_bytes: u64,
    pub xbzrle_cache_miss: u64,
    pub xbzrle_overflow: u64,
    /// compress, as QEMU counts it: pages sent deflated and their deflated bytes, and
    /// pages sent whole because every worker was busy (compress-wait-thread off).
    pub compressed_pages: u64,
    pub compressed_bytes: u64,
    pub compress_busy: u64,
    /// Pages of this pass not sent yet (0: the RAM part of the pass is complete).
    pub remaining_pages: u64,
    /// Block migration: the bytes of `bytes` that carried disk records.
    pub disk_bytes: u64,
    /// Block migration: how far the first pass's copy of the disks has come, in disk
    /// bytes (skipped bytes count: QEMU's "transferred").
    pub disk_transferred: u64,
    /// Block migration: disk bytes of this pass not sent yet (0: the disks' part of the
    /// pass is complete; the pass is complete when this and `remaining_pages` are 0).
    pub disk_remaining: u64,
    /// Block migration: disk bytes the guest wrote and the next pass sends.
    pub disk_dirty: u64,
}

/// The postcopy phase on the source, so far.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PostcopyReport {
    /// Bytes written to the channel since the switch.
    pub bytes: u64,
    /// Pages sent whole and as zero pages since the switch.
    pub normal_pages: u64,
    pub zero_pages: u64,
    /// Page requests the destination made (QEMU's postcopy-requests).
    pub requests: u64,
    /// Pages not sent yet.
    pub remaining_pages: u64,
    /// Every page went and the destination has them all.
    pub complete: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AgentReply {
    Done,
    Pass(PassReport),
    Postcopy(PostcopyReport),
}

impl Message for AgentReply {}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AgentEvent {
    /// Destination: the source connected and its machine shape matches.
    Connected,
    /// Destination: the source may switch to postcopy (its ADVISE record); nothing more
    /// is read until `AgentRequest::PostcopyAdvice` answers (QEMU's destination, too,
    /// looks at its postcopy-ram capability when the source's advice comes).
    PostcopyAdvised,
    /// Destination: bytes received so far.
    Progress { bytes: u64, pages: u64 },
    /// Destination: the source migrates these disks' content (the DISKS record): the
    /// gateway checks them against this VM's, makes them writable here and answers with
    /// `AgentRequest::DiskSinks`; nothing more is read meanwhile.
    DisksArriving(MigratedDisks),
    /// Destination: all of memory and the device state arrived; or, `postcopy`, the
    /// device state arrived and the rest of memory follows: the agent waits for
    /// `AgentRequest::PostcopyFaults` before it reads on.
    StateArrived {
        state: Vec<u8>,
        running: bool,
        postcopy: bool,
    },
    /// Destination, postcopy: every page is here and the source was told.
    PostcopyDone,
    /// Either side: the migration failed (the peer went away, an incompatible
    /// destination, a malformed stream); the text says why.
    Failed(String),
}

pub type FromAgent = Upcall<AgentReply, AgentEvent>;

/// What the stream's STATE record carries (the agent passes it through): vmm-core's
/// state (`VmmReply::State`) and, per NIC in launch order, what its net daemon keeps and
/// vmm-core never sees, so that the destination's NICs behave as the source's did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MigratedState {
    pub vmm: Vec<u8>,
    pub nics: Vec<MigratedNic>,
}

/// A NIC's host side as it moves: the receive filter the guest programmed, and the link
/// (QMP set_link: frames stop both ways while it is down; vmm-core's state has the
/// guest's view of it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MigratedNic {
    pub filter: RxFilterState,
    pub link_up: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the migrated state is malformed: {0}")]
pub struct MalformedState(String);

impl MigratedState {
    /// The version of the encoding below, first in it (1 had the filters only).
    const VERSION: u8 = 2;
    /// Far above any VM's state, below what a peer could make us allocate.
    const MAX_BYTES: usize = 16 << 20;

    fn config() -> impl bincode::config::Config {
        bincode::config::standard().with_limit::<{ Self::MAX_BYTES }>()
    }

    pub fn encode(&self) -> Result<Vec<u8>, MalformedState> {
        let mut out = vec![Self::VERSION];
        let body = bincode::serde::encode_to_vec(self, Self::config())
            .map_err(|e| MalformedState(e.to_string()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The state from the STATE record's bytes (a peer's: checked, bounded).
    pub fn decode(bytes: &[u8]) -> Result<MigratedState, MalformedState> {
        let Some((&version, body)) = bytes.split_first() else {
            return Err(MalformedState("empty".into()));
        };
        if version != Self::VERSION {
            return Err(MalformedState(format!(
                "version {version}, this destination reads {}",
                Self::VERSION
            )));
        }
        let (state, used): (MigratedState, usize) =
            bincode::serde::decode_from_slice(body, Self::config())
                .map_err(|e| MalformedState(e.to_string()))?;
        if used != body.len() {
            return Err(MalformedState(format!(
                "{} bytes after its end",
                body.len() - used
            )));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod migrated_state_tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_input() {
        let state = MigratedState {
            vmm: vec![1, 2, 3],
            nics: vec![MigratedNic {
                filter: RxFilterState::default(),
                link_up: false,
            }],
        };
        let bytes = state.encode().unwrap();
        assert_eq!(MigratedState::decode(&bytes).unwrap(), state);
        assert!(MigratedState::decode(&[]).is_err());
        assert!(MigratedState::decode(&[1, 0]).is_err(), "another version");
        assert!(
            MigratedState::decode(&bytes[..bytes.len() - 1]).is_err(),
            "cut"
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(MigratedState::decode(&longer).is_err(), "trailing bytes");
        // A length far beyond the bytes there: refused, not allocated.
        assert!(MigratedState::decode(&[2, 0xfc, 0xff, 0xff, 0xff, 0x7f]).is_err());
    }
}
