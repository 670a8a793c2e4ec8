//! gateway <-> net-daemon: opening a NIC's backend (a tap's queues, or a datagram socket,
//! all opened by the gateway) and serving it to vmm-core over a vhost-user listener the
//! gateway bound; then the NIC's management (link, receive filter, counters).

use serde::{Deserialize, Serialize};

use super::{Call, Message, Upcall};

/// What carries the NIC's frames on the host side.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetBackendKind {
    /// A tap device: one fd per queue pair, opened with IFF_VNET_HDR (offloads pass
    /// through the virtio-net header).
    Tap,
    /// A connected datagram socket (one fd): each datagram is one Ethernet frame. Two
    /// VMs joined this way need no privileges.
    Datagram,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetOpen {
    /// The NIC's id (named in events).
    pub nic: String,
    pub mac: [u8; 6],
    pub queue_pairs: u32,
    pub backend: NetBackendKind,
    /// How many backend fds come first in the frame (then the vhost-user listener).
    pub backend_fds: u32,
    pub link_up: bool,
    /// The filter the guest had set, when this daemon replaces one that died: the guest
    /// does not program it again.
    pub filter: Option<Box<RxFilterState>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NetRequest {
    /// Must come first; answered with `Done`.
    Open(NetOpen),
    /// Carrier up or down: frames stop both ways while it is down.
    SetLink {
        up: bool,
    },
    /// Answered with `RxFilter`.
    RxFilter,
    /// Answered with `Stats`.
    Stats,
    /// The filter the guest programmed on the migration's source: served from now on
    /// and again after the next feature negotiation (vmm-core replays the driver's
    /// features as it restores the device), as after a restart.
    RestoreRxFilter(Box<RxFilterState>),
    /// Tell the network where the NIC is now (after a migration came in): one RARP frame
    /// from its MAC on the host side, as QEMU's self-announcement; nothing while the
    /// link is down.
    Announce,
    /// As `BlockRequest::Userfault`: /dev/userfaultfd for the backend's postcopy.
    Userfault,
    Quit,
}

impl Message for NetRequest {
    fn fd_count(&self) -> usize {
        match self {
            NetRequest::Open(o) => o.backend_fds as usize + 1,
            NetRequest::Userfault => 1,
            _ => 0,
        }
    }
}

/// The receive filter the guest set through the control queue (QEMU's RxFilterInfo).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RxFilterState {
    pub promiscuous: bool,
    pub all_multi: bool,
    pub all_uni: bool,
    pub no_multi: bool,
    pub no_uni: bool,
    pub no_bcast: bool,
    pub main_mac: [u8; 6],
    pub unicast: Vec<[u8; 6]>,
    pub multicast: Vec<[u8; 6]>,
    pub unicast_overflow: bool,
    pub multicast_overflow: bool,
    /// VLAN filtering on (the guest negotiated CTRL_VLAN); the VLANs it let through.
    pub vlan_filtering: bool,
    pub vlans: Vec<u16>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Guest frames the host side could not take (a full tap queue, a peer not there).
    pub tx_dropped: u64,
    /// Frames the receive filter (or a link that is down) dropped.
    pub rx_filtered: u64,
    /// Frames dropped because the guest had no room for them.
    pub rx_no_buffer: u64,
    /// Guest buffers that could not be used (malformed chains, bad headers).
    pub malformed: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NetReply {
    Done,
    RxFilter(Box<RxFilterState>),
    Stats(NetStats),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// The guest changed its receive filter; this is what it is now.
    RxFilterChanged(Box<RxFilterState>),
}

pub type ToNet = Call<NetRequest>;
impl Message for NetReply {}

pub type FromNet = Upcall<NetReply, NetEvent>;
