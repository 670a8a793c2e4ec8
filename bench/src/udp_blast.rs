//! A UDP load generator for the network benchmark: sends datagrams of one size to one
//! address as fast as one thread can (sendmmsg, 64 at a time) for a while, then prints
//! how many it sent. The same sender feeds a guest (through a tap) and the veth pair that
//! gives the host's own limit, so only what is behind the address differs.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

const BATCH: usize = 64;

#[derive(Parser, Debug)]
struct Args {
    /// Where to send: HOST:PORT.
    #[arg(long)]
    to: String,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 1472)]
    size: usize,
    /// How long to send, in milliseconds.
    #[arg(long, default_value_t = 4000)]
    ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding")?;
    sock.connect(&args.to)
        .with_context(|| format!("connecting to {}", args.to))?;
    let payload = vec![0x5au8; args.size.clamp(8, 65507)];
    let mut iovs: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    // Each message points at its iovec.
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data, for which all zeroes is a valid value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let end = Instant::now() + Duration::from_millis(args.ms);
    let (mut sent, mut refused) = (0u64, 0u64);
    while Instant::now() < end {
        // SAFETY: msgs and the buffers they point at live across the call.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            // A full queue or an ICMP error from an earlier datagram: keep going.
            refused += 1;
        }
    }
    println!("sent={sent} size={} refused_calls={refused}", payload.len());
    Ok(())
}
