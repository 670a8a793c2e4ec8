//! The network commands: arguments typed here, answers from the network layer (which
//! asks the NICs' daemons where the answer is theirs).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::net::netdev::NetdevSpec;
use crate::net::NicRef;
use crate::qmp::args::{serde_arguments, Arguments};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Member, Ty};

/// netdev_add: the backend, read as QEMU's Netdev union (by type) by the network layer,
/// which the command line shares.
pub struct NetdevAdd(pub NetdevSpec);

impl Arguments for NetdevAdd {
    /// Type and id, then the options of every backend type we serve (checked per type
    /// when decoded).
    const MEMBERS: &'static [Member] = &[
        req("type", Ty::Str),
        req("id", Ty::Str),
        opt("ifname", Ty::Any),
        opt("fd", Ty::Any),
        opt("queues", Ty::Any),
        opt("script", Ty::Any),
        opt("downscript", Ty::Any),
        opt("vhost", Ty::Any),
        opt("vnet_hdr", Ty::Any),
        opt("udp", Ty::Any),
        opt("localaddr", Ty::Any),
        opt("local", Ty::Any),
        opt("remote", Ty::Any),
    ];

    fn decode(args: Map<String, Value>) -> Result<Self, QmpError> {
        Ok(NetdevAdd(NetdevSpec::from_args(&args)?))
    }

    #[cfg(test)]
    fn serde_fields() -> Option<&'static [&'static str]> {
        None
    }
}

#[derive(Debug, Deserialize)]
pub struct NetdevDel {
    pub id: String,
}

serde_arguments!(NetdevDel, [req("id", Ty::Str)]);

#[derive(Debug, Deserialize)]
pub struct SetLink {
    pub name: String,
    pub up: bool,
}

serde_arguments!(SetLink, [req("name", Ty::Str), req("up", Ty::Bool)]);

#[derive(Debug, Deserialize)]
pub struct QueryRxFilter {
    pub name: Option<String>,
}

serde_arguments!(QueryRxFilter, [opt("name", Ty::Str)]);

/// Our extension's arguments: the NIC (by its netdev, or its id or QOM path), and
/// optionally another daemon binary.
#[derive(Debug, Deserialize)]
pub struct NetDaemonRestart {
    pub device: Option<String>,
    pub id: Option<String>,
    pub binary: Option<String>,
}

serde_arguments!(
    NetDaemonRestart,
    [
        opt("device", Ty::Str),
        opt("id", Ty::Str),
        opt("binary", Ty::Str),
    ]
);

pub fn netdev_add(c: &mut Ctx, a: NetdevAdd) -> QmpResult {
    // The backend's fds are the client's to account for while it exists.
    let charge = c.charge_fds(a.0.backend.fds())?;
    c.gw.net.netdev_add(&a.0, c.named_fds, charge)?;
    Ok(json!({}))
}

pub fn netdev_del(c: &mut Ctx, a: NetdevDel) -> QmpResult {
    c.gw.net.netdev_del(&a.id)?;
    Ok(json!({}))
}

pub fn set_link(c: &mut Ctx, a: SetLink) -> QmpResult {
    c.gw.net.set_link(&a.name, a.up)?;
    Ok(json!({}))
}

pub fn query_rx_filter(c: &mut Ctx, a: QueryRxFilter) -> QmpResult {
    Ok(c.gw.net.query_rx_filter(a.name.as_deref())?)
}

/// Our extension: replaces a NIC's net daemon (after a crash that gave up, or to upgrade
/// it: `binary` may name another build). The guest's frames pause meanwhile.
pub fn net_daemon_restart(c: &mut Ctx, a: NetDaemonRestart) -> QmpResult {
    let nic = NicRef::exactly_one(a.device.as_deref(), a.id.as_deref())?;
    let pid =
        c.gw.net
            .restart_requested(nic, a.binary.as_deref().map(PathBuf::from))?;
    Ok(json!({"pid": pid}))
}
