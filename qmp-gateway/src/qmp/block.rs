//! The block commands' handlers: arguments read from QMP, answers from the block layer
//! (which asks the disks' daemons where the answer is theirs).

use ipc::VmmRequest;
use serde_json::{json, Map, Value};

use super::commands::Ctx;
use super::protocol::{QmpError, QmpResult};

fn str_arg<'a>(args: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

fn bool_arg(args: &Map<String, Value>, key: &str) -> bool {
    args.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn int_arg(args: &Map<String, Value>, key: &str) -> i64 {
    // Integer arguments were checked against the table; an unsigned value beyond i64
    // is out of every range these commands accept.
    args.get(key)
        .and_then(|v| v.as_i64().or_else(|| v.as_u64().map(|_| i64::MAX)))
        .unwrap_or(0)
}

pub fn query_block(c: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    c.gw.block.query_block()
}

pub fn query_named_block_nodes(c: &mut Ctx, _: &Map<String, Value>) -> QmpResult {
    // "flat" leaves out backing images, which raw nodes never have.
    c.gw.block.query_named_block_nodes()
}

pub fn query_blockstats(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.block.query_blockstats(bool_arg(args, "query-nodes"))
}

pub fn blockdev_add(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.block.blockdev_add(args, &c.gw.fdsets)
}

pub fn blockdev_del(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.block
        .blockdev_del(str_arg(args, "node-name").unwrap_or_default())
}

pub fn block_resize(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    let notify = c.gw.block.block_resize(
        str_arg(args, "device"),
        str_arg(args, "node-name"),
        int_arg(args, "size"),
    )?;
    if let Some(disk) = notify {
        // The daemon resized the image; the guest hears of it from its device model.
        c.vmm(VmmRequest::DiskConfigChanged { disk })?;
    }
    Ok(json!({}))
}

pub fn block_set_io_throttle(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.block.set_io_throttle(args)
}

pub fn block_set_write_threshold(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.block.set_write_threshold(
        str_arg(args, "node-name").unwrap_or_default(),
        int_arg(args, "write-threshold"),
    )
}

/// eject, the tray commands, blockdev-change-medium, blockdev-remove-medium: every disk
/// here is a fixed virtio-blk disk.
pub fn not_removable(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.block.not_removable(args)
}

pub fn insert_medium(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.block.insert_medium(args)
}

pub fn block_passwd(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.block
        .block_passwd(str_arg(args, "device"), str_arg(args, "node-name"))
}

/// `change`: a VNC setting (there is no VNC display) or a removable medium (there is none).
pub fn change(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    let device = str_arg(args, "device").unwrap_or_default();
    if device == "vnc" {
        let target = str_arg(args, "target").unwrap_or_default();
        if target == "password" || target == "passwd" {
            if args.get("arg").is_none() {
                return Err(QmpError::generic("Parameter 'password' is missing"));
            }
            return Err(QmpError::generic("Could not set password"));
        }
        return Err(QmpError::generic(format!(
            "Failed to start VNC server on '{target}': there is no VNC display"
        )));
    }
    c.gw.block.change(device)
}

/// x-blockdev-change: only quorum nodes take or give up children, and Flotilla's nodes
/// are raw and file nodes (QEMU's answer for those).
pub fn x_blockdev_change(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    let parent = str_arg(args, "parent").unwrap_or_default();
    c.gw.block
        .node_exists(parent)
        .then_some(())
        .ok_or_else(|| {
            QmpError::generic(format!(
                "Cannot find device='{parent}' nor node-name='{parent}'"
            ))
        })?;
    match (str_arg(args, "child"), str_arg(args, "node")) {
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
pub fn block_daemon_restart(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.block.restart_requested(args)
}
