//! The dirty bitmap commands: arguments typed here (they are also the transaction
//! actions' data), the work in block/bitmaps.rs.

use serde::Deserialize;
use serde_json::json;

use crate::block::bitmaps::{
    AddBitmapAction, ClearBitmapAction, MergeBitmapAction, MergeSource, NewBitmap,
    RemoveBitmapAction,
};
use crate::block::transaction::Action;
use crate::qmp::args::{shared_members, Int};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::types::{BITMAP_ADD_MEMBERS, BITMAP_MEMBERS, BITMAP_MERGE_MEMBERS};

#[derive(Debug, Clone, Deserialize)]
pub struct BlockDirtyBitmapAdd {
    pub node: String,
    pub name: String,
    /// A uint32 (the checker holds it there).
    pub granularity: Option<Int>,
    pub persistent: Option<bool>,
    pub disabled: Option<bool>,
}

shared_members!(BlockDirtyBitmapAdd, BITMAP_ADD_MEMBERS);

impl BlockDirtyBitmapAdd {
    fn new_bitmap(self) -> NewBitmap {
        NewBitmap {
            node: self.node,
            name: self.name,
            granularity: self.granularity.and_then(|g| g.as_u64()),
            persistent: self.persistent.unwrap_or(false),
            disabled: self.disabled.unwrap_or(false),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlockDirtyBitmap {
    pub node: String,
    pub name: String,
}

shared_members!(BlockDirtyBitmap, BITMAP_MEMBERS);

/// BlockDirtyBitmapOrStr: a bitmap of the target's node by its name, or of any node.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BitmapOrStr {
    Local(String),
    External(BlockDirtyBitmap),
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlockDirtyBitmapMerge {
    pub node: String,
    pub target: String,
    pub bitmaps: Vec<BitmapOrStr>,
}

shared_members!(BlockDirtyBitmapMerge, BITMAP_MERGE_MEMBERS);

impl BlockDirtyBitmapMerge {
    fn sources(&self) -> Vec<MergeSource> {
        (self.bitmaps.iter())
            .map(|b| match b {
                BitmapOrStr::Local(name) => MergeSource::Local(name.clone()),
                BitmapOrStr::External(b) => MergeSource::External {
                    node: b.node.clone(),
                    name: b.name.clone(),
                },
            })
            .collect()
    }
}

/// The transaction action block-dirty-bitmap-merge.
pub fn merge_action(a: BlockDirtyBitmapMerge) -> Box<dyn Action> {
    let sources = a.sources();
    Box::new(MergeBitmapAction::new(a.node, a.target, sources))
}

pub fn block_dirty_bitmap_merge(c: &mut Ctx, a: BlockDirtyBitmapMerge) -> QmpResult {
    c.gw.block
        .dirty_bitmap_merge(&a.node, &a.target, &a.sources())?;
    Ok(json!({}))
}

/// The transaction action block-dirty-bitmap-add; its memfd is charged to the client.
pub fn add_action(c: &Ctx, a: BlockDirtyBitmapAdd) -> Result<Box<dyn Action>, QmpError> {
    let charge = c.charge_fds(1)?;
    Ok(Box::new(AddBitmapAction::new(a.new_bitmap(), Some(charge))))
}

/// The transaction action block-dirty-bitmap-clear.
pub fn clear_action(a: BlockDirtyBitmap) -> Box<dyn Action> {
    Box::new(ClearBitmapAction::new(a.node, a.name))
}

/// The transaction action block-dirty-bitmap-remove.
pub fn remove_action(a: BlockDirtyBitmap) -> Box<dyn Action> {
    Box::new(RemoveBitmapAction::new(a.node, a.name))
}

pub fn block_dirty_bitmap_add(c: &mut Ctx, a: BlockDirtyBitmapAdd) -> QmpResult {
    let charge = c.charge_fds(1)?;
    c.gw.block.dirty_bitmap_add(&a.new_bitmap(), Some(charge))?;
    Ok(json!({}))
}

pub fn block_dirty_bitmap_remove(c: &mut Ctx, a: BlockDirtyBitmap) -> QmpResult {
    c.gw.block.dirty_bitmap_remove(&a.node, &a.name)?;
    Ok(json!({}))
}

pub fn block_dirty_bitmap_clear(c: &mut Ctx, a: BlockDirtyBitmap) -> QmpResult {
    c.gw.block.dirty_bitmap_clear(&a.node, &a.name)?;
    Ok(json!({}))
}
