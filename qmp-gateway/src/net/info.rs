//! HMP `info network`: the NICs and netdevs as QEMU 7.2's hmp_info_network lists its
//! net clients, in the order they were made, a NIC's netdev under it. A tap given by
//! fd= reads fd=N with the gateway's number for it, as QEMU's reads its own.

use super::netdev::ClientInfo;
use super::NetLayer;

/// One net client's line, as QEMU's print_net_client writes it.
fn client_line(name: &str, queue: u32, driver: &str, text: &str) -> String {
    format!("{name}: index={queue},type={driver},{text}\n")
}

impl NetLayer {
    /// `info network`'s text. A NIC has a net client per queue pair, and only the first
    /// carries its model and MAC (virtio-net formats queue 0's); its netdev's queue of
    /// the same index is printed under each.
    pub fn info_network(&self) -> String {
        let state = self.state.lock();
        let mut clients: Vec<(u64, String)> = Vec::new();
        for nic in &state.nics {
            let mut text = String::new();
            for queue in 0..nic.queue_pairs.max(1) {
                let own = match queue {
                    0 => format!(
                        "model=virtio-net-pci,macaddr={}",
                        ipc::host::format_mac(&nic.mac)
                    ),
                    _ => String::new(),
                };
                text += &client_line(&nic.id, queue, "nic", &own);
                // Its netdev even after netdev_del: QEMU keeps that client until the
                // NIC goes. A NIC always has one here (--device and device_add need
                // netdev=).
                let ClientInfo {
                    name,
                    driver,
                    text: t,
                    ..
                } = &nic.backend;
                text += " \\ ";
                text += &client_line(name, queue, driver, t);
            }
            clients.push((nic.made, text));
        }
        for netdev in &state.spare {
            let c = &netdev.client;
            let text = (0..netdev.fds.len().max(1) as u32)
                .map(|queue| {
                    let index = if c.numbered { queue } else { 0 };
                    client_line(&netdev.id, index, c.driver, &c.text)
                })
                .collect();
            clients.push((c.made, text));
        }
        clients.sort_by_key(|(made, _)| *made);
        clients.into_iter().map(|(_, text)| text).collect()
    }
}
