//! The balloon as the gateway sees it: its options (`--device virtio-balloon-pci[,id=ID]`,
//! `BalloonSpec`; devices/command_line.rs reads `--device` and hands the balloon's here),
//! and QMP balloon's value turned into the target vmm-core's device holds, by QEMU 7.2's
//! rules. vmm-core serves the device itself (vmm-core/src/devices/virtio_balloon/): it
//! gives the guest's pages back to the host and reports what the driver says it holds,
//! which the gateway answers query-balloon with and sends on as BALLOON_CHANGE
//! (rate-limited as QEMU's, events.rs).

use serde_json::{Map, Value};

/// QEMU's words when there is no balloon (QERR_DEVICE_NOT_ACTIVE, class DeviceNotActive).
pub const NOT_ACTIVE: &str = "No balloon device has been activated";
/// QEMU's words for a value of 0 or less (QERR_INVALID_PARAMETER_VALUE).
pub const NOT_A_SIZE: &str = "Parameter 'target' expects a size";
const PAGE: u64 = 4096;

/// `--device virtio-balloon-pci[,id=ID]` (or `virtio-balloon`, QEMU's alias).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonSpec {
    pub id: Option<String>,
}

impl BalloonSpec {
    /// From the option's map (QemuOpts: every value a string).
    pub(crate) fn from_options(opts: &Map<String, Value>) -> Result<BalloonSpec, String> {
        let mut id = None;
        for (k, v) in opts {
            match (k.as_str(), v.as_str()) {
                ("driver", _) => {}
                ("id", Some(v)) if crate::ids::well_formed(v) => id = Some(v.to_string()),
                ("id", _) => return Err("Parameter 'id' expects an identifier".into()),
                _ => return Err(format!("Property 'virtio-balloon-pci.{k}' not found")),
            }
        }
        Ok(BalloonSpec { id })
    }
}

/// Whether `model` is the balloon's (its name, or QEMU's alias).
pub(crate) fn is_balloon(model: &str) -> bool {
    matches!(model, "virtio-balloon-pci" | "virtio-balloon")
}

/// QMP balloon's `value` (bytes the guest should keep) as the pages the balloon must hold,
/// as QEMU 7.2's qmp_balloon and virtio_balloon_to_target have it: 0 or less is refused;
/// more than RAM counts as RAM; (RAM - value) / 4096, rounded down.
pub fn target_pages(ram: u64, value: i64) -> Result<u32, &'static str> {
    if value <= 0 {
        return Err(NOT_A_SIZE);
    }
    let value = (value as u64).min(ram);
    // RAM is at most 1 TiB (vmm-core's limit): 2^28 pages.
    Ok(u32::try_from((ram - value) / PAGE).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 128 << 20;

    #[test]
    fn targets_as_qemu_computes_them() {
        assert_eq!(target_pages(RAM, (RAM - (32 << 20)) as i64), Ok(8192));
        assert_eq!(target_pages(RAM, RAM as i64), Ok(0));
        assert_eq!(target_pages(RAM, i64::MAX), Ok(0));
        // Rounded down: 100 bytes short of 16 MiB is 4095 pages.
        assert_eq!(target_pages(RAM, (RAM - (16 << 20) + 100) as i64), Ok(4095));
        assert_eq!(target_pages(RAM, 1), Ok(32767));
        for bad in [0, -1, i64::MIN] {
            assert_eq!(target_pages(RAM, bad), Err(NOT_A_SIZE));
        }
    }
}
