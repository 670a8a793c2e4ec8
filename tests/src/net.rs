//! Network test helpers: tap devices the tests create and always remove.

use std::process::Command;

use crate::require_tool;

/// A tap device with an address on the host side, deleted when dropped.
pub struct Tap {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new(require_tool("ip", "iproute2"))
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Tap {
    /// Creates tap `name` (multi-queue capable) with host address `cidr`, up.
    pub fn create(name: &str, cidr: &str) -> Tap {
        assert!(
            std::path::Path::new("/dev/net/tun").exists(),
            "missing /dev/net/tun: tap tests need the tun driver"
        );
        // A tap left by a test that was killed goes first.
        let _ = Command::new("ip").args(["link", "del", name]).output();
        ip(&["tuntap", "add", "dev", name, "mode", "tap", "multi_queue"]);
        let tap = Tap {
            name: name.to_string(),
        };
        ip(&["addr", "add", cidr, "dev", name]);
        ip(&["link", "set", name, "up"]);
        tap
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}
