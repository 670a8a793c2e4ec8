//! device_add of a CPU as QEMU 7.2's pc machine takes one: the model (QEMU's x86_64 CPU
//! types are known by name, but only host-x86_64-cpu, what vmm-core's vCPUs are, is taken:
//! the others get QEMU's "Invalid CPU type"), its properties as QemuOpts strings
//! (socket-id, die-id, core-id, thread-id, node-id: int32, -1 for unset; apic-id: uint32)
//! and pc_cpu_pre_plug's checks, in its order and words, against the topology vmm-core's
//! CPUID describes: one socket of `max` cores, one thread each, so a vCPU's index is its
//! core-id and its APIC ID.

use super::error::{CpuError, DeviceError};

/// The CPU type of the VM's vCPUs (QEMU's `-cpu host`), as query-hotpluggable-cpus names it.
pub const CPU_TYPE: &str = "host-x86_64-cpu";

/// QEMU 7.2's other x86_64 CPU types (`-cpu help`, each model NAME as NAME-x86_64-cpu):
/// known, and refused, the VM's CPU type not being theirs.
const OTHER_TYPES: &[&str] = &[
    "486-x86_64-cpu",
    "486-v1-x86_64-cpu",
    "Broadwell-x86_64-cpu",
    "Broadwell-IBRS-x86_64-cpu",
    "Broadwell-noTSX-x86_64-cpu",
    "Broadwell-noTSX-IBRS-x86_64-cpu",
    "Broadwell-v1-x86_64-cpu",
    "Broadwell-v2-x86_64-cpu",
    "Broadwell-v3-x86_64-cpu",
    "Broadwell-v4-x86_64-cpu",
    "Cascadelake-Server-x86_64-cpu",
    "Cascadelake-Server-noTSX-x86_64-cpu",
    "Cascadelake-Server-v1-x86_64-cpu",
    "Cascadelake-Server-v2-x86_64-cpu",
    "Cascadelake-Server-v3-x86_64-cpu",
    "Cascadelake-Server-v4-x86_64-cpu",
    "Cascadelake-Server-v5-x86_64-cpu",
    "Conroe-x86_64-cpu",
    "Conroe-v1-x86_64-cpu",
    "Cooperlake-x86_64-cpu",
    "Cooperlake-v1-x86_64-cpu",
    "Cooperlake-v2-x86_64-cpu",
    "Denverton-x86_64-cpu",
    "Denverton-v1-x86_64-cpu",
    "Denverton-v2-x86_64-cpu",
    "Denverton-v3-x86_64-cpu",
    "Dhyana-x86_64-cpu",
    "Dhyana-v1-x86_64-cpu",
    "Dhyana-v2-x86_64-cpu",
    "EPYC-x86_64-cpu",
    "EPYC-IBPB-x86_64-cpu",
    "EPYC-Milan-x86_64-cpu",
    "EPYC-Milan-v1-x86_64-cpu",
    "EPYC-Rome-x86_64-cpu",
    "EPYC-Rome-v1-x86_64-cpu",
    "EPYC-Rome-v2-x86_64-cpu",
    "EPYC-v1-x86_64-cpu",
    "EPYC-v2-x86_64-cpu",
    "EPYC-v3-x86_64-cpu",
    "Haswell-x86_64-cpu",
    "Haswell-IBRS-x86_64-cpu",
    "Haswell-noTSX-x86_64-cpu",
    "Haswell-noTSX-IBRS-x86_64-cpu",
    "Haswell-v1-x86_64-cpu",
    "Haswell-v2-x86_64-cpu",
    "Haswell-v3-x86_64-cpu",
    "Haswell-v4-x86_64-cpu",
    "Icelake-Server-x86_64-cpu",
    "Icelake-Server-noTSX-x86_64-cpu",
    "Icelake-Server-v1-x86_64-cpu",
    "Icelake-Server-v2-x86_64-cpu",
    "Icelake-Server-v3-x86_64-cpu",
    "Icelake-Server-v4-x86_64-cpu",
    "Icelake-Server-v5-x86_64-cpu",
    "Icelake-Server-v6-x86_64-cpu",
    "IvyBridge-x86_64-cpu",
    "IvyBridge-IBRS-x86_64-cpu",
    "IvyBridge-v1-x86_64-cpu",
    "IvyBridge-v2-x86_64-cpu",
    "KnightsMill-x86_64-cpu",
    "KnightsMill-v1-x86_64-cpu",
    "Nehalem-x86_64-cpu",
    "Nehalem-IBRS-x86_64-cpu",
    "Nehalem-v1-x86_64-cpu",
    "Nehalem-v2-x86_64-cpu",
    "Opteron_G1-x86_64-cpu",
    "Opteron_G1-v1-x86_64-cpu",
    "Opteron_G2-x86_64-cpu",
    "Opteron_G2-v1-x86_64-cpu",
    "Opteron_G3-x86_64-cpu",
    "Opteron_G3-v1-x86_64-cpu",
    "Opteron_G4-x86_64-cpu",
    "Opteron_G4-v1-x86_64-cpu",
    "Opteron_G5-x86_64-cpu",
    "Opteron_G5-v1-x86_64-cpu",
    "Penryn-x86_64-cpu",
    "Penryn-v1-x86_64-cpu",
    "SandyBridge-x86_64-cpu",
    "SandyBridge-IBRS-x86_64-cpu",
    "SandyBridge-v1-x86_64-cpu",
    "SandyBridge-v2-x86_64-cpu",
    "Skylake-Client-x86_64-cpu",
    "Skylake-Client-IBRS-x86_64-cpu",
    "Skylake-Client-noTSX-IBRS-x86_64-cpu",
    "Skylake-Client-v1-x86_64-cpu",
    "Skylake-Client-v2-x86_64-cpu",
    "Skylake-Client-v3-x86_64-cpu",
    "Skylake-Client-v4-x86_64-cpu",
    "Skylake-Server-x86_64-cpu",
    "Skylake-Server-IBRS-x86_64-cpu",
    "Skylake-Server-noTSX-IBRS-x86_64-cpu",
    "Skylake-Server-v1-x86_64-cpu",
    "Skylake-Server-v2-x86_64-cpu",
    "Skylake-Server-v3-x86_64-cpu",
    "Skylake-Server-v4-x86_64-cpu",
    "Skylake-Server-v5-x86_64-cpu",
    "Snowridge-x86_64-cpu",
    "Snowridge-v1-x86_64-cpu",
    "Snowridge-v2-x86_64-cpu",
    "Snowridge-v3-x86_64-cpu",
    "Snowridge-v4-x86_64-cpu",
    "Westmere-x86_64-cpu",
    "Westmere-IBRS-x86_64-cpu",
    "Westmere-v1-x86_64-cpu",
    "Westmere-v2-x86_64-cpu",
    "athlon-x86_64-cpu",
    "athlon-v1-x86_64-cpu",
    "core2duo-x86_64-cpu",
    "core2duo-v1-x86_64-cpu",
    "coreduo-x86_64-cpu",
    "coreduo-v1-x86_64-cpu",
    "kvm32-x86_64-cpu",
    "kvm32-v1-x86_64-cpu",
    "kvm64-x86_64-cpu",
    "kvm64-v1-x86_64-cpu",
    "n270-x86_64-cpu",
    "n270-v1-x86_64-cpu",
    "pentium-x86_64-cpu",
    "pentium-v1-x86_64-cpu",
    "pentium2-x86_64-cpu",
    "pentium2-v1-x86_64-cpu",
    "pentium3-x86_64-cpu",
    "pentium3-v1-x86_64-cpu",
    "phenom-x86_64-cpu",
    "phenom-v1-x86_64-cpu",
    "qemu32-x86_64-cpu",
    "qemu32-v1-x86_64-cpu",
    "qemu64-x86_64-cpu",
    "qemu64-v1-x86_64-cpu",
    "base-x86_64-cpu",
    "max-x86_64-cpu",
];

/// QEMU's abstract CPU types: no device of theirs can be made.
const ABSTRACT: &[&str] = &["cpu", "x86_64-cpu"];

/// What a device_add driver names, if it is a CPU type: `Some(Ok(type))` for a concrete
/// one (its type name), `Some(Err(()))` for an abstract one.
pub fn cpu_type(driver: &str) -> Option<Result<&'static str, ()>> {
    if ABSTRACT.contains(&driver) {
        return Some(Err(()));
    }
    if driver == CPU_TYPE {
        return Some(Ok(CPU_TYPE));
    }
    OTHER_TYPES.iter().find(|t| **t == driver).map(|t| Ok(*t))
}

/// A CPU's properties as set (int32 ones -1 when not given, as QEMU's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuProps {
    pub socket: i32,
    pub die: i32,
    pub core: i32,
    pub thread: i32,
    pub node: i32,
    pub apic_id: Option<u32>,
}

impl Default for CpuProps {
    fn default() -> Self {
        CpuProps {
            socket: -1,
            die: -1,
            core: -1,
            thread: -1,
            node: -1,
            apic_id: None,
        }
    }
}

/// An integer as QEMU's string visitor reads a property (qemu_strtoi64, base 0: 0x hex,
/// a leading 0 octal; a sign).
fn integer(v: &str) -> Option<i128> {
    let (negative, digits) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v.strip_prefix('+').unwrap_or(v)),
    };
    let parsed = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None if digits.len() > 1 && digits.starts_with('0') => u64::from_str_radix(&digits[1..], 8),
        None => digits.parse::<u64>(),
    };
    let n = i128::from(parsed.ok()?);
    Some(if negative { -n } else { n })
}

fn int32(v: &str, name: &'static str) -> Result<i32, DeviceError> {
    let n = integer(v).ok_or(DeviceError::NotInteger(name))?;
    i32::try_from(n).map_err(|_| DeviceError::OutOfRange {
        property: name,
        ty: "int32_t",
    })
}

fn uint32(v: &str, name: &'static str) -> Result<u32, DeviceError> {
    let n = integer(v).ok_or(DeviceError::NotInteger(name))?;
    u32::try_from(n).map_err(|_| DeviceError::OutOfRange {
        property: name,
        ty: "uint32_t",
    })
}

impl CpuProps {
    /// The properties of a device_add of `typename`, as QemuOpts kept them (in order).
    pub fn read(typename: &'static str, props: &[(String, String)]) -> Result<Self, DeviceError> {
        let mut p = CpuProps::default();
        for (k, v) in props {
            match k.as_str() {
                "socket-id" => p.socket = int32(v, "socket-id")?,
                "die-id" => p.die = int32(v, "die-id")?,
                "core-id" => p.core = int32(v, "core-id")?,
                "thread-id" => p.thread = int32(v, "thread-id")?,
                "node-id" => p.node = int32(v, "node-id")?,
                "apic-id" => p.apic_id = Some(uint32(v, "apic-id")?),
                _ => {
                    return Err(DeviceError::NoProperty {
                        owner: typename,
                        property: k.clone(),
                    })
                }
            }
        }
        Ok(p)
    }

    /// pc_cpu_pre_plug's checks for a CPU of `typename` on a VM of at most `max` vCPUs
    /// (`present` says which are there): the index of the vCPU to add.
    pub fn resolve(
        mut self,
        typename: &str,
        max: u32,
        present: impl Fn(u32) -> bool,
    ) -> Result<u32, CpuError> {
        if typename != CPU_TYPE {
            return Err(CpuError::InvalidType);
        }
        let max = max.max(1);
        // One socket of `max` cores: the core-id takes the APIC ID's low bits.
        let core_bits = 32 - (max - 1).leading_zeros();
        let apic_id = match self.apic_id {
            Some(a) => a,
            None => {
                // die-id may be left out while there is one die per socket (QEMU 4.0's).
                if self.die < 0 {
                    self.die = 0;
                }
                let range = |name, value: i32, last: u32| -> Result<u32, CpuError> {
                    match u32::try_from(value) {
                        Err(_) => Err(CpuError::NotSet(name)),
                        Ok(v) if v > last => Err(CpuError::OutOfRange {
                            name,
                            value: v,
                            max: last,
                        }),
                        Ok(v) => Ok(v),
                    }
                };
                let socket = range("socket-id", self.socket, 0)?;
                range("die-id", self.die, 0)?;
                let core = range("core-id", self.core, max - 1)?;
                range("thread-id", self.thread, 0)?;
                (socket << core_bits) | core
            }
        };
        let core_mask = (1u32 << core_bits) - 1;
        let (socket, core) = (apic_id >> core_bits, apic_id & core_mask);
        // The possible vCPUs' APIC IDs are 0 to max - 1 (one socket).
        if apic_id >= max {
            return Err(CpuError::NoSuchApicId {
                socket,
                core,
                apic_id,
                last: max - 1,
            });
        }
        if present(apic_id) {
            return Err(CpuError::Exists { index: apic_id });
        }
        for (name, value, topo) in [
            ("socket-id", self.socket, socket),
            ("die-id", self.die, 0),
            ("core-id", self.core, core),
            ("thread-id", self.thread, 0),
        ] {
            if value != -1 && value as u32 != topo {
                return Err(CpuError::Mismatch {
                    name,
                    value: value as u32,
                    apic_id,
                    topo,
                });
            }
        }
        if self.node != -1 && self.node != 0 {
            return Err(CpuError::NodeId);
        }
        Ok(apic_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(kv: &[(&str, &str)]) -> Result<CpuProps, String> {
        let kv: Vec<(String, String)> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CpuProps::read(CPU_TYPE, &kv).map_err(|e| e.to_string())
    }

    /// The index a device_add of these props gets on a VM of at most 4 vCPUs, 0 and 1
    /// there; or QEMU's refusal.
    fn resolve(kv: &[(&str, &str)]) -> Result<u32, String> {
        props(kv)?
            .resolve(CPU_TYPE, 4, |i| i < 2)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn types_are_known_by_qemus_names() {
        assert_eq!(cpu_type("host-x86_64-cpu"), Some(Ok(CPU_TYPE)));
        assert_eq!(cpu_type("qemu64-x86_64-cpu"), Some(Ok("qemu64-x86_64-cpu")));
        assert_eq!(
            cpu_type("Skylake-Server-v5-x86_64-cpu"),
            Some(Ok("Skylake-Server-v5-x86_64-cpu"))
        );
        assert_eq!(cpu_type("x86_64-cpu"), Some(Err(())));
        assert_eq!(cpu_type("cpu"), Some(Err(())));
        for other in ["host", "qemu64", "nope-x86_64-cpu", "virtio-blk-pci"] {
            assert_eq!(cpu_type(other), None, "{other}");
        }
        let typed = props(&[]).unwrap().resolve("max-x86_64-cpu", 4, |_| false);
        assert_eq!(
            typed.unwrap_err().to_string(),
            "Invalid CPU type, expected cpu type: 'host-x86_64-cpu'"
        );
    }

    #[test]
    fn properties_read_as_qemus_string_visitor_reads_them() {
        assert_eq!(
            props(&[("socket-id", "0x0"), ("core-id", "03"), ("thread-id", "-1")]),
            Ok(CpuProps {
                socket: 0,
                core: 3,
                ..CpuProps::default()
            })
        );
        for (kv, err) in [
            (("socket-id", "x"), "Parameter 'socket-id' expects integer"),
            (("core-id", "0.5"), "Parameter 'core-id' expects integer"),
            (("thread-id", "on"), "Parameter 'thread-id' expects integer"),
            (
                ("socket-id", "2147483648"),
                "Parameter 'socket-id' expects int32_t",
            ),
            (
                ("socket-id", "-2147483649"),
                "Parameter 'socket-id' expects int32_t",
            ),
            (("apic-id", "x"), "Parameter 'apic-id' expects integer"),
            (("apic-id", "-1"), "Parameter 'apic-id' expects uint32_t"),
            (
                ("apic-id", "4294967296"),
                "Parameter 'apic-id' expects uint32_t",
            ),
            (("foo", "1"), "Property 'host-x86_64-cpu.foo' not found"),
        ] {
            assert_eq!(props(&[kv]).map(drop), Err(err.to_string()), "{kv:?}");
        }
        assert_eq!(
            props(&[("apic-id", "4294967295")]).unwrap().apic_id,
            Some(u32::MAX)
        );
    }

    #[test]
    fn the_checks_come_in_qemus_order_and_words() {
        let all = [("socket-id", "0"), ("core-id", "2"), ("thread-id", "0")];
        assert_eq!(resolve(&all), Ok(2));
        for (kv, err) in [
            (vec![], "CPU socket-id is not set"),
            (vec![("core-id", "9")], "CPU socket-id is not set"),
            (vec![("socket-id", "-5")], "CPU socket-id is not set"),
            (
                vec![("socket-id", "1"), ("core-id", "1")],
                "Invalid CPU socket-id: 1 must be in range 0:0",
            ),
            (
                vec![("socket-id", "0"), ("die-id", "1")],
                "Invalid CPU die-id: 1 must be in range 0:0",
            ),
            (vec![("socket-id", "0")], "CPU core-id is not set"),
            (
                vec![("socket-id", "0"), ("core-id", "5"), ("thread-id", "0")],
                "Invalid CPU core-id: 5 must be in range 0:3",
            ),
            (
                vec![("socket-id", "0"), ("core-id", "1")],
                "CPU thread-id is not set",
            ),
            (
                vec![("socket-id", "0"), ("core-id", "3"), ("thread-id", "1")],
                "Invalid CPU thread-id: 1 must be in range 0:0",
            ),
            (
                vec![("socket-id", "0"), ("core-id", "1"), ("thread-id", "0")],
                "CPU[1] with APIC ID 1 exists",
            ),
            (
                vec![("apic-id", "7")],
                "Invalid CPU [socket: 1, die: 0, core: 3, thread: 0] \
              with APIC ID 7, valid index range 0:3",
            ),
            (vec![("apic-id", "0")], "CPU[0] with APIC ID 0 exists"),
            (
                vec![("apic-id", "3"), ("core-id", "2")],
                "property core-id: 2 doesn't match set apic-id: 0x3 (core-id: 3)",
            ),
            (
                vec![("apic-id", "2"), ("socket-id", "1")],
                "property socket-id: 1 doesn't match set apic-id: 0x2 (socket-id: 0)",
            ),
            (
                vec![
                    ("socket-id", "0"),
                    ("core-id", "2"),
                    ("thread-id", "0"),
                    ("node-id", "1"),
                ],
                "invalid node-id, must be 0",
            ),
        ] {
            assert_eq!(resolve(&kv), Err(err.to_string()), "{kv:?}");
        }
        assert_eq!(resolve(&[("apic-id", "3")]), Ok(3));
        assert_eq!(resolve(&[("apic-id", "3"), ("node-id", "0")]), Ok(3));
        // One possible vCPU: the socket takes every APIC ID bit.
        let one = props(&[("apic-id", "3")])
            .unwrap()
            .resolve(CPU_TYPE, 1, |i| i == 0);
        assert_eq!(
            one.unwrap_err().to_string(),
            "Invalid CPU [socket: 3, die: 0, core: 0, thread: 0] with APIC ID 3, valid index \
             range 0:0"
        );
    }
}
