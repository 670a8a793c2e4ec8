//! Writing back what a long copy (a block job's target, a block migration's
//! destination) wrote, while it goes on, so its closing flush has little left.

use std::sync::Arc;

use crate::formats::Format;

/// Bytes written between two starts of the writeback.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Starts the writeback of what a copy wrote to an image as it goes
/// (`Format::start_writeback`), on a thread of its own: the kernel would otherwise
/// keep it all in the page cache until the copy's closing flush, which then waits for
/// all of it, and starting it can wait for the device's queue, which the copy must not.
pub struct Writeback {
    poke: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    since: u64,
}

impl Writeback {
    pub fn new(target: Arc<dyn Format>) -> Writeback {
        let (poke, poked) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("job-writeback".into())
            .spawn(move || {
                while poked.recv().is_ok() {
                    // A hint: a failed write shows at the copy's flush.
                    let _ = target.start_writeback();
                }
            });
        match thread {
            Ok(t) => Writeback {
                poke: Some(poke),
                thread: Some(t),
                since: 0,
            },
            Err(e) => {
                // Only the closing flush's length is at stake.
                log::warn!("no writeback thread: {e}");
                Writeback {
                    poke: None,
                    thread: None,
                    since: 0,
                }
            }
        }
    }

    /// The copy wrote `bytes` more.
    pub fn wrote(&mut self, bytes: u64) {
        self.since += bytes;
        if self.since >= WRITEBACK_EVERY {
            self.since = 0;
            if let Some(poke) = &self.poke {
                // Full: one is being started already, which covers these bytes too.
                let _ = poke.try_send(());
            }
        }
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        self.poke = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
