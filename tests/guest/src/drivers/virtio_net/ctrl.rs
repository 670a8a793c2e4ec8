//! The virtio-net control queue ([`CtrlQueue`]): one command at a time, polled: class and
//! command (device-readable), the command's data parts (one descriptor each,
//! device-readable), the ack byte (device-writable).

use super::spec::NET;
use crate::arch::{cpu, memory, tsc};
use crate::drivers::virtio::transport::{Transport, F_EVENT_IDX};
use crate::drivers::virtio::virtqueue::{Desc, Virtqueue, DESC_NEXT, DESC_WRITE};

const CTRL_QUEUE_SIZE: u16 = 64;
/// Written into the ack byte before submission: still there means the device never wrote it.
const CTRL_ACK_UNWRITTEN: u8 = 0xff;
const CTRL_TIMEOUT_MS: u64 = 5000;
/// Per command: class and command at 0, the data parts from CTRL_DATA, the ack at CTRL_ACK.
const CTRL_DATA: u64 = 64;
const CTRL_ACK: u64 = 4032;
const CTRL_MAX_PARTS: usize = 4;

// Volatile access to the command page: only `command` uses these, with addresses inside the
// page (DMA-pool memory this queue owns, identity mapped), while no earlier command can still
// be the device's (a timed-out one marks the queue stuck and nothing is sent again).

fn store<T>(addr: u64, value: T) {
    // SAFETY: inside the command page, not in the device's hands (see above).
    unsafe { core::ptr::write_volatile(addr as usize as *mut T, value) }
}

fn load<T: Copy>(addr: u64) -> T {
    // SAFETY: the ack byte inside the command page, after the device completed the command.
    unsafe { core::ptr::read_volatile(addr as usize as *const T) }
}

pub struct CtrlQueue {
    pub vq: Virtqueue,
    page: u64,
    /// A command timed out: its descriptors may still be the device's.
    stuck: bool,
}

impl CtrlQueue {
    /// Sets up the control queue at queue `index` (polled: no MSI-X vector) and its command
    /// page. None after an error line.
    pub fn setup(transport: &mut Transport, index: usize) -> Option<CtrlQueue> {
        let at = transport.pci;
        let event_idx = transport.has(F_EVENT_IDX);
        let vq = transport.setup_polled_queue(index as u16, CTRL_QUEUE_SIZE, event_idx)?;
        if vq.size < 2 + CTRL_MAX_PARTS as u16 {
            NET.error(at)
                .s("control queue size ")
                .dec(u64::from(vq.size))
                .s(" is below ")
                .dec(2 + CTRL_MAX_PARTS as u64)
                .end();
            return None;
        }
        let Some(page) = memory::dma_alloc(4096, 4096) else {
            NET.error(at).s("DMA pool exhausted (control queue)").end();
            return None;
        };
        Some(CtrlQueue {
            vq,
            page,
            stuck: false,
        })
    }

    /// Sends one command and polls for its completion (ring 3). Ok(ack byte) or Err(why).
    pub fn command(&mut self, class: u8, command: u8, parts: &[&[u8]]) -> Result<u8, &'static str> {
        if self.stuck {
            return Err("the control queue is stuck after an earlier timeout");
        }
        let entries = parts.len() + 2;
        if parts.len() > CTRL_MAX_PARTS || entries > usize::from(self.vq.size) {
            return Err("command has too many parts for the control queue");
        }
        let total: usize = parts.iter().map(|p| p.len().next_multiple_of(8)).sum();
        if CTRL_DATA + total as u64 > CTRL_ACK {
            return Err("command data too long");
        }
        store::<u8>(self.page, class);
        store::<u8>(self.page + 1, command);
        store::<u8>(self.page + CTRL_ACK, CTRL_ACK_UNWRITTEN);
        self.vq.set_desc(
            0,
            Desc {
                addr: self.page,
                len: 2,
                flags: DESC_NEXT,
                next: 1,
            },
        );
        let mut at = self.page + CTRL_DATA;
        for (i, part) in parts.iter().enumerate() {
            for (j, &byte) in part.iter().enumerate() {
                store::<u8>(at + j as u64, byte);
            }
            let index = i as u16 + 1;
            self.vq.set_desc(
                index,
                Desc {
                    addr: at,
                    len: part.len() as u32,
                    flags: DESC_NEXT,
                    next: index + 1,
                },
            );
            at += part.len().next_multiple_of(8) as u64;
        }
        self.vq.set_desc(
            entries as u16 - 1,
            Desc {
                addr: self.page + CTRL_ACK,
                len: 1,
                flags: DESC_WRITE,
                next: 0,
            },
        );
        self.vq.push(0);
        self.vq.kick();
        let start = cpu::rdtsc();
        let limit = tsc::from_ms(CTRL_TIMEOUT_MS);
        loop {
            if let Some((id, _)) = self.vq.pop() {
                if id != 0 {
                    self.stuck = true;
                    return Err("bogus completion on the control queue");
                }
                return match load::<u8>(self.page + CTRL_ACK) {
                    CTRL_ACK_UNWRITTEN => Err("the device did not write the ack byte"),
                    ack => Ok(ack),
                };
            }
            if cpu::rdtsc() - start > limit {
                self.stuck = true;
                return Err("no completion within 5 s");
            }
            core::hint::spin_loop();
        }
    }
}
