//! The block layer's limits: I/O throttling (block_set_io_throttle, with throttle groups
//! whose members share one state page) and write thresholds
//! (block-set-write-threshold), applied by the daemons and kept here for the next one.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use ipc::{BlockRequest, ThrottleLimits};

use super::disk::{BlockProtocol, Group};
use super::error::BlockError;
use super::throttle::{self, ThrottleRequest};
use super::{Backend, BlockLayer, DiskRef, State};

/// A call to make to a disk's daemon once the layer's lock is let go.
type DaemonCall = (
    Arc<crate::children::link::Link<BlockProtocol>>,
    BlockRequest,
    Option<OwnedFd>,
);

/// What block_set_io_throttle sets limits on: a disk, or a drive no device uses.
#[derive(Clone, Copy)]
enum Member {
    Disk(usize),
    Drive(usize),
}

impl State {
    /// The limits and group of `m`.
    fn throttle_of(&mut self, m: Member) -> &mut Option<(ThrottleLimits, String)> {
        match m {
            Member::Disk(i) => &mut self.disks[i].throttle,
            Member::Drive(i) => &mut self.drives[i].throttle,
        }
    }

    /// Forgets throttle group `group` once no disk and no drive is in it.
    pub(super) fn drop_group_if_unused(&mut self, group: &str) {
        let in_group =
            |t: &Option<(ThrottleLimits, String)>| t.as_ref().is_some_and(|(_, g)| g == group);
        let used = self.disks.iter().any(|d| in_group(&d.throttle))
            || (self.drives.iter()).any(|d| !d.attached && in_group(&d.throttle));
        if !used {
            self.groups.remove(group);
        }
    }

    /// The disks in throttle group `group`.
    pub(super) fn group_members(&self, group: &str) -> Vec<usize> {
        (0..self.disks.len())
            .filter(|i| {
                self.disks[*i]
                    .throttle
                    .as_ref()
                    .is_some_and(|(_, g)| g == group)
            })
            .collect()
    }
}

impl BlockLayer {
    /// block_set_io_throttle: the limits `request` asks for, for `disk` and the other
    /// members of `group` (default: a group of its own, named after its device). All
    /// zero: no limits. The disks' daemons are told after the layer's state changed
    /// (a daemon that starts meanwhile reads them from there).
    pub fn set_io_throttle(
        &self,
        disk: DiskRef,
        request: &ThrottleRequest,
        group: Option<&str>,
    ) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let calls = self.apply_throttle(disk, request, group)?;
        for (link, request, state) in calls {
            let fds: Vec<_> = state.iter().map(|s| s.as_fd()).collect();
            link.request(request, &fds)?;
        }
        Ok(())
    }

    /// Changes the layer's state for block_set_io_throttle; returns the calls to make
    /// to the daemons concerned (with the group's state page, for limits). As QEMU, the
    /// disk and its medium are checked before the limits.
    fn apply_throttle(
        &self,
        disk: DiskRef,
        request: &ThrottleRequest,
        group: Option<&str>,
    ) -> Result<Vec<DaemonCall>, BlockError> {
        let mut state = self.state.lock();
        let member = match state.backend(disk) {
            Some(Backend::Disk(index)) => Member::Disk(index),
            // QEMU's BlockBackend keeps them until a device comes.
            Some(Backend::Drive(index)) => Member::Drive(index),
            Some(Backend::NoMedium) => return Err(BlockError::NoMediumToThrottle),
            None => return Err(BlockError::DeviceNotFound(disk.name().to_string())),
        };
        let limits = throttle::limits(request)?;
        let old_group = state.throttle_of(member).as_ref().map(|(_, g)| g.clone());
        if !limits.enabled() {
            let calls = match member {
                Member::Disk(index) => (state.disks[index].daemon.as_ref())
                    .map(|d| (d.link.clone(), BlockRequest::SetThrottle(None), None))
                    .into_iter()
                    .collect(),
                Member::Drive(_) => Vec::new(),
            };
            *state.throttle_of(member) = None;
            if let Some(g) = old_group {
                state.drop_group_if_unused(&g);
            }
            return Ok(calls);
        }
        // No group: a throttled disk keeps its group; one that was not gets a group QEMU
        // names by the disk as the command named it.
        let group = match (group, &old_group) {
            (Some(g), _) => g.to_string(),
            (None, Some(old)) => old.clone(),
            (None, None) => disk.name().to_string(),
        };
        if !state.groups.contains_key(&group) {
            let page = ipc::new_throttle_state().map_err(BlockError::ThrottleGroup)?;
            state.groups.insert(
                group.clone(),
                Group {
                    state: page,
                    limits,
                },
            );
        }
        // The new limits are the group's: every member applies them.
        *state.throttle_of(member) = Some((limits, group.clone()));
        if let Some(g) = state.groups.get_mut(&group) {
            g.limits = limits;
        }
        for d in state.drives.iter_mut().filter(|d| !d.attached) {
            if let Some((l, _)) = d.throttle.as_mut().filter(|(_, g)| *g == group) {
                *l = limits;
            }
        }
        let members = state.group_members(&group);
        let mut calls = Vec::new();
        for &i in &members {
            state.disks[i].throttle = Some((limits, group.clone()));
            // A disk whose daemon is down gets the limits when one starts.
            let (Some(d), Some(g)) = (state.disks[i].daemon.as_ref(), state.groups.get(&group))
            else {
                continue;
            };
            let page = g.state.try_clone().map_err(BlockError::ThrottleGroup)?;
            calls.push((
                d.link.clone(),
                BlockRequest::SetThrottle(Some(g.limits)),
                Some(page),
            ));
        }
        if let Some(old) = old_group.filter(|g| *g != group) {
            state.drop_group_if_unused(&old);
        }
        Ok(calls)
    }

    /// block-set-write-threshold: BLOCK_WRITE_THRESHOLD once a write to `node` goes
    /// past `bytes` (0: none).
    pub fn set_write_threshold(&self, node: &str, bytes: u64) -> Result<(), BlockError> {
        let _changes = self.changes.lock();
        let link = {
            let state = self.state.lock();
            if state.graph.node(node).is_none() {
                return Err(BlockError::NoThresholdNode(node.to_string()));
            }
            state
                .disk_of_node(node)
                .and_then(|d| d.daemon.as_ref())
                .map(|d| d.link.clone())
        };
        if let Some(link) = link {
            link.request(
                BlockRequest::SetWriteThreshold {
                    node_name: node.to_string(),
                    bytes,
                },
                &[],
            )?;
        }
        let mut thresholds = self.thresholds.lock();
        if bytes == 0 {
            thresholds.remove(node);
        } else {
            thresholds.insert(node.to_string(), bytes);
        }
        Ok(())
    }
}
