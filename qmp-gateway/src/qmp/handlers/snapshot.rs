//! The snapshot commands and `transaction`: arguments typed here (the snapshot
//! commands' also serve as the transaction actions' data), the work in
//! block/snapshot.rs and block/transaction.rs.

use serde::Deserialize;
use serde_json::json;

use super::bitmaps::{self, BlockDirtyBitmap, BlockDirtyBitmapAdd, BlockDirtyBitmapMerge};
use super::jobs::{self, BlockdevBackup, DriveBackup};
use crate::block::snapshot::{
    ExternalRequest, ExternalSnapshot, InternalSnapshot, NewImageMode, Overlay,
};
use crate::block::transaction::{AbortAction, Action};
use crate::qmp::args::{serde_arguments, shared_members};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{opt, req, Ty};
use crate::qmp::types::{SNAPSHOT_INTERNAL_MEMBERS, SNAPSHOT_MEMBERS, SNAPSHOT_SYNC_MEMBERS};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevSnapshotSync {
    pub device: Option<String>,
    pub node_name: Option<String>,
    pub snapshot_file: String,
    pub snapshot_node_name: Option<String>,
    pub format: Option<String>,
    pub mode: Option<NewImageMode>,
}

shared_members!(BlockdevSnapshotSync, SNAPSHOT_SYNC_MEMBERS);

#[derive(Debug, Clone, Deserialize)]
pub struct BlockdevSnapshot {
    pub node: String,
    pub overlay: String,
}

shared_members!(BlockdevSnapshot, SNAPSHOT_MEMBERS);

#[derive(Debug, Clone, Deserialize)]
pub struct BlockdevSnapshotInternal {
    pub device: String,
    pub name: String,
}

shared_members!(BlockdevSnapshotInternal, SNAPSHOT_INTERNAL_MEMBERS);

#[derive(Debug, Deserialize)]
pub struct SnapshotDelete {
    pub device: String,
    pub id: Option<String>,
    pub name: Option<String>,
}

serde_arguments!(
    SnapshotDelete,
    [
        req("device", Ty::Str),
        opt("id", Ty::Str),
        opt("name", Ty::Str),
    ]
);

/// The empty data of the abort action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortData {}

/// TransactionAction (a union on "type", its data in "data").
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum TransactionAction {
    Abort(AbortData),
    BlockDirtyBitmapAdd(BlockDirtyBitmapAdd),
    BlockDirtyBitmapClear(BlockDirtyBitmap),
    BlockDirtyBitmapRemove(BlockDirtyBitmap),
    BlockDirtyBitmapMerge(BlockDirtyBitmapMerge),
    BlockdevBackup(BlockdevBackup),
    DriveBackup(DriveBackup),
    BlockdevSnapshot(BlockdevSnapshot),
    BlockdevSnapshotSync(BlockdevSnapshotSync),
    BlockdevSnapshotInternalSync(BlockdevSnapshotInternal),
}

/// ActionCompletionMode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CompletionMode {
    Individual,
    Grouped,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TransactionProperties {
    pub completion_mode: Option<CompletionMode>,
}

#[derive(Debug, Deserialize)]
pub struct Transaction {
    pub actions: Vec<TransactionAction>,
    pub properties: Option<TransactionProperties>,
}

serde_arguments!(
    Transaction,
    [
        req("actions", Ty::Array(&Ty::Named("TransactionAction"))),
        opt("properties", Ty::Named("TransactionProperties")),
    ]
);

fn external(a: BlockdevSnapshotSync) -> ExternalSnapshot {
    ExternalSnapshot::new(Overlay::New(ExternalRequest {
        device: a.device,
        node_name: a.node_name,
        snapshot_file: a.snapshot_file,
        snapshot_node_name: a.snapshot_node_name,
        format: a.format,
        mode: a.mode.unwrap_or(NewImageMode::AbsolutePaths),
    }))
}

fn existing(a: BlockdevSnapshot) -> ExternalSnapshot {
    ExternalSnapshot::new(Overlay::Existing {
        node: a.node,
        overlay: a.overlay,
    })
}

fn action(c: &Ctx, a: TransactionAction) -> Result<Box<dyn Action>, QmpError> {
    Ok(match a {
        TransactionAction::Abort(_) => Box::new(AbortAction),
        TransactionAction::BlockDirtyBitmapAdd(b) => bitmaps::add_action(c, b)?,
        TransactionAction::BlockDirtyBitmapClear(b) => bitmaps::clear_action(b),
        TransactionAction::BlockDirtyBitmapRemove(b) => bitmaps::remove_action(b),
        TransactionAction::BlockDirtyBitmapMerge(b) => bitmaps::merge_action(b),
        TransactionAction::BlockdevBackup(b) => jobs::blockdev_backup_action(c, b)?,
        TransactionAction::DriveBackup(b) => jobs::drive_backup_action(c, b)?,
        TransactionAction::BlockdevSnapshot(s) => Box::new(existing(s)),
        TransactionAction::BlockdevSnapshotSync(s) => Box::new(external(s)),
        TransactionAction::BlockdevSnapshotInternalSync(s) => {
            Box::new(InternalSnapshot::new(s.device, s.name))
        }
    })
}

pub fn blockdev_snapshot_sync(c: &mut Ctx, a: BlockdevSnapshotSync) -> QmpResult {
    c.gw.block.transaction(vec![Box::new(external(a))], false)?;
    Ok(json!({}))
}

pub fn blockdev_snapshot(c: &mut Ctx, a: BlockdevSnapshot) -> QmpResult {
    c.gw.block.transaction(vec![Box::new(existing(a))], false)?;
    Ok(json!({}))
}

pub fn blockdev_snapshot_internal_sync(c: &mut Ctx, a: BlockdevSnapshotInternal) -> QmpResult {
    c.gw.block.transaction(
        vec![Box::new(InternalSnapshot::new(a.device, a.name))],
        false,
    )?;
    Ok(json!({}))
}

pub fn blockdev_snapshot_delete_internal_sync(c: &mut Ctx, a: SnapshotDelete) -> QmpResult {
    Ok(c.gw
        .block
        .delete_internal_snapshot(&a.device, a.id.as_deref(), a.name.as_deref())?)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChangeBackingFile {
    pub device: String,
    pub image_node_name: String,
    pub backing_file: String,
}

serde_arguments!(
    ChangeBackingFile,
    [
        req("device", Ty::Str),
        req("image-node-name", Ty::Str),
        req("backing-file", Ty::Str),
    ]
);

pub fn change_backing_file(c: &mut Ctx, a: ChangeBackingFile) -> QmpResult {
    c.gw.block
        .change_backing_file(&a.device, &a.image_node_name, &a.backing_file)?;
    Ok(json!({}))
}

pub fn transaction(c: &mut Ctx, a: Transaction) -> QmpResult {
    let grouped = a
        .properties
        .and_then(|p| p.completion_mode)
        .is_some_and(|m| m == CompletionMode::Grouped);
    let actions = a
        .actions
        .into_iter()
        .map(|a| action(c, a))
        .collect::<Result<_, _>>()?;
    c.gw.block.transaction(actions, grouped)?;
    Ok(json!({}))
}
