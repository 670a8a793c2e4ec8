//! The block layer as the host of iothread objects (objects::IoThreadHost): it starts
//! an iothread's waiting daemon, hands it to the first disk placed on the iothread,
//! finds the thread that serves it, and stops it with the object (iothreads.rs says why
//! an iothread is a block daemon's I/O thread).

use std::time::{Duration, Instant};

use super::iothreads::{io_thread_of, HostThread, IoThreadError, MAX_IOTHREADS, THREAD_START};
use super::BlockLayer;
use crate::children::spare::Spare;
use crate::objects::IoThreadHost;

impl BlockLayer {
    /// A new iothread `id`: its block daemon started, waiting for a disk.
    pub fn iothread_add(&self, id: &str) -> Result<(), IoThreadError> {
        let mut threads = self.iothreads.lock();
        if threads.waiting.len() >= MAX_IOTHREADS {
            return Err(IoThreadError::TooMany);
        }
        let daemon = self.iothread_daemon(id)?;
        threads.waiting.insert(id.to_string(), Some(daemon));
        Ok(())
    }

    /// Iothread `id` is deleted (no disk is on it): its daemon, if one waits, is stopped.
    pub fn iothread_del(&self, id: &str) {
        let daemon = self.iothreads.lock().waiting.remove(id);
        // Killed and reaped (it holds nothing), outside the lock.
        drop(daemon);
    }

    /// The thread of iothread `id`: its waiting daemon's I/O thread, or that of the
    /// daemon of the first disk on it whose daemon runs.
    pub fn iothread_thread(&self, id: &str) -> Option<HostThread> {
        if let Some(Some(spare)) = self.iothreads.lock().waiting.get(id) {
            return io_thread_of(spare.pid());
        }
        let state = self.state.lock();
        state
            .disks
            .iter()
            .filter(|d| d.iothread.as_deref() == Some(id))
            .find_map(|d| io_thread_of(d.daemon.as_ref()?.pid()?))
    }

    /// The daemon waiting on iothread `id`, for the disk placed on it now (None: the
    /// iothread already serves a disk, or its daemon ended; the disk gets one of its own).
    pub(super) fn take_iothread_daemon(&self, id: &str) -> Option<Spare> {
        let mut threads = self.iothreads.lock();
        let mut spare = threads.waiting.get_mut(id)?.take()?;
        spare.waiting().then_some(spare)
    }

    /// Iothread `id` has no disk any more (the last one left, or the one that would have
    /// been the first failed to come): a new daemon waits for the next one.
    pub(super) fn iothread_unused(&self, id: &str) {
        let on_it = (self.state.lock().disks.iter()).any(|d| d.iothread.as_deref() == Some(id));
        if on_it {
            return;
        }
        let mut threads = self.iothreads.lock();
        let Some(slot) = threads.waiting.get_mut(id) else {
            return;
        };
        if slot.is_some() {
            return;
        }
        match self.iothread_daemon(id) {
            Ok(daemon) => *slot = Some(daemon),
            // Not listed until a disk comes: it has no thread.
            Err(e) => log::warn!("{e}"),
        }
    }

    /// Stops every iothread's waiting daemon (the gateway ends).
    pub(super) fn iothreads_shutdown(&self) {
        let all = std::mem::take(&mut self.iothreads.lock().waiting);
        drop(all);
    }

    /// A daemon for iothread `id`, once its I/O thread is there (the iothread is listed
    /// from its object-add's answer on).
    fn iothread_daemon(&self, id: &str) -> Result<Spare, IoThreadError> {
        let mut spare =
            Spare::spawn(&self.daemon_binary, self.hooks.sandbox.mode).map_err(|error| {
                IoThreadError::Start {
                    id: id.to_string(),
                    error,
                }
            })?;
        let deadline = Instant::now() + THREAD_START;
        while io_thread_of(spare.pid()).is_none() {
            if !spare.waiting() {
                return Err(IoThreadError::Ended(id.to_string()));
            }
            if Instant::now() > deadline {
                return Err(IoThreadError::NoThread(id.to_string()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(spare)
    }
}

impl IoThreadHost for BlockLayer {
    fn start(&self, id: &str) -> Result<(), String> {
        self.iothread_add(id).map_err(|e| e.to_string())
    }

    fn stop(&self, id: &str) {
        self.iothread_del(id)
    }
}
