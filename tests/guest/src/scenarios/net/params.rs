//! The network scenarios' command-line parameters: numbers in a range, values that must parse
//! (addresses, ports, MACs), required ones, and `ip=A.B.C.D[/NN]` with `peer=` in its subnet.
//! A bad value is a `GUEST ERROR net: bad KEY=VALUE (...)` line and the scenario runs nothing.

use crate::netproto::{self, Ipv4};
use crate::{cmdline, console};
use core::ops::RangeInclusive;

pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// Longest `ms=`, `wait_ms=`, `timeout_ms=` (a day).
pub const MAX_MS: u64 = 86_400_000;

/// A numeric parameter (decimal, or hex with 0x): Ok(None) if absent; Err after an error
/// line if it does not parse or is outside `range`.
pub fn number_opt(
    cmdline: &[u8],
    key: &str,
    range: RangeInclusive<u64>,
) -> Result<Option<u64>, ()> {
    cmdline::number_in(cmdline, key, range, "net")
}

/// As [`number_opt`], `default` if absent.
pub fn number(
    cmdline: &[u8],
    key: &str,
    default: u64,
    range: RangeInclusive<u64>,
) -> Result<u64, ()> {
    number_opt(cmdline, key, range).map(|value| value.unwrap_or(default))
}

/// A parameter that must parse if present: Ok(None) if absent, Err after an error line.
pub fn parsed<T>(
    cmdline: &[u8],
    key: &str,
    what: &str,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> Result<Option<T>, ()> {
    match cmdline::param(cmdline, key) {
        None => Ok(None),
        Some(text) => match parse(text) {
            Some(value) => Ok(Some(value)),
            None => {
                console::error("net: bad ")
                    .s(key)
                    .s("=")
                    .ascii(text)
                    .s(" (")
                    .s(what)
                    .s(")")
                    .end();
                Err(())
            }
        },
    }
}

pub fn required<T>(value: Option<T>, key: &str, scenario: &str) -> Result<T, ()> {
    value.ok_or_else(|| {
        console::error("net: ")
            .s(scenario)
            .s(" needs ")
            .s(key)
            .s("=")
            .end();
    })
}

pub fn port(text: &[u8]) -> Option<u16> {
    cmdline::parse_u64(text)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
}

/// Default prefix length of `ip=` without `/NN`.
const DEFAULT_PREFIX: u8 = 24;

/// An address with its prefix length (`A.B.C.D/NN`).
pub type Interface = (Ipv4, u8);

/// `A.B.C.D[/NN]` (prefix length 0-32, default 24).
fn parse_ip_prefix(text: &[u8]) -> Option<Interface> {
    let mut parts = text.splitn(2, |&b| b == b'/');
    let ip = netproto::parse_ip(parts.next()?)?;
    let prefix = match parts.next() {
        None => DEFAULT_PREFIX,
        Some(bits) if !bits.is_empty() && bits.len() <= 2 => cmdline::parse_u64(bits)
            .filter(|&b| b <= 32)
            .map(|b| b as u8)?,
        Some(_) => return None,
    };
    Some((ip, prefix))
}

/// Reads `ip=A.B.C.D[/NN]` and `peer=A.B.C.D` (which must be inside ip's subnet: there is no
/// routing); Err after an error line.
pub fn addresses(cmdline: &[u8]) -> Result<(Option<Interface>, Option<Ipv4>), ()> {
    let ip = parsed(cmdline, "ip", "A.B.C.D or A.B.C.D/NN", parse_ip_prefix)?;
    let peer = parsed(cmdline, "peer", "A.B.C.D", netproto::parse_ip)?;
    if let (Some((ip, prefix)), Some(peer)) = (ip, peer) {
        if !netproto::same_subnet(ip, peer, netproto::mask(prefix)) {
            let line = console::error("net: peer=");
            let line = netproto::print_ip(line, peer).s(" is not in ");
            let line = netproto::print_ip(line, ip);
            line.s("/").dec(u64::from(prefix)).s(" (no routing)").end();
            return Err(());
        }
    }
    Ok((ip, peer))
}
