//! The destination's side of block migration. The DISKS record is checked (once, before
//! any disk data) and handed to the gateway (`AgentEvent::DisksArriving`), which checks
//! the disks against this VM's, makes them writable and answers with their disk
//! channels (`AgentRequest::DiskSinks`, delivered here through `SinkSlot`); nothing more
//! is read from the stream meanwhile. Then each DISK_DATA and DISK_ZERO record is
//! checked against the disk's size and written through its daemon, and before the VM's
//! state goes to the gateway every disk is flushed.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use ipc::disk_channel::{Client, MAX_IO};
use ipc::{AgentEvent, MigratedDisks};
use parking_lot::{Condvar, Mutex};

use super::{channel, channel_error};

/// How long the gateway may take to ready the disks (their daemons are restarted).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The gateway's answer to `DisksArriving`: the disks' channels, or why not.
type Ready = Result<Vec<OwnedFd>, String>;

/// The gateway's answer, from the control thread to the receiver.
#[derive(Clone, Default)]
pub struct SinkSlot(Arc<(Mutex<Option<Ready>>, Condvar)>);

impl SinkSlot {
    /// The gateway answered: the disks' channels, in the order the event named them,
    /// or why the disks cannot be written here.
    pub fn fill(&self, answer: Ready) {
        *self.0 .0.lock() = Some(answer);
        self.0 .1.notify_all();
    }

    fn wait(&self, timeout: Duration) -> Option<Ready> {
        let mut slot = self.0 .0.lock();
        if slot.is_none() {
            self.0 .1.wait_for(&mut slot, timeout);
        }
        slot.take()
    }
}

struct Sink {
    index: u32,
    size: u64,
    client: Client<UnixStream>,
}

/// The disks this migration writes (none until a DISKS record came).
pub struct DiskSinks {
    slot: SinkSlot,
    disks: Mutex<Option<Vec<Sink>>>,
    buf: Mutex<Vec<u8>>,
}

impl DiskSinks {
    pub fn new(slot: SinkSlot) -> DiskSinks {
        DiskSinks {
            slot,
            disks: Mutex::new(None),
            buf: Mutex::new(Vec::new()),
        }
    }

    /// A DISKS record: the gateway is asked to ready them, and answers (Err: why not,
    /// which the source hears as the destination's refusal).
    pub fn arriving(
        &self,
        disks: MigratedDisks,
        event: &impl Fn(AgentEvent),
    ) -> Result<(), String> {
        if self.disks.lock().is_some() {
            return Err("malformed migration stream: a second DISKS record".into());
        }
        let listed = disks.disks.clone();
        event(AgentEvent::DisksArriving(disks));
        let fds = match self.slot.wait(READY_TIMEOUT) {
            Some(answer) => answer?,
            None => {
                return Err(format!(
                    "the disks were not ready within {} s",
                    READY_TIMEOUT.as_secs()
                ))
            }
        };
        if fds.len() != listed.len() {
            return Err(format!(
                "{} disk channels for {} disks",
                fds.len(),
                listed.len()
            ));
        }
        let sinks = listed
            .iter()
            .zip(fds)
            .map(|(d, fd)| {
                Ok(Sink {
                    index: d.index,
                    size: d.size,
                    client: channel(fd).map_err(|e| channel_error(d.index, e.into()))?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        *self.disks.lock() = Some(sinks);
        Ok(())
    }

    /// The disk a record names, its range checked against the DISKS record.
    fn sink(
        disks: &Option<Vec<Sink>>,
        disk: u32,
        offset: u64,
        len: u64,
    ) -> Result<&Sink, SinkError> {
        let malformed = |why: String| Err(SinkError::Malformed(why));
        let Some(disks) = disks else {
            return malformed(format!("disk {disk}'s data before the DISKS record"));
        };
        let Some(s) = disks.iter().find(|s| s.index == disk) else {
            return malformed(format!(
                "data for disk {disk}, which the DISKS record does not list"
            ));
        };
        if offset.checked_add(len).is_none_or(|end| end > s.size) {
            return malformed(format!(
                "disk {disk}'s bytes {offset}+{len} lie beyond its {} bytes",
                s.size
            ));
        }
        Ok(s)
    }

    /// A DISK_DATA record's `len` bytes (at most MAX_IO: `records::read` checked),
    /// read from `input` and written to the disk.
    pub fn data(
        &self,
        disk: u32,
        offset: u64,
        len: u32,
        input: &mut impl Read,
    ) -> Result<(), SinkError> {
        let disks = self.disks.lock();
        let s = Self::sink(&disks, disk, offset, u64::from(len))?;
        let mut buf = self.buf.lock();
        buf.resize(len.min(MAX_IO) as usize, 0);
        input.read_exact(&mut buf).map_err(SinkError::Stream)?;
        s.client
            .write(offset, &buf)
            .map_err(|e| SinkError::Disk(channel_error(s.index, e)))
    }

    /// A DISK_ZERO record.
    pub fn zero(&self, disk: u32, offset: u64, len: u64) -> Result<(), SinkError> {
        let disks = self.disks.lock();
        let s = Self::sink(&disks, disk, offset, len)?;
        s.client
            .zero(offset, len)
            .map_err(|e| SinkError::Disk(channel_error(s.index, e)))
    }

    /// Everything written is made durable (before the VM may run here).
    pub fn flush(&self) -> Result<(), SinkError> {
        for s in self.disks.lock().iter().flatten() {
            s.client
                .flush()
                .map_err(|e| SinkError::Disk(channel_error(s.index, e)))?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The record does not fit the DISKS record.
    #[error("malformed migration stream: {0}")]
    Malformed(String),
    /// Reading the record's bytes from the stream failed.
    #[error(transparent)]
    Stream(std::io::Error),
    /// The disk did not take it.
    #[error("{0}")]
    Disk(String),
}

#[cfg(test)]
mod tests {
    use ipc::MigratedDisk;

    use super::*;
    use crate::disks::fake::{serve, FakeDisk};

    fn listed(disks: &[(u32, u64)]) -> MigratedDisks {
        MigratedDisks {
            incremental: false,
            zero_blocks: false,
            disks: disks
                .iter()
                .map(|&(index, size)| MigratedDisk { index, size })
                .collect(),
        }
    }

    /// Sinks whose gateway answered `answer` (before it was asked: the wait ends at
    /// once), and the events they raised.
    fn sinks(answer: Ready) -> (DiskSinks, Mutex<Vec<AgentEvent>>) {
        let slot = SinkSlot::default();
        slot.fill(answer);
        (DiskSinks::new(slot), Mutex::new(Vec::new()))
    }

    #[test]
    fn disk_records_are_written_through_the_disks() {
        let disk = FakeDisk::new(8192);
        let (s, events) = sinks(Ok(vec![serve(disk.clone())]));
        let list = listed(&[(2, 8192)]);
        s.arriving(list.clone(), &|e| events.lock().push(e))
            .unwrap();
        assert_eq!(*events.lock(), [AgentEvent::DisksArriving(list)]);
        s.data(2, 4096, 512, &mut &[7u8; 512][..]).unwrap();
        disk.lock().data[..512].fill(1);
        s.zero(2, 0, 4096).unwrap();
        s.flush().unwrap();
        let d = disk.lock();
        assert!(d.data[..4096].iter().all(|&b| b == 0));
        assert!(d.data[4096..4608].iter().all(|&b| b == 7));
        assert_eq!(d.flushes, 1);
    }

    #[test]
    fn records_that_do_not_fit_the_disks_record_are_malformed() {
        let (s, _) = sinks(Ok(vec![serve(FakeDisk::new(4096))]));
        let malformed = |r: Result<(), SinkError>| match r {
            Err(SinkError::Malformed(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            malformed(s.zero(0, 0, 512)),
            "disk 0's data before the DISKS record"
        );
        s.arriving(listed(&[(0, 4096)]), &|_| {}).unwrap();
        assert_eq!(
            malformed(s.data(1, 0, 512, &mut &[0u8; 512][..])),
            "data for disk 1, which the DISKS record does not list"
        );
        assert_eq!(
            malformed(s.data(0, 3584, 1024, &mut &[0u8; 1024][..])),
            "disk 0's bytes 3584+1024 lie beyond its 4096 bytes"
        );
        assert_eq!(
            malformed(s.zero(0, u64::MAX - 511, 512)),
            format!(
                "disk 0's bytes {}+512 lie beyond its 4096 bytes",
                u64::MAX - 511
            )
        );
        assert_eq!(
            s.arriving(listed(&[(0, 4096)]), &|_| {}).unwrap_err(),
            "malformed migration stream: a second DISKS record"
        );
        // A record cut short.
        assert!(matches!(
            s.data(0, 0, 512, &mut &[0u8; 100][..]),
            Err(SinkError::Stream(_))
        ));
    }

    #[test]
    fn the_gateways_refusal_and_the_disks_own_are_reported() {
        let (s, _) = sinks(Err(
            "disk d0: the source's is 8192 bytes, this one 4096".into()
        ));
        assert_eq!(
            s.arriving(listed(&[(0, 8192)]), &|_| {}).unwrap_err(),
            "disk d0: the source's is 8192 bytes, this one 4096"
        );
        let (s, _) = sinks(Ok(Vec::new()));
        assert_eq!(
            s.arriving(listed(&[(0, 8192)]), &|_| {}).unwrap_err(),
            "0 disk channels for 1 disks"
        );
        let disk = FakeDisk::new(4096);
        disk.lock().refuse = Some("No space left on device".into());
        let (s, _) = sinks(Ok(vec![serve(disk)]));
        s.arriving(listed(&[(5, 4096)]), &|_| {}).unwrap();
        match s.zero(5, 0, 512) {
            Err(SinkError::Disk(why)) => {
                assert_eq!(why, "block migration of disk 5: No space left on device")
            }
            other => panic!("{other:?}"),
        }
    }
}
