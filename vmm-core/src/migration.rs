//! vmm-core's part in a migration. On the source: dirty logging on and off, syncs of
//! KVM's log into the shared one, the stop-and-copy's stop and the device state out.
//! On the destination: guest memory's files for the agent to fill, and the device state
//! in. Guest memory itself never passes through here: the agent reads and writes RAM's
//! memfd and the DIMMs' files (the destination was launched with the same DIMMs).
//! A live upgrade uses the same state out and in, with guest RAM's memfd handed over
//! as it is (`upgrade_info`).

use std::os::fd::OwnedFd;

use ipc::{DiskLaunch, LinkShape, NicLaunch, RemoteError, VmmReply};

use crate::dirty_log::{self, DirtyLog};
use crate::vm::Vm;

/// What a request answers: the reply and the fds it carries.
pub type Answer = (Result<VmmReply, RemoteError>, Vec<OwnedFd>);

fn fail(e: impl std::fmt::Display) -> Answer {
    (Err(RemoteError::generic(e.to_string())), Vec::new())
}

/// The source's dirty logging, while a migration runs.
#[derive(Default)]
pub struct Outgoing {
    log: Option<DirtyLog>,
}

impl Outgoing {
    /// Logging on; the answer carries guest memory's files and the log's.
    pub fn start(&mut self, vm: &Vm) -> Answer {
        if self.log.is_some() {
            return fail("a migration is already in progress");
        }
        let log = match DirtyLog::start(&vm.vm, &vm.ram) {
            Ok(log) => log,
            Err(e) => return fail(e),
        };
        let fds = dirty_log::memory_files(&vm.ram).and_then(|mut fds| {
            fds.push(OwnedFd::from(log.file()?));
            Ok(fds)
        });
        let fds = match fds {
            Ok(fds) => fds,
            Err(e) => {
                let _ = log.stop(&vm.vm, &vm.ram);
                return fail(format!("handing over guest memory: {e}"));
            }
        };
        if let Err(e) = vm.set_backends_dirty_log(Some(&log)) {
            let _ = log.stop(&vm.vm, &vm.ram);
            return fail(e);
        }
        // The balloon marks the pages it gives back (and its used rings), through a
        // mapping of its own of the same log.
        if let Some(balloon) = &vm.balloon {
            let mapped = log
                .file()
                .and_then(|f| ipc::PageLog::from_fd(OwnedFd::from(f), log.log().len()));
            match mapped {
                Ok(mapped) => balloon.set_dirty_log(Some(mapped)),
                Err(e) => {
                    let _ = vm.set_backends_dirty_log(None);
                    let _ = log.stop(&vm.vm, &vm.ram);
                    return fail(format!("the dirty log for the balloon: {e}"));
                }
            }
        }
        let reply = VmmReply::Migration {
            windows: dirty_log::windows(&vm.ram),
            bitmap_len: log.log().len(),
        };
        self.log = Some(log);
        (Ok(reply), fds)
    }

    /// Whether a migration runs (dirty logging is on).
    pub fn is_active(&self) -> bool {
        self.log.is_some()
    }

    pub fn sync(&self, vm: &Vm) -> Answer {
        match &self.log {
            Some(log) => match log.sync(&vm.vm, &vm.ram) {
                Ok(pages) => (Ok(VmmReply::Dirty { pages }), Vec::new()),
                Err(e) => fail(e),
            },
            None => fail("no migration is in progress"),
        }
    }

    /// Logging off (the migration ended one way or another); harmless when it is off.
    pub fn end(&mut self, vm: &Vm) -> Answer {
        if let Some(log) = self.log.take() {
            if let Some(balloon) = &vm.balloon {
                balloon.set_dirty_log(None);
            }
            let backends = vm.set_backends_dirty_log(None);
            let kvm = log.stop(&vm.vm, &vm.ram).map_err(|e| e.to_string());
            if let Err(e) = backends.and(kvm) {
                return fail(e);
            }
        }
        (Ok(VmmReply::Done), Vec::new())
    }
}

/// The destination's guest memory for the agent to write into.
pub fn incoming_memory(vm: &Vm) -> Answer {
    match dirty_log::memory_files(&vm.ram) {
        Ok(fds) => (
            Ok(VmmReply::Memory {
                windows: dirty_log::windows(&vm.ram),
            }),
            fds,
        ),
        Err(e) => fail(format!("handing over guest memory: {e}")),
    }
}

/// Before a live upgrade: the devices' shapes, and guest RAM's memfd for the vmm-core
/// that takes over (the DIMMs' memory the gateway holds, and launches it with).
pub fn upgrade_info(vm: &Vm) -> Answer {
    match vm.ram.memfd().try_clone() {
        Ok(ram) => (
            Ok(VmmReply::Upgrade {
                links: vm.link_shapes(),
            }),
            vec![OwnedFd::from(ram)],
        ),
        Err(e) => fail(format!("handing over guest memory: {e}")),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the live upgrade hands over {shapes} device shape(s) for {devices} device(s)")]
pub struct ShapeCount {
    shapes: usize,
    devices: usize,
}

/// A live upgrade's device shapes, as the previous vmm-core gave them (`upgrade_info`:
/// the disks then the NICs, each by ascending index), for the disks and the NICs of
/// the new vmm-core's launch, in the launch's order (whatever that is).
pub fn upgrade_shapes(
    disks: &[DiskLaunch],
    nics: &[NicLaunch],
    shapes: Vec<LinkShape>,
) -> Result<(Vec<LinkShape>, Vec<LinkShape>), ShapeCount> {
    if shapes.len() != disks.len() + nics.len() {
        return Err(ShapeCount {
            shapes: shapes.len(),
            devices: disks.len() + nics.len(),
        });
    }
    // Each device's place among its kind by index.
    let ranks = |indexes: Vec<u32>| {
        let mut sorted = indexes.clone();
        sorted.sort_unstable();
        (indexes.iter())
            .map(|i| sorted.partition_point(|s| s < i))
            .collect::<Vec<_>>()
    };
    let disk_ranks = ranks(disks.iter().map(|d| d.index).collect());
    let nic_ranks = ranks(nics.iter().map(|n| n.index).collect());
    let pick = |at: usize| shapes[at].clone();
    Ok((
        disk_ranks.into_iter().map(pick).collect(),
        nic_ranks
            .into_iter()
            .map(|r| pick(disks.len() + r))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(index: u32) -> DiskLaunch {
        DiskLaunch {
            index,
            slot: None,
            id: format!("d{index}"),
            qdev_id: String::new(),
            max_queues: 1,
        }
    }

    fn nic(index: u32) -> NicLaunch {
        NicLaunch {
            index,
            slot: None,
            id: format!("n{index}"),
            qdev_id: String::new(),
            mac: [0; 6],
            queue_pairs: 1,
        }
    }

    /// Shape `n`, told apart by its queue count.
    fn shape(n: u32) -> LinkShape {
        LinkShape {
            backend_features: 0,
            protocol_features: 0,
            num_queues: n,
            config: Vec::new(),
        }
    }

    #[test]
    fn each_device_gets_the_shape_of_its_index_whatever_the_launch_order() {
        // The old vmm-core had disks 0, 3, 5 (1, 2, 4 removed) and NICs 2, 7.
        let shapes = (0..5).map(shape).collect();
        let (disks, nics) =
            upgrade_shapes(&[disk(5), disk(0), disk(3)], &[nic(7), nic(2)], shapes).unwrap();
        let queues = |s: Vec<LinkShape>| s.iter().map(|s| s.num_queues).collect::<Vec<_>>();
        assert_eq!(queues(disks), [2, 0, 1]);
        assert_eq!(queues(nics), [4, 3]);
    }

    #[test]
    fn a_shape_for_each_device() {
        let e = upgrade_shapes(&[disk(0)], &[nic(0)], vec![shape(1)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the live upgrade hands over 1 device shape(s) for 2 device(s)"
        );
        assert!(upgrade_shapes(&[disk(0)], &[], vec![shape(1), shape(2)]).is_err());
        assert!(upgrade_shapes(&[], &[], Vec::new()).unwrap().0.is_empty());
    }
}
