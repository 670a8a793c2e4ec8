//! The receive filter the guest programs through the control queue (rx mode, MAC
//! tables, VLANs, its MAC address), the control commands themselves, and the decision
//! QEMU's virtio-net makes for each incoming frame.

use ipc::RxFilterState;

pub const CLASS_RX: u8 = 0;
pub const CLASS_MAC: u8 = 1;
pub const CLASS_VLAN: u8 = 2;
pub const CLASS_ANNOUNCE: u8 = 3;
pub const CLASS_MQ: u8 = 4;

pub const ACK_OK: u8 = 0;
pub const ACK_ERR: u8 = 1;

/// QEMU's MAC_TABLE_ENTRIES: beyond this many addresses a table overflows (and lets
/// everything of its kind through).
pub const MAC_TABLE_ENTRIES: usize = 64;
const MAX_VLAN: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFilter {
    pub promisc: bool,
    pub all_multi: bool,
    pub all_uni: bool,
    pub no_multi: bool,
    pub no_uni: bool,
    pub no_bcast: bool,
    pub mac: [u8; 6],
    pub unicast: Vec<[u8; 6]>,
    pub multicast: Vec<[u8; 6]>,
    pub uni_overflow: bool,
    pub multi_overflow: bool,
    /// The guest filters VLANs (negotiated CTRL_VLAN): tagged frames need their VLAN.
    pub vlan_filtering: bool,
    vlans: Box<[bool; MAX_VLAN]>,
}

/// What a control command did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged; `changed`: the receive filter is different now.
    Ok {
        changed: bool,
    },
    /// VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
    Pairs(u16),
    Err,
}

impl RxFilter {
    /// As after a device reset: promiscuous (QEMU's default), the given MAC.
    pub fn new(mac: [u8; 6]) -> RxFilter {
        RxFilter {
            promisc: true,
            all_multi: false,
            all_uni: false,
            no_multi: false,
            no_uni: false,
            no_bcast: false,
            mac,
            unicast: Vec::new(),
            multicast: Vec::new(),
            uni_overflow: false,
            multi_overflow: false,
            vlan_filtering: false,
            vlans: Box::new([false; MAX_VLAN]),
        }
    }

    /// Runs one control command (`data`: what follows class and command).
    pub fn command(&mut self, class: u8, cmd: u8, data: &[u8]) -> Outcome {
        let before = self.clone();
        let ok = match class {
            CLASS_RX => {
                let Some(&on) = data.first().filter(|_| data.len() == 1) else {
                    return Outcome::Err;
                };
                let on = on != 0;
                match cmd {
                    0 => self.promisc = on,
                    1 => self.all_multi = on,
                    2 => self.all_uni = on,
                    3 => self.no_multi = on,
                    4 => self.no_uni = on,
                    5 => self.no_bcast = on,
                    _ => return Outcome::Err,
                }
                true
            }
            CLASS_MAC => match cmd {
                0 => self.set_tables(data),
                1 if data.len() == 6 => {
                    self.mac.copy_from_slice(data);
                    true
                }
                _ => false,
            },
            CLASS_VLAN => {
                let Some(id) = (data.len() == 2).then(|| u16::from_le_bytes([data[0], data[1]]))
                else {
                    return Outcome::Err;
                };
                if usize::from(id) >= MAX_VLAN {
                    return Outcome::Err;
                }
                match cmd {
                    0 => self.vlans[usize::from(id)] = true,
                    1 => self.vlans[usize::from(id)] = false,
                    _ => return Outcome::Err,
                }
                true
            }
            CLASS_ANNOUNCE => cmd == 0,
            CLASS_MQ => {
                return match (cmd, data.len()) {
                    (0, 2) => match u16::from_le_bytes([data[0], data[1]]) {
                        0 => Outcome::Err,
                        n => Outcome::Pairs(n),
                    },
                    _ => Outcome::Err,
                }
            }
            _ => false,
        };
        if ok {
            Outcome::Ok {
                changed: *self != before,
            }
        } else {
            *self = before;
            Outcome::Err
        }
    }

    /// VIRTIO_NET_CTRL_MAC_TABLE_SET: a unicast table then a multicast table, each a
    /// little-endian count followed by that many addresses.
    fn set_tables(&mut self, data: &[u8]) -> bool {
        let mut rest = data;
        let mut read_table = || -> Option<Vec<[u8; 6]>> {
            let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let bytes = rest.get(4..4 + n.checked_mul(6)?)?;
            rest = &rest[4 + n * 6..];
            Some(
                bytes
                    .chunks_exact(6)
                    .map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]])
                    .collect(),
            )
        };
        let (Some(uni), Some(multi)) = (read_table(), read_table()) else {
            return false;
        };
        if !rest.is_empty() {
            return false;
        }
        self.uni_overflow = uni.len() > MAC_TABLE_ENTRIES;
        self.multi_overflow = multi.len() > MAC_TABLE_ENTRIES;
        self.unicast = if self.uni_overflow { Vec::new() } else { uni };
        self.multicast = if self.multi_overflow {
            Vec::new()
        } else {
            multi
        };
        true
    }

    /// Whether the guest wants `frame` (an Ethernet frame).
    pub fn accepts(&self, frame: &[u8]) -> bool {
        if self.promisc {
            return true;
        }
        if frame.len() < 14 {
            return false;
        }
        if self.vlan_filtering && frame[12] == 0x81 && frame[13] == 0x00 {
            let Some(tci) = frame.get(14..16) else {
                return false;
            };
            let vid = usize::from(u16::from_be_bytes([tci[0], tci[1]]) & 0xfff);
            if !self.vlans[vid] {
                return false;
            }
        }
        let dest: [u8; 6] = [frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]];
        if dest[0] & 1 != 0 {
            if dest == [0xff; 6] {
                return !self.no_bcast;
            }
            if self.no_multi {
                return false;
            }
            self.all_multi || self.multi_overflow || self.multicast.contains(&dest)
        } else {
            if self.no_uni {
                return false;
            }
            self.all_uni || self.uni_overflow || dest == self.mac || self.unicast.contains(&dest)
        }
    }

    /// The filter a previous daemon reported (restored after a restart).
    pub fn from_state(s: &RxFilterState) -> RxFilter {
        let mut vlans = Box::new([false; MAX_VLAN]);
        for v in &s.vlans {
            if let Some(slot) = vlans.get_mut(usize::from(*v)) {
                *slot = true;
            }
        }
        RxFilter {
            promisc: s.promiscuous,
            all_multi: s.all_multi,
            all_uni: s.all_uni,
            no_multi: s.no_multi,
            no_uni: s.no_uni,
            no_bcast: s.no_bcast,
            mac: s.main_mac,
            unicast: s.unicast.iter().take(MAC_TABLE_ENTRIES).copied().collect(),
            multicast: s
                .multicast
                .iter()
                .take(MAC_TABLE_ENTRIES)
                .copied()
                .collect(),
            uni_overflow: s.unicast_overflow,
            multi_overflow: s.multicast_overflow,
            vlan_filtering: s.vlan_filtering,
            vlans,
        }
    }

    pub fn state(&self) -> RxFilterState {
        RxFilterState {
            promiscuous: self.promisc,
            all_multi: self.all_multi,
            all_uni: self.all_uni,
            no_multi: self.no_multi,
            no_uni: self.no_uni,
            no_bcast: self.no_bcast,
            main_mac: self.mac,
            unicast: self.unicast.clone(),
            multicast: self.multicast.clone(),
            unicast_overflow: self.uni_overflow,
            multicast_overflow: self.multi_overflow,
            vlan_filtering: self.vlan_filtering,
            vlans: (0..MAX_VLAN as u16)
                .filter(|v| self.vlans[usize::from(*v)])
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reported_filter_restores_to_the_same_filter() {
        let mut f = RxFilter::new(MAC);
        f.promisc = false;
        f.all_multi = true;
        f.unicast.push([2, 0, 0, 0, 0, 1]);
        f.multicast.push([1, 0, 0x5e, 0, 0, 1]);
        f.vlan_filtering = true;
        f.vlans[100] = true;
        assert_eq!(RxFilter::from_state(&f.state()), f);
        // A state from elsewhere cannot make it index out of range or grow unbounded.
        let mut s = f.state();
        s.vlans.push(u16::MAX);
        s.unicast = vec![[2, 0, 0, 0, 0, 2]; 1000];
        let g = RxFilter::from_state(&s);
        assert_eq!(g.unicast.len(), MAC_TABLE_ENTRIES);
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn frame(dest: [u8; 6]) -> Vec<u8> {
        let mut f = dest.to_vec();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        f.resize(60, 0);
        f
    }

    fn tables(uni: &[[u8; 6]], multi: &[[u8; 6]]) -> Vec<u8> {
        let mut d = (uni.len() as u32).to_le_bytes().to_vec();
        uni.iter().for_each(|m| d.extend_from_slice(m));
        d.extend_from_slice(&(multi.len() as u32).to_le_bytes());
        multi.iter().for_each(|m| d.extend_from_slice(m));
        d
    }

    #[test]
    fn rx_modes_and_tables() {
        let mut f = RxFilter::new(MAC);
        let other = [2, 0, 0, 0, 0, 9];
        let mcast = [0x01, 0, 0x5e, 0, 0, 1];
        assert!(f.accepts(&frame(other)), "promiscuous after reset");
        assert_eq!(f.command(CLASS_RX, 0, &[0]), Outcome::Ok { changed: true });
        assert!(!f.accepts(&frame(other)));
        assert!(f.accepts(&frame(MAC)));
        assert!(f.accepts(&frame([0xff; 6])));
        assert!(!f.accepts(&frame(mcast)));
        assert_eq!(
            f.command(CLASS_MAC, 0, &tables(&[other], &[mcast])),
            Outcome::Ok { changed: true }
        );
        assert!(f.accepts(&frame(other)) && f.accepts(&frame(mcast)));
        f.command(CLASS_RX, 5, &[1]);
        assert!(!f.accepts(&frame([0xff; 6])));
        f.command(CLASS_RX, 1, &[1]);
        assert!(f.accepts(&frame([0x01, 0, 0x5e, 0, 0, 7])));
        let s = f.state();
        assert!(!s.promiscuous && s.all_multi && s.no_bcast);
        assert_eq!((s.unicast, s.multicast), (vec![other], vec![mcast]));
        // The same command again changes nothing.
        assert_eq!(f.command(CLASS_RX, 1, &[1]), Outcome::Ok { changed: false });
    }

    #[test]
    fn vlans_and_mac() {
        let mut f = RxFilter::new(MAC);
        f.command(CLASS_RX, 0, &[0]);
        f.vlan_filtering = true;
        let mut tagged = frame(MAC);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        assert!(!f.accepts(&tagged));
        assert_eq!(
            f.command(CLASS_VLAN, 0, &5u16.to_le_bytes()),
            Outcome::Ok { changed: true }
        );
        assert!(f.accepts(&tagged));
        assert_eq!(f.state().vlans, vec![5]);
        let new = [2, 1, 2, 3, 4, 5];
        f.command(CLASS_MAC, 1, &new);
        assert!(!f.accepts(&frame(MAC)) && f.accepts(&frame(new)));
        assert_eq!(
            f.command(CLASS_MQ, 0, &4u16.to_le_bytes()),
            Outcome::Pairs(4)
        );
    }

    #[test]
    fn malformed_commands_change_nothing() {
        let mut f = RxFilter::new(MAC);
        let before = f.clone();
        for (class, cmd, data) in [
            (CLASS_RX, 0, &[][..]),
            (CLASS_RX, 0, &[1, 1][..]),
            (CLASS_RX, 9, &[1][..]),
            (CLASS_MAC, 0, &[5, 0, 0, 0][..]),
            (CLASS_MAC, 0, &[0xff, 0xff, 0xff, 0xff][..]),
            (CLASS_MAC, 1, &[1, 2, 3][..]),
            (CLASS_VLAN, 0, &[0xff, 0xff][..]),
            (CLASS_MQ, 0, &[0, 0][..]),
            (42, 0, &[][..]),
        ] {
            assert_eq!(f.command(class, cmd, data), Outcome::Err, "{class}/{cmd}");
        }
        assert_eq!(f, before);
        // Overflowing tables let everything of their kind through, as QEMU does.
        let many: Vec<[u8; 6]> = (0..65).map(|i| [2, 0, 0, 0, 1, i as u8]).collect();
        f.command(CLASS_RX, 0, &[0]);
        f.command(CLASS_MAC, 0, &tables(&many, &[]));
        assert!(f.uni_overflow && f.accepts(&frame([2, 9, 9, 9, 9, 9])));
        assert!(!f.accepts(&[0u8; 5]));
    }
}
