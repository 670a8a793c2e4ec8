//! device_add's arguments as QEMU 7.2 reads them: through QemuOpts, so every value is
//! a string (numbers as written, booleans as on/off; arrays, objects and null are
//! dropped), `id` must be an identifier, `driver` names a model (or its alias), `bus` a
//! bus; the rest are the model's properties, each checked by the property's own parser
//! with its own error. Only the models Flotilla serves exist here: virtio-blk-pci,
//! virtio-net-pci and pc-dimm (whose properties dimm.rs reads).

use serde_json::{Map, Value};

use super::cpu;
use super::error::DeviceError;
use crate::ids::well_formed;

/// Bus 0's name, as QEMU's pc machine names its root bus (our hotplug is its PIIX4 one).
pub const BUS: &str = "pci.0";

/// The largest num-queues a disk's daemon serves (QEMU takes more).
pub const MAX_QUEUES: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Blk,
    Net,
    /// The balloon: only from the command line (vmm-core's own device, no backend to
    /// start); device_add does not make one.
    Balloon,
    /// A CPU of this type (devices/cpu.rs: only the VM's own type is added).
    Cpu(&'static str),
    /// A DIMM (ACPI memory hotplug): no bus, a memory slot of its own.
    Dimm,
}

impl Model {
    /// QEMU's type name (what errors name).
    pub fn typename(self) -> &'static str {
        match self {
            Model::Blk => "virtio-blk-pci",
            Model::Net => "virtio-net-pci",
            Model::Balloon => "virtio-balloon-pci",
            Model::Cpu(typename) => typename,
            Model::Dimm => "pc-dimm",
        }
    }

    /// The virtio device inside the PCI proxy, which owns the backend properties (QEMU's
    /// errors name it).
    fn inner(self) -> &'static str {
        match self {
            Model::Blk => "virtio-blk-device",
            Model::Net => "virtio-net-device",
            Model::Balloon => "virtio-balloon-device",
            Model::Cpu(typename) => typename,
            Model::Dimm => "pc-dimm",
        }
    }

    /// By type name or QEMU's alias for it on x86 (qdev_alias_table).
    fn by_name(name: &str) -> Option<Model> {
        match name {
            "virtio-blk-pci" | "virtio-blk" => Some(Model::Blk),
            "virtio-net-pci" | "virtio-net" => Some(Model::Net),
            "pc-dimm" => Some(Model::Dimm),
            _ => None,
        }
    }
}

/// A PCI address (QEMU's addr=): slot and function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub slot: u8,
    pub function: u8,
}

/// The options every device has, read before the device is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub model: Model,
    pub id: Option<String>,
    /// The other options, as QemuOpts keeps them: strings, in the client's order.
    props: Vec<(String, String)>,
}

/// A virtio-blk-pci's properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlkProps {
    pub drive: Option<String>,
    pub serial: Option<String>,
    pub num_queues: Option<u32>,
    pub addr: Option<Addr>,
    /// iothread=: the iothread object whose thread serves it ("" for none, as QEMU).
    pub iothread: Option<String>,
    pub bootindex: Option<i32>,
}

/// A virtio-net-pci's properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetProps {
    pub netdev: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub addr: Option<Addr>,
    pub bootindex: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Props {
    Blk(BlkProps),
    Net(NetProps),
}

impl Props {
    pub fn addr(&self) -> Option<Addr> {
        match self {
            Props::Blk(b) => b.addr,
            Props::Net(n) => n.addr,
        }
    }

    /// bootindex=, which no two devices may share (QEMU's check_boot_index: a negative one
    /// is none).
    pub fn bootindex(&self) -> Option<i32> {
        let index = match self {
            Props::Blk(b) => b.bootindex,
            Props::Net(n) => n.bootindex,
        };
        index.filter(|i| *i >= 0)
    }
}

/// A value as QemuOpts keeps it (None: dropped, as qemu_opts_from_qdict does).
fn opt_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_string()),
        _ => None,
    }
}

/// The bus QEMU's qbus_find finds for `path`: only bus 0 exists here.
fn check_bus(path: &str) -> Result<(), DeviceError> {
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    if path.starts_with('/') {
        // An absolute path starts at a device on the system bus: none of ours is named.
        let first = parts.next().unwrap_or_default();
        return Err(DeviceError::NoBusDevice(first.to_string()));
    }
    // A relative path starts with a bus name (sscanf's %[^/], so "" names "").
    let first = path.split('/').next().unwrap_or_default();
    if first != BUS {
        return Err(DeviceError::NoBus(first.to_string()));
    }
    match parts.nth(1) {
        // Devices under bus 0 have only virtio buses, where nothing here plugs.
        Some(device) => Err(DeviceError::NoBusDevice(device.to_string())),
        None => Ok(()),
    }
}

impl DeviceSpec {
    /// The options QEMU reads before it creates the device, in its order: the id, the
    /// driver, the bus.
    pub fn read(args: &Map<String, Value>) -> Result<DeviceSpec, DeviceError> {
        // QemuOpts takes only a string id.
        let id = match args.get("id") {
            Some(Value::String(id)) => Some(id.clone()),
            _ => None,
        };
        if id.as_deref().is_some_and(|i| !well_formed(i)) {
            return Err(DeviceError::BadId);
        }
        let driver = args
            .get("driver")
            .and_then(opt_string)
            .ok_or(DeviceError::NoDriver)?;
        let model = match cpu::cpu_type(&driver) {
            Some(Ok(typename)) => Model::Cpu(typename),
            Some(Err(())) => return Err(DeviceError::AbstractDriver),
            None => Model::by_name(&driver).ok_or(DeviceError::UnknownDriver(driver))?,
        };
        if let Some(bus) = args.get("bus").and_then(opt_string) {
            check_bus(&bus)?;
            // A CPU plugs into the machine, on no bus.
            if let Model::Cpu(driver) = model {
                return Err(DeviceError::CannotGoOnBus { driver, bus: "PCI" });
            }
            // The only bus there is: a DIMM has no bus type, QEMU's qdev_device_add says.
            if model == Model::Dimm {
                return Err(DeviceError::CannotGoOnBus {
                    driver: model.typename(),
                    bus: "PCI",
                });
            }
        }
        let props = args
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "id" | "driver" | "bus"))
            .filter_map(|(k, v)| Some((k.clone(), opt_string(v)?)))
            .collect();
        Ok(DeviceSpec { model, id, props })
    }

    /// The model's properties, each read by its parser (QEMU sets them after the id).
    pub fn properties(&self) -> Result<Props, DeviceError> {
        let model = self.model;
        match model {
            Model::Blk => {
                let mut p = BlkProps::default();
                for (k, v) in &self.props {
                    match k.as_str() {
                        "drive" => p.drive = Some(v.clone()).filter(|d| !d.is_empty()),
                        "serial" => p.serial = Some(v.clone()),
                        "num-queues" => {
                            p.num_queues = Some(uint(v, "num-queues", u16::MAX.into())?)
                        }
                        "addr" => p.addr = Some(addr(model, v)?),
                        "iothread" => p.iothread = Some(v.clone()).filter(|t| !t.is_empty()),
                        // The transport's MSI-X vectors: ours has its own count.
                        "vectors" => drop(uint(v, "vectors", u32::MAX.into())?),
                        "bootindex" => p.bootindex = Some(boot_index(v)?),
                        _ => return Err(no_property(model, k)),
                    }
                }
                Ok(Props::Blk(p))
            }
            Model::Net => {
                let mut p = NetProps::default();
                for (k, v) in &self.props {
                    match k.as_str() {
                        "netdev" => p.netdev = Some(v.clone()),
                        "mac" => {
                            p.mac = Some(ipc::host::parse_mac(v).ok_or_else(|| {
                                DeviceError::BadValue {
                                    owner: model.inner(),
                                    property: "mac",
                                    value: v.clone(),
                                }
                            })?)
                        }
                        "addr" => p.addr = Some(addr(model, v)?),
                        // The queue pairs come from the netdev, as with QEMU's vhost
                        // backends; the vectors are the transport's own.
                        "mq" => drop(on_off(v, "mq")?),
                        "vectors" => drop(uint(v, "vectors", u32::MAX.into())?),
                        "bootindex" => p.bootindex = Some(boot_index(v)?),
                        _ => return Err(no_property(model, k)),
                    }
                }
                Ok(Props::Net(p))
            }
            // Not a driver device_add knows (by_name): never read.
            Model::Balloon => Err(DeviceError::UnknownDriver(model.typename().into())),
            // Read by devices/cpu.rs.
            Model::Cpu(_) => Err(DeviceError::UnknownDriver(model.typename().into())),
            // Its own (dimm.rs).
            Model::Dimm => Err(DeviceError::UnknownDriver(model.typename().into())),
        }
    }
}

/// QEMU's -device option as a map of options: JSON (`{"driver": ...}`, as QEMU 7.2 takes
/// it) or QemuOpts' key=value form with the driver first.
pub fn cli_options(s: &str) -> Result<Map<String, Value>, String> {
    crate::keyval::json_or_qemu_opts(s, "driver").map_err(|e| format!("JSON parse error, {e}"))
}

impl DeviceSpec {
    /// A device on the command line (QEMU's -device), read as device_add reads its
    /// arguments; a PCI device's properties are read too, so a bad one stops the start
    /// before anything runs. Only function 0 of a slot takes a device here.
    pub fn from_cli(opts: &Map<String, Value>) -> Result<DeviceSpec, DeviceError> {
        let spec = DeviceSpec::read(opts)?;
        if let Model::Blk | Model::Net = spec.model {
            if let Some(Addr { slot, function }) = spec.properties()?.addr() {
                if function != 0 {
                    return Err(DeviceError::NotFunctionZero { slot, function });
                }
            }
        }
        Ok(spec)
    }

    /// The options after id, driver and bus, as QemuOpts keeps them (strings, in order).
    pub fn options(&self) -> &[(String, String)] {
        &self.props
    }
}

pub fn no_property(model: Model, property: &str) -> DeviceError {
    DeviceError::NoProperty {
        owner: model.typename(),
        property: property.to_string(),
    }
}

/// A keyval unsigned integer (qemu_strtou64, base 0: 0x hex, 0 octal), at most `max`.
fn uint(v: &str, property: &'static str, max: u64) -> Result<u32, DeviceError> {
    let (digits, negative) = match v.strip_prefix('-') {
        Some(rest) => (rest, true),
        None => (v.strip_prefix('+').unwrap_or(v), false),
    };
    let parsed = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(hex, 16)
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8)
    } else {
        digits.parse::<u64>()
    };
    let n = parsed.map_err(|_| DeviceError::NotInteger(property))?;
    let ty = if max == u64::from(u16::MAX) {
        "uint16_t"
    } else {
        "uint32_t"
    };
    if negative && n != 0 || n > max {
        return Err(DeviceError::OutOfRange { property, ty });
    }
    Ok(n as u32)
}

/// bootindex= (libvirt sets it on its boot disk), read as QEMU reads it. Only checked
/// (a number, none twice): the VM boots its kernel directly (--kernel), with no firmware
/// to order.
fn boot_index(v: &str) -> Result<i32, DeviceError> {
    let n = crate::keyval::integer(v).ok_or(DeviceError::NotInteger("bootindex"))?;
    i32::try_from(n).map_err(|_| DeviceError::OutOfRange {
        property: "bootindex",
        ty: "int32_t",
    })
}

/// A keyval boolean (qapi_bool_parse).
fn on_off(v: &str, property: &'static str) -> Result<bool, DeviceError> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(DeviceError::NotOnOff(property)),
    }
}

/// sscanf's %x: optional blanks, sign and 0x, then hex digits; the value and where it
/// stopped.
fn scan_hex(s: &str) -> Option<(i64, usize)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    let negative = match bytes.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    if bytes.get(i) == Some(&b'0')
        && matches!(bytes.get(i + 1), Some(b'x' | b'X'))
        && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
    }
    let start = i;
    while i < bytes.len() && bytes[i].is_ascii_hexdigit() {
        i += 1;
    }
    if i == start {
        return None;
    }
    // More digits than an unsigned int holds saturate past any slot.
    let value = i64::from_str_radix(&s[start..i.min(start + 12)], 16).ok()?;
    Some((if negative { -value } else { value }, i))
}

/// QEMU 7.2's set_pci_devfn: "SLOT[.FUNCTION]" in hex, slot at most 0x1f, function 7.
fn addr(model: Model, v: &str) -> Result<Addr, DeviceError> {
    let bad = || DeviceError::BadValue {
        owner: model.typename(),
        property: "addr",
        value: v.to_string(),
    };
    let (slot, function, end) = match scan_hex(v) {
        Some((slot, n)) if v[n..].starts_with('.') => match scan_hex(&v[n + 1..]) {
            Some((function, m)) => (slot, function, n + 1 + m),
            None => (slot, 0, n),
        },
        Some((slot, n)) => (slot, 0, n),
        None => return Err(bad()),
    };
    if end != v.len() || !(0..=31).contains(&slot) || !(0..=7).contains(&function) {
        return Err(bad());
    }
    Ok(Addr {
        slot: slot as u8,
        function: function as u8,
    })
}

/// `addr=` on the command line (--drive, --device): QEMU's syntax (hex slot, optionally
/// `.0`), function 0 of slots 1 to 31: a migration's destination is started with its
/// devices where the source has them.
pub fn launch_slot(v: &str) -> Result<u8, String> {
    match addr(Model::Blk, v) {
        Ok(Addr { slot, function: 0 }) if slot != 0 => Ok(slot),
        _ => Err(format!(
            "addr={v}: a slot of PCI bus 0 (hex, 1 to 1f, optionally .0)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_line_addresses() {
        assert_eq!(launch_slot("5"), Ok(5));
        assert_eq!(launch_slot("0x1f.0"), Ok(31));
        for bad in ["0", "20", "5.1", "x", ""] {
            assert!(launch_slot(bad).is_err(), "{bad}");
        }
    }

    fn read(v: Value) -> Result<DeviceSpec, String> {
        let Value::Object(m) = v else { panic!() };
        DeviceSpec::read(&m).map_err(|e| e.to_string())
    }

    fn props(v: Value) -> Result<Props, String> {
        read(v)?.properties().map_err(|e| e.to_string())
    }

    #[test]
    fn the_options_read_before_the_device_as_qemu_reads_them() {
        assert_eq!(read(json!({})), Err("Parameter 'driver' is missing".into()));
        assert_eq!(
            read(json!({"driver": null})),
            Err("Parameter 'driver' is missing".into())
        );
        assert_eq!(
            read(json!({"driver": 5})),
            Err("'5' is not a valid device model name".into())
        );
        assert_eq!(
            read(json!({"driver": "e1000"})),
            Err("'e1000' is not a valid device model name".into())
        );
        // The id is QemuOpts' first check, before the driver.
        assert_eq!(
            read(json!({"id": "1abc"})),
            Err("Parameter 'id' expects an identifier".into())
        );
        assert_eq!(
            read(json!({"driver": "virtio-net", "id": ""})),
            Err("Parameter 'id' expects an identifier".into())
        );
        // A non-string id is dropped: the device is anonymous.
        let s = read(json!({"driver": "virtio-net", "id": true})).unwrap();
        assert_eq!((s.model, s.id), (Model::Net, None));
        for (bus, err) in [
            ("pci.7", "Bus 'pci.7' not found"),
            ("pcie.0", "Bus 'pcie.0' not found"),
            ("", "Bus '' not found"),
            ("/nope", "Device 'nope' not found"),
            ("pci.0/nic0", "Device 'nic0' not found"),
        ] {
            assert_eq!(
                read(json!({"driver": "virtio-blk-pci", "bus": bus})).map(drop),
                Err(err.to_string()),
                "{bus}"
            );
        }
        for bus in ["pci.0", "pci.0/", "pci.0//"] {
            assert!(read(json!({"driver": "virtio-blk-pci", "bus": bus})).is_ok());
        }
    }

    #[test]
    fn addresses_read_as_set_pci_devfn_reads_them() {
        let at = |a: Value| match props(json!({"driver": "virtio-net-pci", "addr": a})) {
            Ok(p) => Ok(p.addr().map(|a| (a.slot, a.function))),
            Err(e) => Err(e),
        };
        for (a, slot, function) in [
            (json!("4"), 4, 0),
            (json!("04"), 4, 0),
            (json!("0x4.0x0"), 4, 0),
            (json!("1f"), 31, 0),
            (json!("0x1f"), 31, 0),
            (json!(" 4"), 4, 0),
            (json!("4.1"), 4, 1),
            (json!("1f.7"), 31, 7),
            // A number is written out and read as hex, as QemuOpts passes it on.
            (json!(5), 5, 0),
            (json!(10), 0x10, 0),
        ] {
            assert_eq!(at(a.clone()), Ok(Some((slot, function))), "{a}");
        }
        for a in [
            "zz", "0x20", "32", "31", "-1", "4.8", "4.", ".1", "", "4 ", "4.1.1", "g", "on",
        ] {
            assert_eq!(
                at(json!(a)),
                Err(format!(
                    "Property 'virtio-net-pci.addr' doesn't take value '{a}'"
                )),
                "{a}"
            );
        }
        assert_eq!(
            at(json!(true)),
            Err("Property 'virtio-net-pci.addr' doesn't take value 'on'".into())
        );
    }

    #[test]
    fn properties_read_as_qemu_reads_them() {
        assert_eq!(
            props(
                json!({"driver": "virtio-blk-pci", "drive": "d0", "serial": 5,
                          "num-queues": "0x2", "addr": "3", "iothread": "io0"})
            ),
            Ok(Props::Blk(BlkProps {
                drive: Some("d0".into()),
                serial: Some("5".into()),
                num_queues: Some(2),
                addr: Some(Addr {
                    slot: 3,
                    function: 0
                }),
                iothread: Some("io0".into()),
                bootindex: None,
            }))
        );
        // drive= "" is no drive, iothread= "" no iothread; a negative boot index is none.
        assert_eq!(
            props(json!({"driver": "virtio-blk-pci", "drive": "", "iothread": ""})),
            Ok(Props::Blk(BlkProps::default()))
        );
        let boot = |index: Value| {
            props(json!({"driver": "virtio-net-pci", "bootindex": index})).map(|p| p.bootindex())
        };
        assert_eq!(boot(json!(1)), Ok(Some(1)));
        assert_eq!(boot(json!("0x2")), Ok(Some(2)));
        assert_eq!(boot(json!(-5)), Ok(None));
        for (args, err) in [
            (
                json!({"driver": "virtio-blk-pci", "num_queues": 2}),
                "Property 'virtio-blk-pci.num_queues' not found",
            ),
            (
                json!({"driver": "virtio-net-pci", "bogus": "1"}),
                "Property 'virtio-net-pci.bogus' not found",
            ),
            (
                json!({"driver": "virtio-blk-pci", "num-queues": "x"}),
                "Parameter 'num-queues' expects integer",
            ),
            (
                json!({"driver": "virtio-blk-pci", "num-queues": 1.5}),
                "Parameter 'num-queues' expects integer",
            ),
            (
                json!({"driver": "virtio-blk-pci", "num-queues": -1}),
                "Parameter 'num-queues' expects uint16_t",
            ),
            (
                json!({"driver": "virtio-net-pci", "mac": "zz"}),
                "Property 'virtio-net-device.mac' doesn't take value 'zz'",
            ),
            (
                json!({"driver": "virtio-net-pci", "mac": "52:54:00:12:34"}),
                "Property 'virtio-net-device.mac' doesn't take value '52:54:00:12:34'",
            ),
            (
                json!({"driver": "virtio-net-pci", "mq": "maybe"}),
                "Parameter 'mq' expects 'on' or 'off'",
            ),
            (
                json!({"driver": "virtio-net-pci", "vectors": "x"}),
                "Parameter 'vectors' expects integer",
            ),
            (
                json!({"driver": "virtio-blk-pci", "bootindex": "x"}),
                "Parameter 'bootindex' expects integer",
            ),
        ] {
            assert_eq!(
                props(args.clone()).map(drop),
                Err(err.to_string()),
                "{args}"
            );
        }
        // Arrays, objects and null are dropped (a NIC without a netdev, then).
        assert_eq!(
            props(
                json!({"driver": "virtio-net-pci", "netdev": ["n0"], "addr": null,
                          "mq": true, "vectors": 3, "mac": "52:54:00:00:00:01"})
            ),
            Ok(Props::Net(NetProps {
                netdev: None,
                mac: Some([0x52, 0x54, 0, 0, 0, 1]),
                addr: None,
                bootindex: None,
            }))
        );
    }
}
