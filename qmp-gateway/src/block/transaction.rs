//! The transaction machinery (QMP `transaction`, and every single snapshot command,
//! which runs as a transaction of one action as QEMU's do): each action is prepared in
//! turn (checked, files created, the daemons told), and only when all are, committed;
//! when one fails, every action prepared so far (the failing one too, which undoes its
//! own partial work) is aborted in reverse order, so images, the graph and the daemons
//! are as before and files the transaction created are gone. Every action is cleaned
//! last. Held under the block layer's `changes` lock throughout.
//!
//! New kinds of action (backups, dirty bitmaps) implement [`Action`].

use super::error::BlockError;
use super::BlockLayer;

/// One action of a transaction.
pub trait Action {
    /// Its QAPI name (TransactionActionKind), for messages.
    fn kind(&self) -> &'static str;

    /// It may run under completion-mode "grouped" (QEMU: the backup actions only).
    fn supports_grouped(&self) -> bool {
        false
    }

    /// Does the action's work so that it can still be undone. On an error it may have
    /// done part of it: `abort` is called for it too.
    fn prepare(&mut self, layer: &BlockLayer) -> Result<(), BlockError>;

    /// Every action prepared: the work stays.
    fn commit(&mut self, _layer: &BlockLayer) {}

    /// Undoes whatever `prepare` did (all of it, or the part it got to).
    fn abort(&mut self, layer: &BlockLayer);

    /// After commit or abort.
    fn clean(&mut self, _layer: &BlockLayer) {}
}

/// The `abort` action: it fails its prepare, so the transaction does nothing.
pub struct AbortAction;

impl Action for AbortAction {
    fn kind(&self) -> &'static str {
        "abort"
    }

    fn prepare(&mut self, _layer: &BlockLayer) -> Result<(), BlockError> {
        Err(BlockError::Snapshot(
            "Transaction aborted using Abort action".into(),
        ))
    }

    fn abort(&mut self, _layer: &BlockLayer) {}
}

impl BlockLayer {
    /// Runs `actions` all or nothing; `grouped`: completion-mode "grouped".
    pub fn transaction(
        &self,
        mut actions: Vec<Box<dyn Action>>,
        grouped: bool,
    ) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let mut failure = None;
        let mut reached = 0;
        for action in actions.iter_mut() {
            reached += 1;
            if grouped && !action.supports_grouped() {
                failure = Some(BlockError::Snapshot(format!(
                    "Action '{}' does not support Transaction property completion-mode = grouped",
                    action.kind()
                )));
                break;
            }
            if let Err(e) = action.prepare(self) {
                failure = Some(e);
                break;
            }
        }
        match &failure {
            None => actions.iter_mut().for_each(|a| a.commit(self)),
            Some(e) => {
                log::info!("transaction failed ({e}): undoing {reached} action(s)");
                actions[..reached]
                    .iter_mut()
                    .rev()
                    .for_each(|a| a.abort(self));
            }
        }
        actions.iter_mut().for_each(|a| a.clean(self));
        failure.map_or(Ok(()), Err)
    }
}
