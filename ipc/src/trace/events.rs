//! The table of every trace event in Flotilla's processes: its name (QEMU's style), the
//! processes that have it, and what its line carries. The one list users read is this
//! table (docs/architecture.md points here; `info trace-events` prints it).

/// A Flotilla process, as trace lines name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    Gateway,
    VmmCore,
    BlockDaemon,
    NetDaemon,
    MigrationAgent,
}

impl Process {
    pub fn name(self) -> &'static str {
        match self {
            Process::Gateway => "qmp-gateway",
            Process::VmmCore => "vmm-core",
            Process::BlockDaemon => "block-daemon",
            Process::NetDaemon => "net-daemon",
            Process::MigrationAgent => "migration-agent",
        }
    }
}

/// One row of the table.
#[derive(Debug)]
pub struct EventInfo {
    pub name: &'static str,
    /// Where its trace point is (an event of vhost-backend is in both device daemons).
    pub processes: &'static [Process],
    /// The fields of its line, in order.
    pub fields: &'static str,
}

macro_rules! events {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, [$($proc:ident),+], $fields:literal;)+) => {
        /// A trace event; its number is its row in `EVENTS` and its byte in the state page.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u16)]
        pub enum Event {
            $($(#[$doc])* $variant),+
        }

        /// Every trace event, in `Event`'s order.
        pub const EVENTS: &[EventInfo] = &[
            $(EventInfo { name: $name, processes: &[$(Process::$proc),+], fields: $fields }),+
        ];
    };
}

events! {
    /// A QMP command arrives (the gateway's dispatch).
    QmpCommandEnter = "qmp_command_enter", [Gateway], "client command";
    /// A QMP command is answered: "ok" or its error class, and how long it took.
    QmpCommandExit = "qmp_command_exit", [Gateway], "client command result duration_us";
    /// The supervisor restarted a dead device daemon, or failed to.
    ChildRestart = "child_restart", [Gateway], "daemon device failures result";
    /// A migration (out or in) moved to a new status.
    MigrateSetState = "migrate_set_state", [Gateway], "state";
    /// vmm-core's vhost-user frontend sent a message to a device daemon.
    VhostUserFrontendMsg = "vhost_user_frontend_msg", [VmmCore], "request";
    /// A device daemon's vhost-user backend took a message from its frontend.
    VhostUserBackendMsg = "vhost_user_backend_msg", [BlockDaemon, NetDaemon], "request size";
    /// The guest (or the frontend) kicked a virtqueue of a device daemon.
    VirtqueueKick = "virtqueue_kick", [BlockDaemon, NetDaemon], "queue";
    /// A virtio-blk request was taken off a ring and handed to the I/O engine.
    VirtioBlkReqSubmit = "virtio_blk_req_submit", [BlockDaemon], "head type sector len";
    /// A virtio-blk request completed (len: its bytes of the image), with its status byte
    /// (0 ok, 1 I/O error, 2 unsupported).
    VirtioBlkReqComplete = "virtio_blk_req_complete", [BlockDaemon], "queue head type len status";
    /// A frame from the guest to the host side (sent or dropped).
    VirtioNetTx = "virtio_net_tx", [NetDaemon], "pair len result";
    /// A frame from the host side placed in the guest's receive buffers.
    VirtioNetRx = "virtio_net_rx", [NetDaemon], "pair len";
}

/// How many events there are (the state page holds one byte each).
pub const COUNT: usize = EVENTS.len();

impl Event {
    pub fn info(self) -> &'static EventInfo {
        &EVENTS[self as usize]
    }
}

/// Whether `name` is a pattern: QEMU 7.2 (trace_event_is_pattern) calls a name with a `*`
/// one; a `?` alone does not make one (that name is looked up as it is).
pub fn is_pattern(name: &str) -> bool {
    name.contains('*')
}

/// QEMU's pattern_glob: `*` matches any run of characters, `?` any one.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and the name position it is tried from.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The events `name` selects, in the table's order: those a pattern matches, or the one
/// so named (None: no event has that name, which is an error for a name but not for a
/// pattern).
pub fn select(name: &str) -> Option<Vec<usize>> {
    if is_pattern(name) {
        Some((0..COUNT).filter(|&i| glob(name, EVENTS[i].name)).collect())
    } else {
        EVENTS.iter().position(|e| e.name == name).map(|i| vec![i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_in_qemu_style() {
        for (i, e) in EVENTS.iter().enumerate() {
            assert!(
                e.name.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'),
                "{}",
                e.name
            );
            assert!(EVENTS[..i].iter().all(|o| o.name != e.name), "{}", e.name);
        }
        assert_eq!(Event::VirtioNetRx.info().name, "virtio_net_rx");
    }

    #[test]
    fn patterns_glob_as_qemu() {
        assert!(glob("virtio_*", "virtio_net_rx"));
        assert!(glob("*_rx", "virtio_net_rx"));
        assert!(glob("virtio_net_?x", "virtio_net_tx"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("virtio_net_?x", "virtio_net_txx"));
        assert!(!glob("virtio", "virtio_net_rx"));
        // `?` without `*` is a name, as in QEMU 7.2.
        assert!(!is_pattern("virtio_net_?x"));
        assert_eq!(select("virtio_net_?x"), None);
        assert_eq!(select("virtio_net_?x*").map(|v| v.len()), Some(2));
        assert_eq!(select("nothing*"), Some(vec![]));
        assert_eq!(select("qmp_command_exit"), Some(vec![1]));
    }
}
