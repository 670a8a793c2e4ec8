//! The block commands: arguments typed here, answers from the block layer (which asks
//! the disks' daemons where the answer is theirs).

use std::path::PathBuf;

use ipc::{VmmRequest, BPS_READ, BPS_TOTAL, BPS_WRITE, OPS_READ, OPS_TOTAL, OPS_WRITE};
use serde::Deserialize;
use serde_json::json;

use crate::block::drives::TrayAction;
use crate::block::throttle::{BucketRequest, ThrottleRequest};
use crate::block::{BlockError, DiskRef};
use crate::devices::DeviceError;
use crate::qmp::args::{serde_arguments, Int, NoArgs};
use crate::qmp::blockdev::BlockdevAdd;
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};

/// Arguments that name a disk by exactly one of "device" and "id".
pub trait NamesDisk {
    fn device(&self) -> Option<&str>;
    fn id(&self) -> Option<&str>;
}

/// blockdev-close-tray, blockdev-remove-medium.
#[derive(Debug, Deserialize)]
pub struct DeviceOrId {
    pub device: Option<String>,
    pub id: Option<String>,
}

serde_arguments!(DeviceOrId, [opt("device", Ty::Str), opt("id", Ty::Str)]);

/// eject, blockdev-open-tray.
#[derive(Debug, Deserialize)]
pub struct Tray {
    pub device: Option<String>,
    pub id: Option<String>,
    pub force: Option<bool>,
}

serde_arguments!(
    Tray,
    [
        opt("device", Ty::Str),
        opt("id", Ty::Str),
        opt("force", Ty::Bool)
    ]
);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChangeMedium {
    pub device: Option<String>,
    pub id: Option<String>,
    pub filename: String,
    pub format: Option<String>,
    pub force: Option<bool>,
    pub read_only_mode: Option<ReadOnlyMode>,
}

/// BlockdevChangeReadOnlyMode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadOnlyMode {
    Retain,
    ReadOnly,
    ReadWrite,
}

serde_arguments!(
    ChangeMedium,
    [
        opt("device", Ty::Str),
        opt("id", Ty::Str),
        req("filename", Ty::Str),
        opt("format", Ty::Str),
        opt("force", Ty::Bool),
        opt("read-only-mode", Ty::Named("BlockdevChangeReadOnlyMode")),
    ]
);

macro_rules! names_disk {
    ($($ty:ty),*) => {
        $(impl NamesDisk for $ty {
            fn device(&self) -> Option<&str> {
                self.device.as_deref()
            }

            fn id(&self) -> Option<&str> {
                self.id.as_deref()
            }
        })*
    };
}

names_disk!(
    DeviceOrId,
    Tray,
    ChangeMedium,
    BlockIoThrottle,
    BlockDaemonRestart
);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InsertMedium {
    pub device: Option<String>,
    pub id: Option<String>,
    pub node_name: String,
}

serde_arguments!(
    InsertMedium,
    [
        opt("device", Ty::Str),
        opt("id", Ty::Str),
        req("node-name", Ty::Str),
    ]
);

#[derive(Debug, Deserialize)]
pub struct QueryNamedBlockNodes {
    pub flat: Option<bool>,
}

serde_arguments!(QueryNamedBlockNodes, [opt("flat", Ty::Bool)]);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct QueryBlockstats {
    pub query_nodes: Option<bool>,
}

serde_arguments!(QueryBlockstats, [opt("query-nodes", Ty::Bool)]);

/// blockdev-del, x-blockdev-del.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeName {
    pub node_name: String,
}

serde_arguments!(NodeName, [req("node-name", Ty::Str)]);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockResize {
    pub device: Option<String>,
    pub node_name: Option<String>,
    pub size: Int,
}

serde_arguments!(
    BlockResize,
    [
        opt("device", Ty::Str),
        opt("node-name", Ty::Str),
        req("size", Ty::Int),
    ]
);

/// block_set_io_throttle (BlockIOThrottle).
#[derive(Debug, Deserialize)]
pub struct BlockIoThrottle {
    pub device: Option<String>,
    pub id: Option<String>,
    pub bps: Int,
    pub bps_rd: Int,
    pub bps_wr: Int,
    pub iops: Int,
    pub iops_rd: Int,
    pub iops_wr: Int,
    pub bps_max: Option<Int>,
    pub bps_rd_max: Option<Int>,
    pub bps_wr_max: Option<Int>,
    pub iops_max: Option<Int>,
    pub iops_rd_max: Option<Int>,
    pub iops_wr_max: Option<Int>,
    pub bps_max_length: Option<Int>,
    pub bps_rd_max_length: Option<Int>,
    pub bps_wr_max_length: Option<Int>,
    pub iops_max_length: Option<Int>,
    pub iops_rd_max_length: Option<Int>,
    pub iops_wr_max_length: Option<Int>,
    pub iops_size: Option<Int>,
    pub group: Option<String>,
}

serde_arguments!(
    BlockIoThrottle,
    [
        opt("device", Ty::Str),
        opt("id", Ty::Str),
        req("bps", Ty::Int),
        req("bps_rd", Ty::Int),
        req("bps_wr", Ty::Int),
        req("iops", Ty::Int),
        req("iops_rd", Ty::Int),
        req("iops_wr", Ty::Int),
        opt("bps_max", Ty::Int),
        opt("bps_rd_max", Ty::Int),
        opt("bps_wr_max", Ty::Int),
        opt("iops_max", Ty::Int),
        opt("iops_rd_max", Ty::Int),
        opt("iops_wr_max", Ty::Int),
        opt("bps_max_length", Ty::Int),
        opt("bps_rd_max_length", Ty::Int),
        opt("bps_wr_max_length", Ty::Int),
        opt("iops_max_length", Ty::Int),
        opt("iops_rd_max_length", Ty::Int),
        opt("iops_wr_max_length", Ty::Int),
        opt("iops_size", Ty::Int),
        opt("group", Ty::Str),
    ]
);

impl BlockIoThrottle {
    /// The numbers, bucket by bucket, for the block layer to check.
    fn request(&self) -> ThrottleRequest {
        let bucket = |avg: Int, max: Option<Int>, length: Option<Int>| BucketRequest {
            avg: Some(avg.0),
            max: max.map(|v| v.0),
            burst_length: length.map(|v| v.0),
        };
        let mut buckets = [BucketRequest::default(); 6];
        buckets[BPS_TOTAL] = bucket(self.bps, self.bps_max, self.bps_max_length);
        buckets[BPS_READ] = bucket(self.bps_rd, self.bps_rd_max, self.bps_rd_max_length);
        buckets[BPS_WRITE] = bucket(self.bps_wr, self.bps_wr_max, self.bps_wr_max_length);
        buckets[OPS_TOTAL] = bucket(self.iops, self.iops_max, self.iops_max_length);
        buckets[OPS_READ] = bucket(self.iops_rd, self.iops_rd_max, self.iops_rd_max_length);
        buckets[OPS_WRITE] = bucket(self.iops_wr, self.iops_wr_max, self.iops_wr_max_length);
        ThrottleRequest {
            buckets,
            iops_size: self.iops_size.map(|v| v.0),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WriteThreshold {
    pub node_name: String,
    pub write_threshold: Int,
}

serde_arguments!(
    WriteThreshold,
    [req("node-name", Ty::Str), req("write-threshold", Ty::Uint)]
);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockPasswd {
    pub device: Option<String>,
    pub node_name: Option<String>,
    pub password: String,
}

serde_arguments!(
    BlockPasswd,
    [
        opt("device", Ty::Str),
        opt("node-name", Ty::Str),
        req("password", Ty::Str),
    ]
);

#[derive(Debug, Deserialize)]
pub struct Change {
    pub device: String,
    pub target: String,
    pub arg: Option<String>,
}

serde_arguments!(
    Change,
    [
        req("device", Ty::Str),
        req("target", Ty::Str),
        opt("arg", Ty::Str),
    ]
);

#[derive(Debug, Deserialize)]
pub struct XBlockdevChange {
    pub parent: String,
    pub child: Option<String>,
    pub node: Option<String>,
}

serde_arguments!(
    XBlockdevChange,
    [
        req("parent", Ty::Str),
        opt("child", Ty::Str),
        opt("node", Ty::Str),
    ]
);

/// Our extension's arguments: the disk, and optionally another daemon binary.
#[derive(Debug, Deserialize)]
pub struct BlockDaemonRestart {
    pub device: Option<String>,
    pub id: Option<String>,
    pub binary: Option<String>,
}

serde_arguments!(
    BlockDaemonRestart,
    [
        opt("device", Ty::Str),
        opt("id", Ty::Str),
        opt("binary", Ty::Str),
    ]
);

/// The disk that exactly one of "device" and "id" names.
fn disk(a: &impl NamesDisk) -> Result<DiskRef<'_>, QmpError> {
    Ok(DiskRef::exactly_one(a.device(), a.id())?)
}

/// The block layer's `e` for `disk`, where an "id" that names no disk's backend is told
/// apart as QEMU 7.2's blk_by_qdev_id does: a device there (a disk's own, a NIC, a
/// virtio backend) has no block device backend; a container is not a device.
fn by_qdev(c: &Ctx, disk: DiskRef, e: BlockError) -> QmpError {
    match (disk, e) {
        (DiskRef::Qdev(id), BlockError::DeviceNotFound(_)) => match c.gw.devices.lock().find(id) {
            Ok(_) | Err(DeviceError::BusNoHotplug(_)) => BlockError::NoBlockBackend.into(),
            Err(e) => e.into(),
        },
        (_, e) => e.into(),
    }
}

pub fn query_block(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(c.gw.block.query_block())
}

pub fn query_named_block_nodes(c: &mut Ctx, a: QueryNamedBlockNodes) -> QmpResult {
    // "flat" leaves out the backing images nested in each node's image info.
    Ok(c.gw.block.query_named_block_nodes(a.flat.unwrap_or(false)))
}

pub fn query_blockstats(c: &mut Ctx, a: QueryBlockstats) -> QmpResult {
    Ok(c.gw
        .block
        .query_blockstats(a.query_nodes.unwrap_or(false))?)
}

pub fn blockdev_add(c: &mut Ctx, a: BlockdevAdd) -> QmpResult {
    // Each image it opens is the client's to account for while its node exists.
    let account = c.fd_account;
    c.gw.block
        .blockdev_add(&a.0, &c.gw.fdsets, &mut || Ok(Some(account.charge(1)?)))?;
    Ok(json!({}))
}

pub fn blockdev_del(c: &mut Ctx, a: NodeName) -> QmpResult {
    c.gw.block.blockdev_del(&a.node_name)?;
    Ok(json!({}))
}

pub fn block_resize(c: &mut Ctx, a: BlockResize) -> QmpResult {
    // 'size' is a QAPI int: beyond int64 it is not one (QEMU's input visitor's words).
    let size = a
        .size
        .as_i64()
        .ok_or_else(|| QmpError::generic("Invalid parameter type for 'size', expected: integer"))?;
    let notify =
        c.gw.block
            .block_resize(a.device.as_deref(), a.node_name.as_deref(), size)?;
    if let Some(disk) = notify {
        // The daemon resized the image; the guest hears of it from its device model.
        c.vmm(VmmRequest::DiskConfigChanged { disk })?;
    }
    Ok(json!({}))
}

pub fn block_set_io_throttle(c: &mut Ctx, a: BlockIoThrottle) -> QmpResult {
    let disk = disk(&a)?;
    c.gw.block
        .set_io_throttle(disk, &a.request(), a.group.as_deref())
        .map_err(|e| by_qdev(c, disk, e))?;
    Ok(json!({}))
}

pub fn block_set_write_threshold(c: &mut Ctx, a: WriteThreshold) -> QmpResult {
    // 'write-threshold' is a QAPI uint64, which (as QEMU's visitor does) also takes a
    // negative int64 as the uint64 of the same bits.
    let bytes = a
        .write_threshold
        .as_u64()
        .or_else(|| a.write_threshold.as_i64().map(|v| v as u64))
        .ok_or(BlockError::ThresholdOutOfRange)?;
    c.gw.block.set_write_threshold(&a.node_name, bytes)?;
    Ok(json!({}))
}

/// eject, blockdev-open-tray.
pub fn eject(c: &mut Ctx, a: Tray) -> QmpResult {
    tray(c, &a, TrayAction::Eject)
}

pub fn open_tray(c: &mut Ctx, a: Tray) -> QmpResult {
    tray(c, &a, TrayAction::Open)
}

pub fn close_tray(c: &mut Ctx, a: DeviceOrId) -> QmpResult {
    tray(c, &a, TrayAction::Close)
}

pub fn remove_medium(c: &mut Ctx, a: DeviceOrId) -> QmpResult {
    tray(c, &a, TrayAction::Eject)
}

/// A tray command: a drive no device uses has no tray; every disk here is a fixed
/// virtio-blk disk.
fn tray(c: &mut Ctx, a: &impl NamesDisk, action: TrayAction) -> QmpResult {
    let disk = disk(a)?;
    c.gw.block
        .tray(disk, action)
        .map_err(|e| by_qdev(c, disk, e))?;
    Ok(json!({}))
}

/// blockdev-change-medium: a new medium for a drive no device uses (charged to the
/// client's fd budget while it is there); every disk here is a fixed virtio-blk disk.
pub fn change_medium(c: &mut Ctx, a: ChangeMedium) -> QmpResult {
    let disk = disk(&a)?;
    let read_only = match a.read_only_mode {
        None | Some(ReadOnlyMode::Retain) => None,
        Some(ReadOnlyMode::ReadOnly) => Some(true),
        Some(ReadOnlyMode::ReadWrite) => Some(false),
    };
    let account = c.fd_account;
    let medium = (a.filename.as_str(), a.format.as_deref(), read_only);
    c.gw.block
        .change_medium(disk, medium, &c.gw.fdsets, &mut || {
            Ok(Some(account.charge(1)?))
        })
        .map_err(|e| by_qdev(c, disk, e))?;
    Ok(json!({}))
}

pub fn insert_medium(c: &mut Ctx, a: InsertMedium) -> QmpResult {
    // The node is looked for first.
    if !c.gw.block.node_exists(&a.node_name) {
        return Err(BlockError::NodeNotFound(a.node_name).into());
    }
    let disk = DiskRef::exactly_one(a.device.as_deref(), a.id.as_deref())?;
    Err(by_qdev(
        c,
        disk,
        c.gw.block.insert_medium(&a.node_name, disk),
    ))
}

pub fn block_passwd(c: &mut Ctx, a: BlockPasswd) -> QmpResult {
    Err(c
        .gw
        .block
        .block_passwd(a.device.as_deref(), a.node_name.as_deref())
        .into())
}

/// `change`: a VNC setting (there is no VNC display) or a removable medium (there is
/// none).
pub fn change(c: &mut Ctx, a: Change) -> QmpResult {
    if a.device == "vnc" {
        if a.target == "password" || a.target == "passwd" {
            if a.arg.is_none() {
                return Err(QmpError::generic("Parameter 'password' is missing"));
            }
            return Err(QmpError::generic("Could not set password"));
        }
        return Err(QmpError::generic(format!(
            "Failed to start VNC server on '{}': there is no VNC display",
            a.target
        )));
    }
    Err(c.gw.block.change(&a.device).into())
}

/// x-blockdev-change: only quorum nodes take or give up children, and Flotilla's nodes
/// are raw and file nodes (QEMU's answer for those).
pub fn x_blockdev_change(c: &mut Ctx, a: XBlockdevChange) -> QmpResult {
    let parent = &a.parent;
    c.gw.block.lookup(parent)?;
    match (&a.child, &a.node) {
        (Some(_), Some(_)) => Err(QmpError::generic(
            "The parameters child and node are in conflict",
        )),
        (None, None) => Err(QmpError::generic("Either child or node must be specified")),
        (Some(_), None) => Err(QmpError::generic(format!(
            "The node {parent} does not support removing a child"
        ))),
        (None, Some(node)) => {
            if !c.gw.block.node_exists(node) {
                return Err(QmpError::generic(format!("Node '{node}' not found")));
            }
            Err(QmpError::generic(format!(
                "The node {parent} does not support adding a child"
            )))
        }
    }
}

/// Our extension: replaces a disk's block daemon (after a crash that gave up, or to
/// upgrade it: `binary` may name another build). The guest's I/O pauses meanwhile.
pub fn block_daemon_restart(c: &mut Ctx, a: BlockDaemonRestart) -> QmpResult {
    let pid =
        c.gw.block
            .restart_requested(disk(&a)?, a.binary.as_deref().map(PathBuf::from))?;
    Ok(json!({"pid": pid}))
}
