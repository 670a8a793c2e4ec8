//! A virtio-pci function's MSI-X table: one vector per queue plus one for configuration
//! changes. Each vector is an eventfd; while the vector is live (MSI-X enabled, function
//! and entry unmasked, an address set) KVM turns a write to it into the entry's message
//! (an irqfd on a GSI routed to that message), so a device daemon interrupts the guest
//! without any vmm-core thread. A masked vector's interrupts wait in its eventfd (the
//! PBA reports them) until the irqfd is registered again.

use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::interrupts::{MsiMessage, MsiRouter};

/// Bits of the MSI-X capability's message control word.
pub const MSIX_ENABLE: u16 = 1 << 15;
pub const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes per table entry: address low, address high, data, vector control.
const ENTRY_SIZE: u64 = 16;
/// A table entry at power-on: no message, masked.
const MASKED_ENTRY: [u32; 4] = [0, 0, 0, 1];

struct Vector {
    gsi: u32,
    entry: [u32; 4],
    irqfd_on: bool,
}

pub struct MsixTable {
    vectors: Vec<Vector>,
    /// Shared with the configuration-change handle, which writes the config vector's.
    eventfds: Arc<Vec<EventFd>>,
    router: Arc<MsiRouter>,
}

impl MsixTable {
    /// `count` vectors, each with its GSI and eventfd, all masked.
    pub fn new(count: usize, router: Arc<MsiRouter>) -> std::io::Result<MsixTable> {
        let eventfds = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        let vectors = (0..count)
            .map(|_| Vector {
                gsi: router.allocate_gsi(),
                entry: MASKED_ENTRY,
                irqfd_on: false,
            })
            .collect();
        Ok(MsixTable {
            vectors,
            eventfds: Arc::new(eventfds),
            router,
        })
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The table's size in BAR bytes.
    pub fn table_size(&self) -> u64 {
        ENTRY_SIZE * self.vectors.len() as u64
    }

    pub fn eventfds(&self) -> &Arc<Vec<EventFd>> {
        &self.eventfds
    }

    /// Makes vector `v`'s irqfd and route match its table entry and the masks in the
    /// capability's `control` word.
    pub fn sync(&mut self, v: usize, control: u16) {
        let Some(vec) = self.vectors.get_mut(v) else {
            return;
        };
        let address = u64::from(vec.entry[0]) | (u64::from(vec.entry[1]) << 32);
        let live = control & MSIX_ENABLE != 0
            && control & MSIX_FUNCTION_MASK == 0
            && vec.entry[3] & 1 == 0
            && address != 0;
        let fd = &self.eventfds[v];
        if live {
            let msg = MsiMessage {
                address,
                data: vec.entry[2],
            };
            if let Err(e) = self.router.set(vec.gsi, Some(msg)) {
                log::error!("MSI route for vector {v}: {e}");
            }
            if !vec.irqfd_on {
                match self.router.register_irqfd(fd, vec.gsi) {
                    Ok(()) => vec.irqfd_on = true,
                    Err(e) => log::error!("irqfd for vector {v}: {e}"),
                }
            }
        } else if vec.irqfd_on {
            // Interrupts raised while masked stay pending in the eventfd; KVM delivers
            // them when the irqfd is registered again.
            if let Err(e) = self.router.unregister_irqfd(fd, vec.gsi) {
                log::error!("irqfd for vector {v}: {e}");
            }
            vec.irqfd_on = false;
        }
    }

    pub fn sync_all(&mut self, control: u16) {
        for v in 0..self.vectors.len() {
            self.sync(v, control);
        }
    }

    /// The function left for good: the irqfds go, then the GSIs with their routes
    /// (one routing table for them all). The table has no vectors afterwards.
    pub fn release(&mut self) {
        for (v, vec) in self.vectors.iter_mut().enumerate() {
            if vec.irqfd_on {
                if let Err(e) = self.router.unregister_irqfd(&self.eventfds[v], vec.gsi) {
                    log::error!("irqfd for vector {v}: {e}");
                }
                vec.irqfd_on = false;
            }
        }
        let gsis: Vec<u32> = self.vectors.drain(..).map(|v| v.gsi).collect();
        if let Err(e) = self.router.release_gsis(&gsis) {
            log::error!("MSI routes of an unplugged function: {e}");
        }
    }

    /// Every entry back to its power-on state (masked, no message); `sync_all` applies it.
    pub fn reset_entries(&mut self) {
        for v in &mut self.vectors {
            v.entry = MASKED_ENTRY;
        }
    }

    /// Every entry as the guest wrote it, for a migration.
    pub fn entries(&self) -> Vec<[u32; 4]> {
        self.vectors.iter().map(|v| v.entry).collect()
    }

    /// Takes saved entries (as many as this table has); `sync_all` applies them.
    pub fn restore_entries(&mut self, entries: &[[u32; 4]]) -> Result<(), String> {
        if entries.len() != self.vectors.len() {
            return Err(format!(
                "{} MSI-X vectors saved, {} here",
                entries.len(),
                self.vectors.len()
            ));
        }
        for (v, e) in self.vectors.iter_mut().zip(entries) {
            v.entry = *e;
        }
        Ok(())
    }

    /// Raises again the interrupts that were pending (`pending_bits`) on the source.
    pub fn raise_pending(&self, bits: u64) {
        for (i, fd) in self.eventfds.iter().enumerate().take(64) {
            if bits & (1 << i) != 0 {
                if let Err(e) = fd.write(1) {
                    log::warn!("MSI-X vector {i}: raising a pending interrupt: {e}");
                }
            }
        }
    }

    /// A guest read of the table at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let Some(vec) = self.vectors.get((offset / ENTRY_SIZE) as usize) else {
            data.fill(0);
            return;
        };
        let mut bytes = [0u8; ENTRY_SIZE as usize];
        for (i, w) in vec.entry.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = (offset % ENTRY_SIZE) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    /// A guest write to the table at `offset` (one dword, or two aligned as a qword);
    /// the vector follows it at once.
    pub fn write(&mut self, offset: u64, data: &[u8], control: u16) {
        let v = (offset / ENTRY_SIZE) as usize;
        let word = ((offset % ENTRY_SIZE) / 4) as usize;
        let Some(vec) = self.vectors.get_mut(v) else {
            return;
        };
        if data.len() == 4 {
            vec.entry[word] = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        } else if data.len() == 8 && word.is_multiple_of(2) {
            vec.entry[word] = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            vec.entry[word + 1] = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        }
        self.sync(v, control);
    }

    /// The PBA: a masked vector whose eventfd holds an unconsumed event is pending.
    pub fn pending_bits(&self) -> u64 {
        let mut bits = 0;
        for (i, v) in self.vectors.iter().enumerate().take(64) {
            if v.irqfd_on {
                continue;
            }
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.eventfds[i]),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one valid fd without waiting.
            if unsafe { libc::poll(&mut pfd, 1, 0) } > 0 {
                bits |= 1 << i;
            }
        }
        bits
    }
}
