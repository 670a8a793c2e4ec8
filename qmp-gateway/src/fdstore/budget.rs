//! The fd budget: how many fds the gateway holds on its clients' behalf (fds received with
//! SCM_RIGHTS, while a command may still take them and once getfd or add-fd kept them, the
//! backends netdev_add opens and the images blockdev-add opens), per connected client and
//! in total.
//!
//! The numbers come from RLIMIT_NOFILE at start, once the VM's own files are open and its
//! daemons run: from the limit the gateway first puts aside what it needs itself (the fds
//! open now, room to restart every daemon, room for what commands open outside the budget,
//! and each client slot's connection); the rest is the clients' total, and one client may
//! hold up to its own share of it. So accepting a client or restarting a daemon never
//! fails for lack of fds, whatever the clients hold. An fd is charged when it arrives and
//! given back when it is closed (the charge goes with the fd), so the count cannot drift.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::error::FdError;

/// The gateway's own fds per client connection: the socket, and the handles its reader
/// and writer keep.
pub const FDS_PER_CONNECTION: usize = 3;
/// Room to restart one daemon: the new control socket pair, the spawn's pipes, vmm-core's
/// new connection, and the old daemon's handles until it is reaped.
pub const FDS_PER_RESTART: usize = 12;
/// Room for what the gateway opens outside the budget: a snapshot's overlay, a backing
/// file's format probe, the spare fd the listeners keep, log files, a restart's overlap.
/// (blockdev-add's images are charged to the client.)
pub const FDS_UNCHARGED: usize = 64;
/// The least the clients' total may be: below it, the limit is too low to serve QMP.
pub const MIN_TOTAL: usize = 16;

/// The budget's numbers, and how they were reached (the gateway logs them at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    /// The soft RLIMIT_NOFILE they come from.
    pub nofile: usize,
    /// Put aside for the gateway itself: its open fds, restarts, what is not charged, and
    /// every client slot's connection.
    pub reserved: usize,
    /// Clients served at once.
    pub clients: usize,
    /// Most fds the gateway holds for all its clients together.
    pub total: usize,
    /// Most fds one connected client makes it hold.
    pub per_client: usize,
}

/// Why the budget cannot be set: the limit leaves no room for a single client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "RLIMIT_NOFILE {nofile} is too low: the gateway needs {needed} open files for this VM \
     and one QMP client; raise it (ulimit -n)"
)]
pub struct BudgetError {
    pub nofile: usize,
    pub needed: usize,
}

impl FdLimits {
    /// The budget under a soft RLIMIT_NOFILE of `nofile`, with `open` fds open now and
    /// `devices` daemons (each may be restarted). `clients` and `per_client` are what the
    /// options ask for; fewer clients are served when the limit has no room for them all
    /// (at least one), and no client may hold more than the total.
    pub fn derive(
        nofile: usize,
        open: usize,
        devices: usize,
        clients: usize,
        per_client: usize,
    ) -> Result<FdLimits, BudgetError> {
        let own = open + FDS_PER_RESTART * (devices + 1) + FDS_UNCHARGED;
        // One slot more than are served: a newcomer holds it while the client it
        // replaces (one that never negotiated) is let go.
        let connections = |clients: usize| FDS_PER_CONNECTION * (clients + 1);
        let needed = own + connections(1) + MIN_TOTAL;
        if nofile < needed {
            return Err(BudgetError { nofile, needed });
        }
        let room = nofile - own;
        let fit = (room - MIN_TOTAL) / FDS_PER_CONNECTION - 1;
        let clients = clients.clamp(1, fit);
        let reserved = own + connections(clients);
        let total = nofile - reserved;
        Ok(FdLimits {
            nofile,
            reserved,
            clients,
            total,
            per_client: per_client.clamp(1, total),
        })
    }
}

/// This process's soft RLIMIT_NOFILE, and how many fds it has open now.
pub fn process_fds() -> std::io::Result<(usize, usize)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The directory's own fd is counted too: one more than the rest.
    let open = std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1);
    Ok((usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX), open))
}

/// The budget: its limits and what is charged to it now.
#[derive(Debug)]
pub struct FdBudget {
    limits: FdLimits,
    held: AtomicUsize,
}

/// Adds `n` to `count` unless that passes `limit`; the count before, or Err.
fn take(count: &AtomicUsize, n: usize, limit: usize) -> Result<usize, usize> {
    count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
        held.checked_add(n).filter(|after| *after <= limit)
    })
}

impl FdBudget {
    pub fn new(limits: FdLimits) -> Arc<FdBudget> {
        Arc::new(FdBudget {
            limits,
            held: AtomicUsize::new(0),
        })
    }

    pub fn limits(&self) -> FdLimits {
        self.limits
    }

    /// Fds charged now, all clients together.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// A new client's account.
    pub fn account(self: &Arc<Self>) -> Account {
        Account {
            budget: self.clone(),
            held: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// One client's account with the budget: what it makes the gateway hold while it is
/// connected. (What it leaves behind, fd sets and netdevs, stays charged to the total.)
pub struct Account {
    budget: Arc<FdBudget>,
    held: Arc<AtomicUsize>,
}

impl Account {
    /// Charges `n` fds to this client and to the total, or says which limit they pass.
    pub fn charge(&self, n: usize) -> Result<Charge, FdError> {
        let limits = self.budget.limits;
        take(&self.held, n, limits.per_client)
            .map_err(|_| FdError::ClientLimit(limits.per_client))?;
        if take(&self.budget.held, n, limits.total).is_err() {
            self.held.fetch_sub(n, Ordering::SeqCst);
            return Err(FdError::GatewayLimit(limits.total));
        }
        Ok(Charge {
            n,
            budget: self.budget.clone(),
            client: self.held.clone(),
        })
    }

    /// `fd`, charged; or the error, and `fd` is closed.
    pub fn hold(&self, fd: OwnedFd) -> Result<HeldFd, FdError> {
        Ok(HeldFd {
            fd,
            _charge: Some(self.charge(1)?),
        })
    }

    /// Room for up to `max` fds about to be received: as many as both limits allow now.
    /// The kernel installs no more fds than that in the gateway (the rest of a message's
    /// fds it closes), so the gateway does not hold fds it has not charged.
    pub fn reserve(&self, max: usize) -> Reservation {
        let limits = self.budget.limits;
        let room = |held: usize, limit: usize, want: usize| want.min(limit.saturating_sub(held));
        let before = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                Some(h + room(h, limits.per_client, max))
            })
            .unwrap_or_else(|h| h);
        let for_client = room(before, limits.per_client, max);
        let before = self
            .budget
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                Some(h + room(h, limits.total, for_client))
            })
            .unwrap_or_else(|h| h);
        let n = room(before, limits.total, for_client);
        self.held.fetch_sub(for_client - n, Ordering::SeqCst);
        let short = if n < for_client {
            Some(FdError::GatewayLimit(limits.total))
        } else if for_client < max {
            Some(FdError::ClientLimit(limits.per_client))
        } else {
            None
        };
        Reservation {
            charge: Charge {
                n,
                budget: self.budget.clone(),
                client: self.held.clone(),
            },
            short,
        }
    }

    /// Fds this client makes the gateway hold now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

/// Room reserved for the fds of one read; what is not used is given back when dropped.
pub struct Reservation {
    charge: Charge,
    /// Why less than asked for was reserved.
    short: Option<FdError>,
}

impl Reservation {
    /// How many fds may be received.
    pub fn room(&self) -> usize {
        self.charge.n
    }

    /// The fds received (at most `room`), each with its charge; and, when the sender's
    /// other fds were dropped for lack of room in the budget, why.
    pub fn hold(mut self, fds: Vec<OwnedFd>, dropped: bool) -> (Vec<HeldFd>, Option<FdError>) {
        let mut held = Vec::with_capacity(fds.len());
        for fd in fds {
            match self.charge.split_one() {
                Some(charge) => held.push(HeldFd {
                    fd,
                    _charge: Some(charge),
                }),
                // One more than an odd room (the control buffer's padding has space for
                // it): closed at once, not held; the uncharged room covers the moment.
                None => drop(fd),
            }
        }
        (held, self.short.take().filter(|_| dropped))
    }
}

/// Fds charged to a client and to the total, given back when dropped.
#[derive(Debug)]
pub struct Charge {
    n: usize,
    budget: Arc<FdBudget>,
    client: Arc<AtomicUsize>,
}

impl Charge {
    /// One of this charge's fds, as a charge of its own.
    fn split_one(&mut self) -> Option<Charge> {
        self.n = self.n.checked_sub(1)?;
        Some(Charge {
            n: 1,
            budget: self.budget.clone(),
            client: self.client.clone(),
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.client.fetch_sub(self.n, Ordering::SeqCst);
        self.budget.held.fetch_sub(self.n, Ordering::SeqCst);
    }
}

/// An fd a client handed the gateway, with its charge: closing it gives the charge back.
#[derive(Debug)]
pub struct HeldFd {
    fd: OwnedFd,
    /// None for the VM's own (the command line's --add-fd): charged to no client.
    _charge: Option<Charge>,
}

impl HeldFd {
    /// The VM's own fd (the command line's), charged to no client.
    pub fn uncharged(fd: OwnedFd) -> HeldFd {
        HeldFd { fd, _charge: None }
    }

    /// The fd itself, its charge given back (it becomes something bounded otherwise:
    /// a QMP client's connection).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// A duplicate, for another process (not charged: it is sent and closed at once).
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl AsFd for HeldFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for HeldFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A budget of `total` fds, `per_client` per client.
    pub(crate) fn budget(total: usize, per_client: usize) -> Arc<FdBudget> {
        FdBudget::new(FdLimits {
            nofile: 0,
            reserved: 0,
            clients: 1,
            total,
            per_client,
        })
    }

    pub(crate) fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn the_numbers_come_from_the_limit() {
        // 20000 open files, 20 open, one disk, 256 clients asked for, 256 fds each.
        let l = FdLimits::derive(20000, 20, 1, 256, 256).unwrap();
        let own = 20 + FDS_PER_RESTART * 2 + FDS_UNCHARGED;
        assert_eq!(l.clients, 256);
        assert_eq!(l.reserved, own + FDS_PER_CONNECTION * 257);
        assert_eq!(l.total, 20000 - l.reserved);
        assert_eq!(l.per_client, 256);
        // 1024: the clients still fit, the total is what is left.
        let l = FdLimits::derive(1024, 20, 1, 256, 256).unwrap();
        assert_eq!((l.clients, l.total), (256, 1024 - own - 3 * 257));
        assert_eq!(l.per_client, 256.min(l.total));
        // 512: fewer clients, and the total keeps its least.
        let l = FdLimits::derive(512, 20, 1, 256, 256).unwrap();
        assert!(l.clients < 256 && l.clients >= 1, "{l:?}");
        assert!(l.total >= MIN_TOTAL && l.per_client <= l.total, "{l:?}");
        assert!(l.reserved + l.total == 512);
        // Too low for one client.
        let e = FdLimits::derive(100, 20, 1, 256, 256).unwrap_err();
        assert_eq!(e.needed, own + 2 * FDS_PER_CONNECTION + MIN_TOTAL);
        assert_eq!(
            e.to_string(),
            format!(
                "RLIMIT_NOFILE 100 is too low: the gateway needs {} open files for this VM \
                 and one QMP client; raise it (ulimit -n)",
                e.needed
            )
        );
        // Exactly enough.
        let l = FdLimits::derive(e.needed, 20, 1, 256, 256).unwrap();
        assert_eq!((l.clients, l.total), (1, MIN_TOTAL));
    }

    #[test]
    fn charges_are_bounded_per_client_and_in_total_and_given_back() {
        let b = budget(5, 3);
        let (one, two) = (b.account(), b.account());
        let kept: Vec<HeldFd> = (0..3).map(|_| one.hold(devnull()).unwrap()).collect();
        assert_eq!(
            one.hold(devnull()).unwrap_err().to_string(),
            "Too many file descriptors: this client holds 3, its limit (closefd, remove-fd, \
             netdev_del or blockdev-del give some back)"
        );
        let more = two.charge(2).unwrap();
        assert!(matches!(two.charge(1), Err(FdError::GatewayLimit(5))));
        // A refusal by the total gives the client's count back.
        assert_eq!((one.held(), two.held(), b.held()), (3, 2, 5));
        drop(kept);
        assert_eq!((one.held(), b.held()), (0, 2));
        assert!(two.hold(devnull()).is_ok());
        drop(more);
        assert_eq!(b.held(), 0);
        // A charge outlives its client's account (fd sets, netdevs).
        let left = one.charge(1).unwrap();
        drop(one);
        assert_eq!(b.held(), 1);
        drop(left);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn reservations_take_what_the_limits_allow_and_give_back_the_rest() {
        let b = budget(6, 4);
        let (one, two) = (b.account(), b.account());
        let r = one.reserve(16);
        assert_eq!(r.room(), 4);
        let (held, why) = r.hold(vec![devnull(), devnull()], true);
        assert_eq!(held.len(), 2);
        assert!(matches!(why, Some(FdError::ClientLimit(4))), "{why:?}");
        // The unused room went back.
        assert_eq!((one.held(), b.held()), (2, 2));
        let r = two.reserve(16);
        assert_eq!(r.room(), 4);
        let (more, why) = r.hold((0..4).map(|_| devnull()).collect(), false);
        assert!(why.is_none(), "nothing was dropped");
        assert_eq!(b.held(), 6);
        // The total is spent: nothing can be received, and the reason is the total's.
        let r = one.reserve(16);
        assert_eq!(r.room(), 0);
        let (none, why) = r.hold(Vec::new(), true);
        assert!(none.is_empty());
        assert!(matches!(why, Some(FdError::GatewayLimit(6))), "{why:?}");
        assert_eq!((one.held(), two.held(), b.held()), (2, 4, 6));
        drop((held, more));
        assert_eq!(b.held(), 0);
        assert_eq!(one.reserve(3).room(), 3);
        assert_eq!(b.held(), 0, "an unused reservation gives everything back");
    }
}
