//! Ethernet (with an optional 802.1Q tag), ARP, IPv4, ICMP echo and UDP: parsing of received
//! frames and building of frames to send, with the Internet checksum. Just what the network
//! scenarios (scenarios/net/) need: no fragments, no IP options on frames we build, no
//! routing. Plain byte-slice code that runs in ring 3; all multi-byte fields are big-endian
//! (network order) unless a scenario's payload says otherwise.

pub type Mac = [u8; 6];
pub type Ipv4 = [u8; 4];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETH_HEADER: usize = 14;
pub const VLAN_TAG: usize = 4;
/// Smallest Ethernet frame without the FCS; shorter frames we build are padded with zeroes.
pub const ETH_MIN_FRAME: usize = 60;
pub const ARP_LEN: usize = 28;
pub const IPV4_HEADER: usize = 20;
pub const UDP_HEADER: usize = 8;
/// Largest UDP payload in one standard Ethernet frame (1500 - 20 - 8).
pub const MAX_UDP_PAYLOAD: usize = 1472;
pub const ICMP_ECHO_HEADER: usize = 8;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_UDP: u8 = 17;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const IP_TTL: u8 = 64;
/// Don't Fragment (we never fragment).
const IP_DF: u16 = 0x4000;

pub fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

pub fn put_be16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn mac_at(bytes: &[u8], at: usize) -> Mac {
    let mut mac = [0; 6];
    mac.copy_from_slice(&bytes[at..at + 6]);
    mac
}

fn ip_at(bytes: &[u8], at: usize) -> Ipv4 {
    let mut ip = [0; 4];
    ip.copy_from_slice(&bytes[at..at + 4]);
    ip
}

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last byte is padded with
/// zero), added to `acc`, not yet folded.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        acc += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum from [`sum`] into the 16-bit Internet checksum (RFC 1071), complemented.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data`. A header or message that carries its own checksum is
/// intact when this is 0.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum(data, 0))
}

/// A received Ethernet frame.
pub struct Eth<'a> {
    pub dst: Mac,
    pub src: Mac,
    /// The 802.1Q tag control information (PCP, DEI, VLAN ID) if the frame had one.
    pub vlan: Option<u16>,
    pub ethertype: u16,
    pub payload: &'a [u8],
}

pub fn parse_eth(frame: &[u8]) -> Option<Eth<'_>> {
    if frame.len() < ETH_HEADER {
        return None;
    }
    let outer = be16(frame, 12);
    let (vlan, ethertype, start) = if outer == ETHERTYPE_VLAN {
        if frame.len() < ETH_HEADER + VLAN_TAG {
            return None;
        }
        (
            Some(be16(frame, 14)),
            be16(frame, 16),
            ETH_HEADER + VLAN_TAG,
        )
    } else {
        (None, outer, ETH_HEADER)
    };
    Some(Eth {
        dst: mac_at(frame, 0),
        src: mac_at(frame, 6),
        vlan,
        ethertype,
        payload: &frame[start..],
    })
}

/// Writes an Ethernet header (with an 802.1Q tag if `vlan` is given) and returns its length.
pub fn put_eth(out: &mut [u8], dst: Mac, src: Mac, vlan: Option<u16>, ethertype: u16) -> usize {
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    match vlan {
        Some(tci) => {
            put_be16(out, 12, ETHERTYPE_VLAN);
            put_be16(out, 14, tci);
            put_be16(out, 16, ethertype);
            ETH_HEADER + VLAN_TAG
        }
        None => {
            put_be16(out, 12, ethertype);
            ETH_HEADER
        }
    }
}

/// Pads a frame of `len` bytes with zeroes to the Ethernet minimum; returns the new length.
pub fn pad(out: &mut [u8], len: usize) -> usize {
    if len < ETH_MIN_FRAME {
        out[len..ETH_MIN_FRAME].fill(0);
        ETH_MIN_FRAME
    } else {
        len
    }
}

/// An ARP packet for IPv4 over Ethernet.
pub struct Arp {
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4,
    pub target_ip: Ipv4,
}

pub fn parse_arp(p: &[u8]) -> Option<Arp> {
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4.
    if p.len() < ARP_LEN
        || be16(p, 0) != 1
        || be16(p, 2) != ETHERTYPE_IPV4
        || p[4] != 6
        || p[5] != 4
    {
        return None;
    }
    Some(Arp {
        op: be16(p, 6),
        sender_mac: mac_at(p, 8),
        sender_ip: ip_at(p, 14),
        target_ip: ip_at(p, 24),
    })
}

/// Builds a whole ARP frame (padded) and returns its length.
#[allow(clippy::too_many_arguments)]
pub fn build_arp(
    out: &mut [u8],
    eth_dst: Mac,
    vlan: Option<u16>,
    op: u16,
    sender_mac: Mac,
    sender_ip: Ipv4,
    target_mac: Mac,
    target_ip: Ipv4,
) -> usize {
    let at = put_eth(out, eth_dst, sender_mac, vlan, ETHERTYPE_ARP);
    let p = &mut out[at..at + ARP_LEN];
    put_be16(p, 0, 1);
    put_be16(p, 2, ETHERTYPE_IPV4);
    p[4] = 6;
    p[5] = 4;
    put_be16(p, 6, op);
    p[8..14].copy_from_slice(&sender_mac);
    p[14..18].copy_from_slice(&sender_ip);
    p[18..24].copy_from_slice(&target_mac);
    p[24..28].copy_from_slice(&target_ip);
    pad(out, at + ARP_LEN)
}

/// A received IPv4 packet (header checksum verified, not a fragment).
pub struct Ip<'a> {
    pub src: Ipv4,
    pub dst: Ipv4,
    pub protocol: u8,
    pub payload: &'a [u8],
}

/// Why a frame was not used (for counters).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    Truncated,
    Checksum,
    Fragment,
}

pub fn parse_ipv4(p: &[u8]) -> Result<Ip<'_>, Bad> {
    if p.len() < IPV4_HEADER || p[0] >> 4 != 4 {
        return Err(Bad::Truncated);
    }
    let header = usize::from(p[0] & 0xf) * 4;
    let total = usize::from(be16(p, 2));
    // Ethernet may pad short packets: the IP total length is what counts.
    if header < IPV4_HEADER || total < header || total > p.len() {
        return Err(Bad::Truncated);
    }
    if checksum(&p[..header]) != 0 {
        return Err(Bad::Checksum);
    }
    let fragment = be16(p, 6);
    // More Fragments set, or a non-zero fragment offset.
    if fragment & 0x2000 != 0 || fragment & 0x1fff != 0 {
        return Err(Bad::Fragment);
    }
    Ok(Ip {
        src: ip_at(p, 12),
        dst: ip_at(p, 16),
        protocol: p[9],
        payload: &p[header..total],
    })
}

/// Writes a 20-byte IPv4 header (DF, TTL 64, checksum filled in) for `payload_len` bytes of
/// payload and returns its length.
pub fn put_ipv4(
    out: &mut [u8],
    src: Ipv4,
    dst: Ipv4,
    protocol: u8,
    payload_len: usize,
    id: u16,
) -> usize {
    let h = &mut out[..IPV4_HEADER];
    h[0] = 0x45;
    h[1] = 0;
    put_be16(h, 2, (IPV4_HEADER + payload_len) as u16);
    put_be16(h, 4, id);
    put_be16(h, 6, IP_DF);
    h[8] = IP_TTL;
    h[9] = protocol;
    put_be16(h, 10, 0);
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let sum = checksum(h);
    put_be16(h, 10, sum);
    IPV4_HEADER
}

/// Whether an ICMP message is an intact echo request.
pub fn is_echo_request(icmp: &[u8]) -> Result<bool, Bad> {
    if icmp.len() < ICMP_ECHO_HEADER {
        return Err(Bad::Truncated);
    }
    if checksum(icmp) != 0 {
        return Err(Bad::Checksum);
    }
    Ok(icmp[0] == ICMP_ECHO_REQUEST && icmp[1] == 0)
}

/// Builds the echo reply to `request` (an intact ICMP echo request, see [`is_echo_request`]):
/// same identifier, sequence number and data. Returns the frame's length, or None if it does
/// not fit `out`.
#[allow(clippy::too_many_arguments)]
pub fn build_echo_reply(
    out: &mut [u8],
    our_mac: Mac,
    their_mac: Mac,
    vlan: Option<u16>,
    our_ip: Ipv4,
    their_ip: Ipv4,
    request: &[u8],
    id: u16,
) -> Option<usize> {
    let eth = if vlan.is_some() {
        ETH_HEADER + VLAN_TAG
    } else {
        ETH_HEADER
    };
    let len = eth + IPV4_HEADER + request.len();
    if len > out.len() {
        return None;
    }
    put_eth(out, their_mac, our_mac, vlan, ETHERTYPE_IPV4);
    put_ipv4(
        &mut out[eth..],
        our_ip,
        their_ip,
        PROTO_ICMP,
        request.len(),
        id,
    );
    let icmp = &mut out[eth + IPV4_HEADER..len];
    icmp.copy_from_slice(request);
    icmp[0] = ICMP_ECHO_REPLY;
    icmp[1] = 0;
    put_be16(icmp, 2, 0);
    let sum = checksum(icmp);
    put_be16(icmp, 2, sum);
    Some(pad(out, len))
}

/// A received UDP datagram (checksum verified when the sender gave one).
pub struct Udp<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

fn pseudo_header_sum(src: Ipv4, dst: Ipv4, udp_len: usize) -> u64 {
    let acc = sum(&src, 0);
    let acc = sum(&dst, acc);
    acc + u64::from(PROTO_UDP) + udp_len as u64
}

pub fn parse_udp<'a>(ip: &Ip<'a>) -> Result<Udp<'a>, Bad> {
    let p = ip.payload;
    if p.len() < UDP_HEADER {
        return Err(Bad::Truncated);
    }
    let len = usize::from(be16(p, 4));
    if len < UDP_HEADER || len > p.len() {
        return Err(Bad::Truncated);
    }
    if be16(p, 6) != 0 && fold(sum(&p[..len], pseudo_header_sum(ip.src, ip.dst, len))) != 0 {
        return Err(Bad::Checksum);
    }
    Ok(Udp {
        src_port: be16(p, 0),
        dst_port: be16(p, 2),
        payload: &p[UDP_HEADER..len],
    })
}

/// Where a UDP frame's parts are, for [`build_udp_headers`] / [`finish_udp_checksum`].
pub struct UdpLayout {
    /// Offset of the UDP header in the frame.
    pub udp: usize,
    /// Offset of the payload in the frame.
    pub payload: usize,
    /// Length of the whole frame (padded to the Ethernet minimum).
    pub frame_len: usize,
}

/// The fields of a UDP datagram to build.
pub struct UdpSpec {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    /// 802.1Q tag control information, if the frame is to be tagged.
    pub vlan: Option<u16>,
    pub src_ip: Ipv4,
    pub dst_ip: Ipv4,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: usize,
    pub ip_id: u16,
}

/// Writes the Ethernet, IPv4 and UDP headers of a datagram with `spec.payload_len` payload
/// bytes (UDP checksum 0, i.e. none, until [`finish_udp_checksum`]) and returns the layout;
/// None if it does not fit `out`. The caller writes the payload at `layout.payload`.
pub fn build_udp_headers(out: &mut [u8], spec: &UdpSpec) -> Option<UdpLayout> {
    let eth = if spec.vlan.is_some() {
        ETH_HEADER + VLAN_TAG
    } else {
        ETH_HEADER
    };
    let udp = eth + IPV4_HEADER;
    let payload = udp + UDP_HEADER;
    let end = payload + spec.payload_len;
    if end > out.len() || spec.payload_len > usize::from(u16::MAX) - IPV4_HEADER - UDP_HEADER {
        return None;
    }
    put_eth(out, spec.dst_mac, spec.src_mac, spec.vlan, ETHERTYPE_IPV4);
    put_ipv4(
        &mut out[eth..],
        spec.src_ip,
        spec.dst_ip,
        PROTO_UDP,
        UDP_HEADER + spec.payload_len,
        spec.ip_id,
    );
    let h = &mut out[udp..payload];
    put_be16(h, 0, spec.src_port);
    put_be16(h, 2, spec.dst_port);
    put_be16(h, 4, (UDP_HEADER + spec.payload_len) as u16);
    put_be16(h, 6, 0);
    let frame_len = pad(out, end);
    Some(UdpLayout {
        udp,
        payload,
        frame_len,
    })
}

/// Computes and stores the UDP checksum of a datagram laid out by [`build_udp_headers`]
/// (payload already written).
pub fn finish_udp_checksum(out: &mut [u8], layout: &UdpLayout, src: Ipv4, dst: Ipv4) {
    let udp_len = usize::from(be16(out, layout.udp + 4));
    let datagram = &mut out[layout.udp..layout.udp + udp_len];
    put_be16(datagram, 6, 0);
    let mut value = fold(sum(datagram, pseudo_header_sum(src, dst, udp_len)));
    // 0 means "no checksum" in UDP over IPv4: a computed 0 is sent as 0xffff.
    if value == 0 {
        value = 0xffff;
    }
    put_be16(datagram, 6, value);
}

/// Parses `A.B.C.D`.
pub fn parse_ip(text: &[u8]) -> Option<Ipv4> {
    let mut ip = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for byte in &mut ip {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = part.iter().fold(0u32, |v, &d| v * 10 + u32::from(d - b'0'));
        *byte = u8::try_from(value).ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// Parses `xx:xx:xx:xx:xx:xx` (hex, either case).
pub fn parse_mac(text: &[u8]) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(|&b| b == b':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        let hi = (part[0] as char).to_digit(16)?;
        let lo = (part[1] as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    parts.next().is_none().then_some(mac)
}

/// The network mask with `bits` leading ones.
pub fn mask(bits: u8) -> Ipv4 {
    let value = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(bits.min(32)))
    };
    value.to_be_bytes()
}

pub fn same_subnet(a: Ipv4, b: Ipv4, mask: Ipv4) -> bool {
    (0..4).all(|i| a[i] & mask[i] == b[i] & mask[i])
}

/// Appends `xx:xx:xx:xx:xx:xx` to a console line.
pub fn print_mac(mut line: crate::console::Line, mac: Mac) -> crate::console::Line {
    for (i, &byte) in mac.iter().enumerate() {
        if i != 0 {
            line = line.s(":");
        }
        line = line.hex_digits(u64::from(byte), 2);
    }
    line
}

/// Appends `A.B.C.D` to a console line.
pub fn print_ip(mut line: crate::console::Line, ip: Ipv4) -> crate::console::Line {
    for (i, &byte) in ip.iter().enumerate() {
        if i != 0 {
            line = line.s(".");
        }
        line = line.dec(u64::from(byte));
    }
    line
}
