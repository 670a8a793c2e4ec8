//! `net-rxfilter`: the control queue's receive filters (rx modes, MAC tables, VLANs, the MAC
//! address), one `GUEST NET CTRL ...` line per command; then, with `ip=`, net-echo, else it
//! counts what the filters let through until the power button or `ms=`.

use super::echo;
use super::host::{stats, Host};
use super::params::{addresses, number_opt, parsed, MAX_MS};
use super::serve::{power_button, serve_until_stopped};
use crate::acpi::Acpi;
use crate::drivers::virtio_net::spec::{
    CTRL_CLASS_MAC, CTRL_CLASS_RX, CTRL_CLASS_VLAN, CTRL_MAC_ADDR_SET, CTRL_MAC_TABLE_SET, CTRL_OK,
    CTRL_RX_ALLMULTI, CTRL_RX_ALLUNI, CTRL_RX_NOBCAST, CTRL_RX_NOMULTI, CTRL_RX_NOUNI,
    CTRL_RX_PROMISC, CTRL_VLAN_ADD, F_CTRL_MAC_ADDR, F_CTRL_RX, F_CTRL_RX_EXTRA, F_CTRL_VLAN,
    F_CTRL_VQ,
};
use crate::drivers::virtio_net::NetDevice;
use crate::netproto::{self, Mac};
use crate::{cmdline, console};

const MAX_TABLE_MACS: usize = 32;
const MAX_VLANS: usize = 16;

/// `xx:xx:xx:xx:xx:xx` joined by `+`; empty: an empty table.
fn parse_mac_list(text: &[u8]) -> Option<([Mac; MAX_TABLE_MACS], usize)> {
    let mut macs = [[0u8; 6]; MAX_TABLE_MACS];
    let mut count = 0;
    if text.is_empty() {
        return Some((macs, 0));
    }
    for part in text.split(|&b| b == b'+') {
        if count == MAX_TABLE_MACS {
            return None;
        }
        macs[count] = netproto::parse_mac(part)?;
        count += 1;
    }
    Some((macs, count))
}

fn parse_vlans(text: &[u8]) -> Option<([u16; MAX_VLANS], usize)> {
    let mut vids = [0u16; MAX_VLANS];
    let mut count = 0;
    for part in text.split(|&b| b == b'+') {
        if count == MAX_VLANS {
            return None;
        }
        vids[count] = cmdline::parse_u64(part)
            .filter(|&v| v < 4096)
            .map(|v| v as u16)?;
        count += 1;
    }
    Some((vids, count))
}

/// A VIRTIO_NET_CTRL_RX command and its `key=0|1` parameter.
struct RxMode {
    key: &'static str,
    name: &'static str,
    command: u8,
    /// Needs VIRTIO_NET_F_CTRL_RX_EXTRA.
    extra: bool,
}

/// In the order they are sent.
const RX_MODES: [RxMode; 6] = [
    RxMode {
        key: "promisc",
        name: "rx-promisc",
        command: CTRL_RX_PROMISC,
        extra: false,
    },
    RxMode {
        key: "allmulti",
        name: "rx-allmulti",
        command: CTRL_RX_ALLMULTI,
        extra: false,
    },
    RxMode {
        key: "alluni",
        name: "rx-alluni",
        command: CTRL_RX_ALLUNI,
        extra: true,
    },
    RxMode {
        key: "nomulti",
        name: "rx-nomulti",
        command: CTRL_RX_NOMULTI,
        extra: true,
    },
    RxMode {
        key: "nouni",
        name: "rx-nouni",
        command: CTRL_RX_NOUNI,
        extra: true,
    },
    RxMode {
        key: "nobcast",
        name: "rx-nobcast",
        command: CTRL_RX_NOBCAST,
        extra: true,
    },
];

fn flag(text: &[u8]) -> Option<u8> {
    match text {
        b"0" => Some(0),
        b"1" => Some(1),
        _ => None,
    }
}

/// `struct virtio_net_ctrl_mac`: le32 entries, then the MACs.
fn mac_table(macs: &[Mac], out: &mut [u8; 4 + 6 * MAX_TABLE_MACS]) -> usize {
    out[..4].copy_from_slice(&(macs.len() as u32).to_le_bytes());
    for (i, mac) in macs.iter().enumerate() {
        out[4 + 6 * i..10 + 6 * i].copy_from_slice(mac);
    }
    4 + 6 * macs.len()
}

/// Sends one control command and prints `GUEST NET CTRL cmd=<name> ack=<n> <detail>`, or an
/// error line. Returns whether the device acknowledged it with VIRTIO_NET_OK.
fn ctrl_command(
    dev: &mut NetDevice,
    name: &str,
    class: u8,
    command: u8,
    parts: &[&[u8]],
    detail: impl FnOnce(console::Line) -> console::Line,
) -> bool {
    match dev.ctrl(class, command, parts) {
        Ok(ack) => {
            let line = console::line("GUEST NET CTRL cmd=")
                .s(name)
                .s(" ack=")
                .dec(u64::from(ack))
                .s(" ");
            detail(line).end();
            ack == CTRL_OK
        }
        Err(why) => {
            console::error("net ctrl cmd=").s(name).s(": ").s(why).end();
            false
        }
    }
}

fn missing_feature(name: &str, feature: &str) {
    console::error("net ctrl cmd=")
        .s(name)
        .s(": VIRTIO_NET_F_")
        .s(feature)
        .s(" not negotiated")
        .end();
}

pub fn run(dev: &mut NetDevice, acpi: &Acpi, cmdline: &[u8]) {
    if !dev.has(F_CTRL_VQ) || !dev.has(F_CTRL_RX) {
        console::error(
            "net-rxfilter needs VIRTIO_NET_F_CTRL_VQ and VIRTIO_NET_F_CTRL_RX (features=",
        )
        .hex(dev.transport.features)
        .s(")")
        .end();
        return;
    }
    // Parse everything first: a bad parameter sends nothing.
    let mut rx_modes = [None; RX_MODES.len()];
    for (mode, value) in RX_MODES.iter().zip(rx_modes.iter_mut()) {
        let Ok(parsed) = parsed(cmdline, mode.key, "0 or 1", flag) else {
            return;
        };
        *value = parsed;
    }
    let Ok(unicast) = parsed(
        cmdline,
        "macs",
        "MACs joined by +, at most 32",
        parse_mac_list,
    ) else {
        return;
    };
    let Ok(multicast) = parsed(
        cmdline,
        "mcast",
        "MACs joined by +, at most 32",
        parse_mac_list,
    ) else {
        return;
    };
    let Ok(vlans) = parsed(
        cmdline,
        "vlan",
        "VLAN IDs 0-4095 joined by +, at most 16",
        parse_vlans,
    ) else {
        return;
    };
    let Ok(new_mac) = parsed(cmdline, "mac", "xx:xx:xx:xx:xx:xx", netproto::parse_mac) else {
        return;
    };
    if addresses(cmdline).is_err() {
        return;
    }
    for (mode, value) in RX_MODES.iter().zip(rx_modes) {
        let Some(on) = value else {
            continue;
        };
        if mode.extra && !dev.has(F_CTRL_RX_EXTRA) {
            missing_feature(mode.name, "CTRL_RX_EXTRA");
            continue;
        }
        ctrl_command(
            dev,
            mode.name,
            CTRL_CLASS_RX,
            mode.command,
            &[&[on]],
            |line| line.s("value=").dec(u64::from(on)),
        );
    }
    if unicast.is_some() || multicast.is_some() {
        let (uc, uc_count) = unicast.unwrap_or(([[0; 6]; MAX_TABLE_MACS], 0));
        let (mc, mc_count) = multicast.unwrap_or(([[0; 6]; MAX_TABLE_MACS], 0));
        let mut uc_table = [0u8; 4 + 6 * MAX_TABLE_MACS];
        let mut mc_table = [0u8; 4 + 6 * MAX_TABLE_MACS];
        let uc_len = mac_table(&uc[..uc_count], &mut uc_table);
        let mc_len = mac_table(&mc[..mc_count], &mut mc_table);
        ctrl_command(
            dev,
            "mac-table-set",
            CTRL_CLASS_MAC,
            CTRL_MAC_TABLE_SET,
            &[&uc_table[..uc_len], &mc_table[..mc_len]],
            |line| {
                line.s("unicast=")
                    .dec(uc_count as u64)
                    .s(" multicast=")
                    .dec(mc_count as u64)
            },
        );
    }
    if let Some((vids, count)) = vlans {
        if dev.has(F_CTRL_VLAN) {
            for &vid in &vids[..count] {
                ctrl_command(
                    dev,
                    "vlan-add",
                    CTRL_CLASS_VLAN,
                    CTRL_VLAN_ADD,
                    &[&vid.to_le_bytes()],
                    |line| line.s("vid=").dec(u64::from(vid)),
                );
            }
        } else {
            missing_feature("vlan-add", "CTRL_VLAN");
        }
    }
    if let Some(mac) = new_mac {
        if dev.has(F_CTRL_MAC_ADDR) {
            let ok = ctrl_command(
                dev,
                "mac-addr-set",
                CTRL_CLASS_MAC,
                CTRL_MAC_ADDR_SET,
                &[&mac],
                |line| netproto::print_mac(line.s("mac="), mac),
            );
            if ok {
                dev.mac = mac;
            }
        } else {
            missing_feature("mac-addr-set", "CTRL_MAC_ADDR");
        }
    }
    console::line("GUEST NET CTRL DONE").end();
    if cmdline::param(cmdline, "ip").is_some() {
        echo::run(dev, acpi, cmdline);
        return;
    }
    // No address: count what arrives (filters at work) until the power button.
    let Ok(stop_ms) = number_opt(cmdline, "ms", 1..=MAX_MS) else {
        return;
    };
    let button = power_button(acpi, stop_ms);
    let mut host = Host::new(dev.mac, None, None);
    let link = dev.link_up();
    serve_until_stopped(dev, &mut host, button, stop_ms, link);
    stats(dev, &host);
}
