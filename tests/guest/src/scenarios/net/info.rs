//! `net-info`: one `GUEST NET dev=...` line per virtio-net device (MAC, link status, queue
//! pairs in use, negotiated features).

use crate::console;
use crate::drivers::virtio_net::NetDevices;
use crate::netproto;

pub fn run(devices: &NetDevices) {
    if devices.count == 0 {
        console::error("net: no usable virtio-net device").end();
        return;
    }
    for dev in devices.list.iter().flatten() {
        let line = console::line("GUEST NET dev=")
            .dec(dev.number as u64)
            .s(" pci=");
        let line = dev.pci().print(line).s(" mac=");
        netproto::print_mac(line, dev.mac)
            .s(" status=")
            .s(if dev.link_up() { "up" } else { "down" })
            .s(" queue_pairs=")
            .dec(dev.pairs as u64)
            .s(" features=")
            .hex(dev.transport.features)
            .end();
    }
}
