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

/// One action of a transaction, done on `C` (the block layer; a stand-in in tests).
pub trait Action<C: ?Sized = BlockLayer> {
    /// Its QAPI name (TransactionActionKind), for messages.
    fn kind(&self) -> &'static str;

    /// It may run under completion-mode "grouped" (QEMU: the backup actions only).
    fn supports_grouped(&self) -> bool {
        false
    }

    /// Does the action's work so that it can still be undone. On an error it may have
    /// done part of it: `abort` is called for it too.
    fn prepare(&mut self, layer: &C) -> Result<(), BlockError>;

    /// Every action prepared: the work stays.
    fn commit(&mut self, _layer: &C) {}

    /// Undoes whatever `prepare` did (all of it, or the part it got to).
    fn abort(&mut self, layer: &C);

    /// After commit or abort.
    fn clean(&mut self, _layer: &C) {}
}

/// The `abort` action: it fails its prepare, so the transaction does nothing.
pub struct AbortAction;

impl<C: ?Sized> Action<C> for AbortAction {
    fn kind(&self) -> &'static str {
        "abort"
    }

    fn prepare(&mut self, _layer: &C) -> Result<(), BlockError> {
        Err(BlockError::Snapshot(
            "Transaction aborted using Abort action".into(),
        ))
    }

    fn abort(&mut self, _layer: &C) {}
}

impl BlockLayer {
    /// Runs `actions` all or nothing; `grouped`: completion-mode "grouped".
    pub fn transaction(
        &self,
        actions: Vec<Box<dyn Action>>,
        grouped: bool,
    ) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        run(self, actions, grouped)
    }
}

/// The machinery: prepare each in turn, then commit all, or abort what was reached in
/// reverse order; clean all.
pub fn run<C: ?Sized>(
    ctx: &C,
    mut actions: Vec<Box<dyn Action<C>>>,
    grouped: bool,
) -> Result<(), BlockError> {
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
        if let Err(e) = action.prepare(ctx) {
            failure = Some(e);
            break;
        }
    }
    match &failure {
        None => actions.iter_mut().for_each(|a| a.commit(ctx)),
        Some(e) => {
            log::info!("transaction failed ({e}): undoing {reached} action(s)");
            actions[..reached]
                .iter_mut()
                .rev()
                .for_each(|a| a.abort(ctx));
        }
    }
    actions.iter_mut().for_each(|a| a.clean(ctx));
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records what the machinery asks of each action.
    #[derive(Default)]
    struct Log(RefCell<Vec<String>>);

    struct Step {
        name: &'static str,
        fails: bool,
        grouped: bool,
    }

    impl Action<Log> for Step {
        fn kind(&self) -> &'static str {
            self.name
        }
        fn supports_grouped(&self) -> bool {
            self.grouped
        }
        fn prepare(&mut self, log: &Log) -> Result<(), BlockError> {
            log.0.borrow_mut().push(format!("prepare {}", self.name));
            if self.fails {
                return Err(BlockError::Snapshot(format!("{} failed", self.name)));
            }
            Ok(())
        }
        fn commit(&mut self, log: &Log) {
            log.0.borrow_mut().push(format!("commit {}", self.name));
        }
        fn abort(&mut self, log: &Log) {
            log.0.borrow_mut().push(format!("abort {}", self.name));
        }
        fn clean(&mut self, log: &Log) {
            log.0.borrow_mut().push(format!("clean {}", self.name));
        }
    }

    fn step(name: &'static str, fails: bool) -> Box<dyn Action<Log>> {
        Box::new(Step {
            name,
            fails,
            grouped: false,
        })
    }

    #[test]
    fn all_prepared_then_all_committed() {
        let log = Log::default();
        run(&log, vec![step("a", false), step("b", false)], false).unwrap();
        assert_eq!(
            *log.0.borrow(),
            [
                "prepare a",
                "prepare b",
                "commit a",
                "commit b",
                "clean a",
                "clean b"
            ]
        );
    }

    #[test]
    fn a_failure_aborts_what_was_reached_backwards_and_the_rest_is_never_prepared() {
        let log = Log::default();
        let e = run(
            &log,
            vec![step("a", false), step("b", true), step("c", false)],
            false,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "b failed");
        assert_eq!(
            *log.0.borrow(),
            [
                "prepare a",
                "prepare b",
                "abort b",
                "abort a",
                "clean a",
                "clean b",
                "clean c"
            ]
        );
    }

    #[test]
    fn abort_and_grouped_read_like_qemu() {
        let log = Log::default();
        let e = run(&log, vec![step("a", false), Box::new(AbortAction)], false).unwrap_err();
        assert_eq!(e.to_string(), "Transaction aborted using Abort action");
        let log = Log::default();
        let grouped_ok: Box<dyn Action<Log>> = Box::new(Step {
            name: "g",
            fails: false,
            grouped: true,
        });
        let e = run(&log, vec![grouped_ok, step("a", false)], true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Action 'a' does not support Transaction property completion-mode = grouped"
        );
        assert_eq!(
            *log.0.borrow(),
            ["prepare g", "abort a", "abort g", "clean g", "clean a"]
        );
    }
}
