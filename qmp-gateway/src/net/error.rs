//! What can go wrong in the network layer. The texts are QEMU's where QEMU has one
//! (clients and the tests compare them); qmp/errors.rs gives each its QMP class.

use crate::children::daemon::DaemonError;
use crate::children::link::LinkError;
use crate::sockets::SocketError;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No NIC or netdev by that name (QMP's DeviceNotFound).
    #[error("Device '{0}' not found")]
    DeviceNotFound(String),
    #[error("Duplicate ID '{0}'")]
    DuplicateId(String),
    #[error("net client({0}) isn't a NIC")]
    NotANic(String),
    #[error("invalid net client name: {0}")]
    NoSuchClient(String),
    #[error("Need exactly one of 'device' and 'id'")]
    NeedDeviceOrId,
    #[error("NIC {0} has no netdev (netdev_del removed it): there is nothing to serve")]
    NoBackend(String),
    /// device_add's netdev=, as QEMU's netdev property takes it.
    #[error("Property 'virtio-net-device.netdev' can't find value '{0}'")]
    NetdevNotFound(String),
    #[error("Property 'virtio-net-device.netdev' can't take value '{0}', it's in use")]
    NetdevInUse(String),
    /// A migration's NIC state that does not fit this VM.
    #[error("{0}")]
    Migration(String),

    /// A netdev's options, as QEMU's Netdev reads them.
    #[error("Parameter '{0}' is missing")]
    MissingParameter(String),
    #[error("Parameter '{0}' is unexpected")]
    UnexpectedParameter(String),
    #[error("Parameter '{0}' expects an identifier")]
    NotAnIdentifier(&'static str),
    #[error("Parameter '{parameter}' does not accept value '{value}'")]
    BadValue {
        parameter: &'static str,
        value: String,
    },
    #[error("Invalid parameter type for '{0}'")]
    InvalidType(String),
    #[error("Invalid parameter type for '{parameter}', expected: {expected}")]
    InvalidTypeExpected {
        parameter: String,
        expected: &'static str,
    },
    #[error(
        "network backend '{0}' is not available: Flotilla's net daemon serves tap, socket \
         (udp) and dgram backends"
    )]
    BackendNotAvailable(String),
    #[error(
        "{key}={value} is not supported: the gateway opens the tap and the net daemon serves \
         it (use {key}={allowed})"
    )]
    TapOptionNotSupported {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("vnet_hdr=off is not supported: the net daemon needs the tap's virtio-net header")]
    VnetHdrOff,
    #[error("queues={value}: expected 1 to {max}")]
    Queues { value: String, max: u32 },
    #[error(
        "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid \
         with fds="
    )]
    IfnameWithFd,
    #[error("tap: give ifname=NAME (the gateway opens it) or fd=NAME (an fd passed with getfd)")]
    TapWithoutSource,
    #[error("fd= carries one queue: use queues=1 with fd=")]
    FdWithQueues,
    #[error("socket: only the udp mode is supported (udp=HOST:PORT,localaddr=HOST:PORT)")]
    SocketNotUdp,
    #[error("localaddr= is mandatory with udp=")]
    NoLocaladdr,
    #[error("dgram: local address is mandatory (and remote)")]
    NoDgramLocal,
    #[error("dgram: remote address is mandatory")]
    NoDgramRemote,
    #[error("{key}: only inet addresses are supported, not '{kind}'")]
    NotInet { key: &'static str, kind: String },
    #[error("host address '{0}' doesn't contain ':' separating host from port")]
    NoPort(String),

    /// Opening a backend.
    #[error("could not configure /dev/net/tun ({name}): {error}")]
    Tap { name: String, error: std::io::Error },
    #[error("File descriptor named '{0}' has not been found")]
    NamedFdNotFound(String),
    #[error("can't bind {local} / connect to {remote}: {error}")]
    Datagram {
        local: String,
        remote: String,
        error: std::io::Error,
    },
    #[error("fd={0}: expected an inherited descriptor number above 2")]
    BadInheritedFd(String),
    #[error("fd={0}: not an open file descriptor")]
    InheritedFdClosed(i32),
    #[error("fd={0}: already taken by another option")]
    InheritedFdTaken(i32),

    /// A NIC's daemon.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Socket(#[from] SocketError),

    /// `--netdev` errors, for the command line.
    #[error("netdev id {0} is used twice")]
    NetdevIdTaken(String),
    #[error("netdev {id}: {error}")]
    Netdev { id: String, error: Box<NetError> },
    #[error("NIC {id}: {error}")]
    Nic { id: String, error: Box<NetError> },
}
