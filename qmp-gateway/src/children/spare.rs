//! A device daemon started ahead of the device it will serve, so that adding the device
//! does not wait for a process start (most of a hot-added disk's device_add: taking an id
//! for the sandbox, exec, the daemon sandboxing itself). It is started and sandboxed as
//! any daemon, with nothing of a device (every device's daemon starts alike and gets its
//! device with its first call); nothing reads its control channel until
//! `Daemon::from_spare` makes it one device's daemon, once. Dropped unused, it is killed
//! and reaped (our child, by pid): it has opened nothing.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipc::Connection;
use parking_lot::Mutex;

use super::sandbox::Mode;
use super::spawn::{spawn_child, Process, SpawnError};

/// A started daemon whose first call is still to come.
pub struct Spare {
    child: Process,
    conn: Connection,
    binary: PathBuf,
    mode: Mode,
}

impl Spare {
    /// Starts `binary`, sandboxed as `mode` says.
    pub fn spawn(binary: &Path, mode: Mode) -> Result<Spare, SpawnError> {
        let (child, conn) = spawn_child(binary, &[], mode)?;
        Ok(Spare {
            child,
            conn,
            binary: binary.to_path_buf(),
            mode,
        })
    }

    /// Whether it is what starting `binary` sandboxed as `mode` would give.
    fn is(&self, binary: &Path, mode: Mode) -> bool {
        self.binary == binary && self.mode == mode
    }

    /// Its host pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still waits for its first call: running, and nothing on its control
    /// channel (a daemon that ended hung it up).
    pub fn waiting(&mut self) -> bool {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return false;
        }
        let mut channel = libc::pollfd {
            fd: self.conn.stream().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one descriptor we hold, without waiting.
        (unsafe { libc::poll(&mut channel, 1, 0) }) == 0
    }

    /// The process, its control channel and its binary, for `Daemon::from_spare`.
    pub(super) fn into_parts(self) -> (Process, Connection, PathBuf) {
        (self.child, self.conn, self.binary)
    }
}

/// How long after a spare was taken (or wanted) the next one starts: not while the device
/// just added is brought up by the guest, whose vCPU shares this host's few cores with it
/// (a start is milliseconds of CPU, in the gateway and in the new process).
const REFILL_DELAY: Duration = Duration::from_millis(20);

/// At most one spare daemon, kept ready once asked for (`keep_one`): each one taken is
/// replaced in the background.
#[derive(Default)]
pub struct Spares {
    state: Mutex<SpareState>,
}

#[derive(Default)]
struct SpareState {
    ready: Option<Spare>,
    /// What spares are started as (None: none are kept).
    wanted: Option<(PathBuf, Mode)>,
    /// A spare is being started.
    refilling: bool,
    /// No spare is started any more (the gateway ends).
    closed: bool,
}

impl Spares {
    /// The spare, if one of `binary` sandboxed as `mode` is ready; then (or if the spare
    /// had ended: it is let go of) the next one starts in the background.
    pub fn take(self: &Arc<Self>, binary: &Path, mode: Mode) -> Option<Spare> {
        let mut state = self.state.lock();
        let spare = state.ready.as_mut()?;
        if !spare.is(binary, mode) {
            return None;
        }
        let waiting = spare.waiting();
        let spare = state.ready.take();
        drop(state);
        self.refill();
        spare.filter(|_| waiting)
    }

    /// From now on one spare of `binary` sandboxed as `mode` is kept ready (started now
    /// in the background, if none is).
    pub fn keep_one(self: &Arc<Self>, binary: &Path, mode: Mode) {
        self.state.lock().wanted = Some((binary.to_path_buf(), mode));
        self.refill();
    }

    /// Lets the spare go (killed), and starts none any more.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        let spare = state.ready.take();
        drop(state);
        drop(spare);
    }

    /// Starts a spare in the background if one is wanted and none is ready or starting.
    fn refill(self: &Arc<Self>) {
        let mut state = self.state.lock();
        let Some((binary, mode)) = state.wanted.clone() else {
            return;
        };
        if state.closed || state.refilling || state.ready.is_some() {
            return;
        }
        state.refilling = true;
        drop(state);
        let spares = self.clone();
        let started = std::thread::Builder::new()
            .name("spare daemon".into())
            .spawn(move || {
                std::thread::sleep(REFILL_DELAY);
                let spare = Spare::spawn(&binary, mode);
                let mut state = spares.state.lock();
                state.refilling = false;
                match spare {
                    Ok(spare) if !state.closed && state.wanted == Some((binary, mode)) => {
                        state.ready = Some(spare)
                    }
                    // Closed, or another binary wanted meanwhile: it goes (after the lock).
                    Ok(spare) => {
                        drop(state);
                        drop(spare);
                    }
                    Err(e) => log::warn!("starting a spare daemon: {e}"),
                }
            });
        if let Err(e) = started {
            log::warn!("starting a spare daemon: {e}");
            self.state.lock().refilling = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    /// A daemon stand-in that waits (for `seconds`), whatever its arguments.
    fn script(dir: &Path, name: &str, seconds: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\nexec sleep {seconds}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// The spare ready now, once one is (within 10 s).
    fn ready(spares: &Spares) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(spare) = spares.state.lock().ready.as_ref() {
                return spare.child.id();
            }
            assert!(Instant::now() < deadline, "no spare started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    #[test]
    fn one_is_kept_ready_taken_once_and_replaced() {
        let dir = std::env::temp_dir().join(format!("flotilla-spares-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (daemon, other) = (script(&dir, "d", "60"), script(&dir, "o", "60"));
        let spares = Arc::new(Spares::default());
        assert!(
            spares.take(&daemon, Mode::Off).is_none(),
            "none until asked for"
        );
        spares.keep_one(&daemon, Mode::Off);
        let first = ready(&spares);
        // Another binary or sandbox mode does not take it.
        assert!(spares.take(&other, Mode::Off).is_none());
        assert!(spares.take(&daemon, Mode::Enforce).is_none());
        assert_eq!(ready(&spares), first);
        let taken = spares.take(&daemon, Mode::Off).expect("the spare");
        assert_eq!(taken.child.id(), first);
        let second = ready(&spares);
        assert_ne!(second, first, "another one replaces it");
        // One that ended is not given; the next one is started.
        drop(taken);
        assert!(!alive(first), "a spare let go of is killed and reaped");
        // SAFETY: signalling our own child, by pid, unreaped.
        assert_eq!(unsafe { libc::kill(second as i32, libc::SIGKILL) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while spares
            .state
            .lock()
            .ready
            .as_mut()
            .is_some_and(Spare::waiting)
        {
            assert!(Instant::now() < deadline, "the killed spare still runs");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(spares.take(&daemon, Mode::Off).is_none());
        let third = ready(&spares);
        assert!(third != first && third != second);
        // Closed: the spare goes, and none starts any more.
        spares.close();
        assert!(!alive(third));
        spares.keep_one(&daemon, Mode::Off);
        std::thread::sleep(REFILL_DELAY * 5);
        assert!(spares.state.lock().ready.is_none() && !spares.state.lock().refilling);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
