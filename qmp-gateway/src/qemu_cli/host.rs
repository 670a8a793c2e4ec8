//! The options about the process rather than the guest's hardware: -name, -qmp,
//! -add-fd, and those Flotilla accepts because what they ask for is what it always does
//! (each says why), refusing the values it cannot honour.

use serde_json::Value;

use super::devices::properties;
use super::error::CliError;
use crate::keyval;

fn opts(name: &str, arg: &str, implied: &str) -> Result<Vec<(String, String)>, CliError> {
    let props = properties(arg, implied).map_err(|m| CliError::at(name, Some(arg), m))?;
    Ok(props
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// QEMU's words for a QemuOpts key the option does not have.
fn invalid(name: &str, arg: &str, key: &str) -> CliError {
    CliError::at(name, Some(arg), format!("Invalid parameter '{key}'"))
}

fn on_off(name: &str, arg: &str, key: &str, value: &str) -> Result<bool, CliError> {
    keyval::boolean(value).ok_or_else(|| {
        CliError::at(
            name,
            Some(arg),
            format!("Parameter '{key}' expects 'on' or 'off'"),
        )
    })
}

/// -name guest=NAME[,debug-threads=on|off]: the VM's name. Flotilla's threads always
/// carry names (each process's own), so debug-threads is taken either way.
pub fn name(arg: &str) -> Result<String, CliError> {
    let mut guest = String::new();
    for (key, value) in opts("name", arg, "guest")? {
        match key.as_str() {
            "guest" => guest = value,
            "debug-threads" => {
                on_off("name", arg, &key, &value)?;
            }
            _ => return Err(invalid("name", arg, &key)),
        }
    }
    Ok(guest)
}

/// Where -qmp listens: the gateway's --qmp PATH or --qmp-tcp HOST:PORT.
#[derive(Debug, PartialEq, Eq)]
pub enum Qmp {
    Unix(String),
    Tcp(String),
}

/// -qmp unix:PATH,server=on,wait=off (or tcp:HOST:PORT,...): a listener. The gateway's
/// listeners never wait for a client before the VM starts, so wait=off is required.
pub fn qmp(arg: &str) -> Result<Qmp, CliError> {
    let refuse = |m: &str| CliError::at("qmp", Some(arg), m);
    let parts = keyval::split_options(arg);
    let mut parts = parts.iter();
    let address = parts.next().map(String::as_str).unwrap_or_default();
    let (mut server, mut wait) = (false, true);
    for part in parts {
        let (key, value) = part.split_once('=').unwrap_or((part.as_str(), "on"));
        let (key, value) = match key {
            "nowait" => ("wait", "off"),
            _ => (key, value),
        };
        match key {
            "server" => server = on_off("qmp", arg, key, value)?,
            "wait" => wait = on_off("qmp", arg, key, value)?,
            _ => {
                return Err(refuse(&format!(
                    "Flotilla's -qmp takes server= and wait= only, not '{key}'"
                )))
            }
        }
    }
    if !server || wait {
        return Err(refuse(
            "Flotilla's QMP listeners are servers that do not wait for a client: give \
             server=on,wait=off",
        ));
    }
    if let Some(path) = address.strip_prefix("unix:") {
        return Ok(Qmp::Unix(path.to_string()));
    }
    if let Some(hostport) = address.strip_prefix("tcp:") {
        return Ok(Qmp::Tcp(hostport.to_string()));
    }
    Err(refuse(
        "Flotilla's -qmp listens on unix:PATH or tcp:HOST:PORT only",
    ))
}

/// -add-fd set=N,fd=M[,opaque=S]: checked as QEMU checks it, passed to the gateway.
pub fn add_fd(arg: &str) -> Result<String, CliError> {
    let (mut set, mut fd) = (None, None);
    for (key, value) in opts("add-fd", arg, "fd")? {
        let number = value.parse::<i64>().ok().filter(|n| *n >= 0);
        match key.as_str() {
            "set" => set = number,
            "fd" => fd = number,
            "opaque" => {}
            _ => return Err(invalid("add-fd", arg, &key)),
        }
    }
    let at = |m: &str| CliError::at("add-fd", Some(arg), m);
    if fd.is_none() {
        return Err(at("fd option is required and must be non-negative"));
    }
    if set.is_none() {
        return Err(at("set option is required and must be non-negative"));
    }
    Ok(arg.to_string())
}

/// The options accepted because they ask for what Flotilla always does, checked; none
/// becomes a gateway option.
pub fn accepted(name: &str, arg: &str) -> Result<(), CliError> {
    let refuse = |m: &str| CliError::at(name, Some(arg), m);
    match name {
        // No display device, no graphical console.
        "display" => {
            let kind = opts(name, arg, "type")?
                .into_iter()
                .find(|(k, _)| k == "type")
                .map(|(_, v)| v)
                .unwrap_or_default();
            if kind != "none" {
                return Err(refuse("Flotilla has no display: -display none only"));
            }
        }
        // Guest memory is never locked; mem-lock=off is what Flotilla does.
        "overcommit" => {
            for (key, value) in opts(name, arg, "mem-lock")? {
                match key.as_str() {
                    "mem-lock" | "cpu-pm" => {
                        if on_off(name, arg, &key, &value)? {
                            return Err(refuse(&format!("Flotilla does not support {key}=on")));
                        }
                    }
                    _ => return Err(invalid(name, arg, &key)),
                }
            }
        }
        // There is no RTC device: the guest reads wall time from kvmclock, which is
        // the host's UTC, so base=utc is what the guest gets.
        "rtc" => {
            for (key, value) in opts(name, arg, "base")? {
                match (key.as_str(), value.as_str()) {
                    ("base", "utc") | ("clock", "host") | ("driftfix", "none") => {}
                    ("base" | "clock" | "driftfix", _) => {
                        return Err(refuse(
                            "Flotilla has no RTC: the guest's wall clock is kvmclock's, \
                             UTC (base=utc, clock=host, driftfix=none only)",
                        ))
                    }
                    _ => return Err(invalid(name, arg, &key)),
                }
            }
        }
        // No firmware: the kernel is booted directly, so there is no boot order to be
        // strict about; strict= and menu=off are taken, an order is refused.
        "boot" => {
            for (key, value) in opts(name, arg, "order")? {
                match key.as_str() {
                    "strict" => {
                        on_off(name, arg, "boot.strict", &value).map_err(|_| {
                            CliError::plain("Parameter 'boot.strict' expects 'on' or 'off'")
                        })?;
                    }
                    "menu" if !on_off(name, arg, &key, &value)? => {}
                    _ => {
                        return Err(refuse(
                            "Flotilla has no firmware and boots -kernel directly: -boot \
                             takes strict= and menu=off only",
                        ))
                    }
                }
            }
        }
        // Every Flotilla process is sandboxed always (seccomp, namespaces, Landlock:
        // docs/sandbox.md), more tightly than QEMU's -sandbox asks; the option is
        // checked and the sandbox stays.
        "sandbox" => {
            for (key, value) in opts(name, arg, "enable")? {
                let ok = match key.as_str() {
                    "enable" => {
                        on_off(name, arg, "enable", &value)?;
                        true
                    }
                    "obsolete" | "spawn" | "resourcecontrol" => {
                        ["allow", "deny"].contains(&value.as_str())
                    }
                    "elevateprivileges" => ["allow", "deny", "children"].contains(&value.as_str()),
                    _ => return Err(invalid(name, arg, &key)),
                };
                if !ok {
                    return Err(refuse(&format!("invalid argument for {key}")));
                }
            }
        }
        // Messages are not timestamped (libvirt shows QEMU's last lines either way).
        "msg" => {
            for (key, value) in opts(name, arg, "timestamp")? {
                match key.as_str() {
                    "timestamp" | "guest-name" => {
                        on_off(name, arg, &key, &value)?;
                    }
                    _ => return Err(invalid(name, arg, &key)),
                }
            }
        }
        // No sound devices, so the only audio backend is none.
        "audiodev" => {
            let props = properties(arg, "driver").map_err(|m| CliError::at(name, Some(arg), m))?;
            let driver = props
                .get("driver")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if driver != "none" {
                return Err(refuse("Flotilla has no sound devices: -audiodev none only"));
            }
        }
        _ => return Err(refuse("invalid option")),
    }
    Ok(())
}
