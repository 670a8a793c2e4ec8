//! A disk's migration channel: what a migration agent and a block daemon say to each
//! other on the socket pair the gateway hands them for a block migration (QMP migrate's
//! `blk` and `inc`). On the source the agent reads the disk as the guest sees it, asks
//! which bytes the top image holds (`inc`), and takes the chunks the guest wrote since
//! its last take (the daemon marks them); on the destination it writes what arrives
//! through the image's format. Data never passes through the gateway.
//!
//! One request, one reply, in order. Integers are little-endian. A request is a type
//! byte and its fields; a WRITE's data follows it. A reply is `0` (done, then what the
//! request asks for) or `1` (refused, then a text: `u32` length, at most 4096 bytes of
//! UTF-8). Every length is checked against its bound before anything is read into
//! memory, and byte ranges are whole 512-byte sectors.
//!
//! | type | request | fields | reply after `0` |
//! |---|---|---|---|
//! | 1 | READ | `u64` offset, `u32` len (1..=1 MiB) | `u8` 0 then len bytes, or `u8` 1: they read as zeroes |
//! | 2 | ALLOCATED | `u64` offset, `u64` len | `u8` whether the top image holds them, `u64` for how many bytes (1..=len) |
//! | 3 | TAKE | none | `u64` bytes taken: what the guest wrote since the last take |
//! | 4 | RUNS | `u32` max (1..=256) | `u32` n (<= max), n × (`u64` offset, `u64` len): taken bytes, handed out once |
//! | 5 | PENDING | none | `u64` bytes written since the last take |
//! | 6 | WRITE | `u64` offset, `u32` len (1..=1 MiB), len bytes | nothing |
//! | 7 | ZERO | `u64` offset, `u64` len (1..=1 GiB) | nothing |
//! | 8 | FLUSH | none | nothing |

use std::io::{self, Read, Write};

/// Most bytes one READ or WRITE moves.
pub const MAX_IO: u32 = 1 << 20;
/// Most bytes one ZERO covers.
pub const MAX_ZERO: u64 = 1 << 30;
/// Most runs one RUNS reply lists.
pub const MAX_RUNS: u32 = 256;
/// Ranges are whole sectors.
pub const SECTOR: u64 = 512;
const MAX_TEXT: u32 = 4096;

const READ: u8 = 1;
const ALLOCATED: u8 = 2;
const TAKE: u8 = 3;
const RUNS: u8 = 4;
const PENDING: u8 = 5;
const WRITE: u8 = 6;
const ZERO: u8 = 7;
const FLUSH: u8 = 8;

const DONE: u8 = 0;
const REFUSED: u8 = 1;

const DATA: u8 = 0;
const ZEROES: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("malformed disk channel message: {0}")]
    Malformed(String),
    /// The other side's own words for why it did not do it.
    #[error("{0}")]
    Refused(String),
}

fn malformed(what: impl Into<String>) -> ChannelError {
    ChannelError::Malformed(what.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read {
        offset: u64,
        len: u32,
    },
    Allocated {
        offset: u64,
        len: u64,
    },
    Take,
    Runs {
        max: u32,
    },
    Pending,
    /// `len` bytes of data follow the request on the channel.
    Write {
        offset: u64,
        len: u32,
    },
    Zero {
        offset: u64,
        len: u64,
    },
    Flush,
}

fn u8_of(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn u32_of(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_of(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

impl Request {
    /// The request's bytes (a WRITE's data is written after them by the caller).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(17);
        match *self {
            Request::Read { offset, len } => {
                b.push(READ);
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
            }
            Request::Allocated { offset, len } => {
                b.push(ALLOCATED);
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
            }
            Request::Take => b.push(TAKE),
            Request::Runs { max } => {
                b.push(RUNS);
                b.extend_from_slice(&max.to_le_bytes());
            }
            Request::Pending => b.push(PENDING),
            Request::Write { offset, len } => {
                b.push(WRITE);
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
            }
            Request::Zero { offset, len } => {
                b.push(ZERO);
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
            }
            Request::Flush => b.push(FLUSH),
        }
        b
    }

    /// The next request; None when the peer closed the channel between requests. The
    /// lengths are checked against their bounds (a WRITE's data is left to the caller).
    pub fn read_from(r: &mut impl Read) -> Result<Option<Request>, ChannelError> {
        let mut kind = [0u8; 1];
        loop {
            match r.read(&mut kind) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let request = match kind[0] {
            READ => Request::Read {
                offset: u64_of(r)?,
                len: u32_of(r)?,
            },
            ALLOCATED => Request::Allocated {
                offset: u64_of(r)?,
                len: u64_of(r)?,
            },
            TAKE => Request::Take,
            RUNS => Request::Runs { max: u32_of(r)? },
            PENDING => Request::Pending,
            WRITE => Request::Write {
                offset: u64_of(r)?,
                len: u32_of(r)?,
            },
            ZERO => Request::Zero {
                offset: u64_of(r)?,
                len: u64_of(r)?,
            },
            FLUSH => Request::Flush,
            other => return Err(malformed(format!("request type {other}"))),
        };
        match request {
            Request::Read { len, .. } | Request::Write { len, .. } if len == 0 || len > MAX_IO => {
                Err(malformed(format!("{len} bytes in one request")))
            }
            Request::Zero { len, .. } if len == 0 || len > MAX_ZERO => {
                Err(malformed(format!("a zero run of {len} bytes")))
            }
            Request::Allocated { len: 0, .. } => Err(malformed("an empty range")),
            Request::Runs { max } if max == 0 || max > MAX_RUNS => {
                Err(malformed(format!("{max} runs asked for")))
            }
            ok => Ok(Some(ok)),
        }
    }
}

/// Whether `len` bytes at `offset` are whole sectors of a disk of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<(), String> {
    if !offset.is_multiple_of(SECTOR) || !len.is_multiple_of(SECTOR) {
        return Err(format!(
            "bytes {offset}+{len} are not whole {SECTOR}-byte sectors"
        ));
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(format!(
            "bytes {offset}+{len} lie beyond the disk's {size} bytes"
        ));
    }
    Ok(())
}

/// The daemon's side: the replies.
pub mod reply {
    use super::*;

    /// Refused, with the reason.
    pub fn refused(w: &mut impl Write, why: &str) -> io::Result<()> {
        let text = &why.as_bytes()[..why.len().min(MAX_TEXT as usize)];
        let mut b = Vec::with_capacity(5 + text.len());
        b.push(REFUSED);
        b.extend_from_slice(&(text.len() as u32).to_le_bytes());
        b.extend_from_slice(text);
        w.write_all(&b)
    }

    /// Done, nothing more to say (WRITE, ZERO, FLUSH).
    pub fn done(w: &mut impl Write) -> io::Result<()> {
        w.write_all(&[DONE])
    }

    /// READ's answer: the bytes, or that they read as zeroes.
    pub fn read(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
        if data.iter().all(|&b| b == 0) {
            return w.write_all(&[DONE, ZEROES]);
        }
        w.write_all(&[DONE, DATA])?;
        w.write_all(data)
    }

    pub fn allocated(w: &mut impl Write, allocated: bool, run: u64) -> io::Result<()> {
        let mut b = vec![DONE, u8::from(allocated)];
        b.extend_from_slice(&run.to_le_bytes());
        w.write_all(&b)
    }

    /// TAKE's and PENDING's answer.
    pub fn bytes(w: &mut impl Write, bytes: u64) -> io::Result<()> {
        let mut b = vec![DONE];
        b.extend_from_slice(&bytes.to_le_bytes());
        w.write_all(&b)
    }

    pub fn runs(w: &mut impl Write, runs: &[(u64, u64)]) -> io::Result<()> {
        let mut b = Vec::with_capacity(5 + 16 * runs.len());
        b.push(DONE);
        b.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for (offset, len) in runs {
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
        }
        w.write_all(&b)
    }
}

/// The agent's side: one call per request, its reply read and checked.
pub struct Client<S> {
    channel: S,
}

impl<S> Client<S>
where
    for<'a> &'a S: Read + Write,
{
    pub fn new(channel: S) -> Client<S> {
        Client { channel }
    }

    pub fn channel(&self) -> &S {
        &self.channel
    }

    /// Sends `request` (and `data` after it) and reads the status of the reply.
    fn call(&self, request: Request, data: &[u8]) -> Result<(), ChannelError> {
        let mut c = &self.channel;
        let mut b = request.encode();
        b.extend_from_slice(data);
        c.write_all(&b)?;
        match u8_of(&mut c)? {
            DONE => Ok(()),
            REFUSED => {
                let n = u32_of(&mut c)?;
                if n > MAX_TEXT {
                    return Err(malformed(format!("a text of {n} bytes")));
                }
                let mut text = vec![0u8; n as usize];
                c.read_exact(&mut text)?;
                Err(ChannelError::Refused(
                    String::from_utf8_lossy(&text).into_owned(),
                ))
            }
            other => Err(malformed(format!("reply status {other}"))),
        }
    }

    /// Reads `buf.len()` bytes (whole sectors, at most MAX_IO) at `offset`; true when
    /// they read as zeroes (`buf` is then left as it was).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<bool, ChannelError> {
        let len = u32::try_from(buf.len())
            .ok()
            .filter(|l| (1..=MAX_IO).contains(l))
            .ok_or_else(|| malformed(format!("a read of {} bytes", buf.len())))?;
        self.call(Request::Read { offset, len }, &[])?;
        let mut c = &self.channel;
        match u8_of(&mut c)? {
            DATA => {
                c.read_exact(buf)?;
                Ok(false)
            }
            ZEROES => Ok(true),
            other => Err(malformed(format!("read reply kind {other}"))),
        }
    }

    /// Whether the top image holds the bytes at `offset`, and for how many of `len`.
    pub fn allocated(&self, offset: u64, len: u64) -> Result<(bool, u64), ChannelError> {
        self.call(Request::Allocated { offset, len }, &[])?;
        let mut c = &self.channel;
        let allocated = u8_of(&mut c)? != 0;
        let run = u64_of(&mut c)?;
        if run == 0 || run > len {
            return Err(malformed(format!(
                "an allocation run of {run} bytes in {len}"
            )));
        }
        Ok((allocated, run))
    }

    fn bytes(&self, request: Request) -> Result<u64, ChannelError> {
        self.call(request, &[])?;
        Ok(u64_of(&mut &self.channel)?)
    }

    /// Takes what the guest wrote since the last take: the bytes taken.
    pub fn take(&self) -> Result<u64, ChannelError> {
        self.bytes(Request::Take)
    }

    /// Bytes the guest wrote since the last take.
    pub fn pending(&self) -> Result<u64, ChannelError> {
        self.bytes(Request::Pending)
    }

    /// Up to `max` runs of the bytes taken (each handed out once); empty once all were.
    pub fn runs(&self, max: u32) -> Result<Vec<(u64, u64)>, ChannelError> {
        self.call(Request::Runs { max }, &[])?;
        let mut c = &self.channel;
        let n = u32_of(&mut c)?;
        if n > max {
            return Err(malformed(format!("{n} runs for {max} asked")));
        }
        (0..n)
            .map(|_| {
                let (offset, len) = (u64_of(&mut c)?, u64_of(&mut c)?);
                if len == 0 {
                    return Err(malformed("an empty run"));
                }
                Ok((offset, len))
            })
            .collect()
    }

    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), ChannelError> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|l| (1..=MAX_IO).contains(l))
            .ok_or_else(|| malformed(format!("a write of {} bytes", data.len())))?;
        self.call(Request::Write { offset, len }, data)
    }

    pub fn zero(&self, offset: u64, len: u64) -> Result<(), ChannelError> {
        self.call(Request::Zero { offset, len }, &[])
    }

    pub fn flush(&self) -> Result<(), ChannelError> {
        self.call(Request::Flush, &[])
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A peer that answers each request with what `answer` writes, on its own thread.
    fn peer(
        answer: impl Fn(Request, &mut UnixStream) + Send + 'static,
    ) -> (Client<UnixStream>, std::thread::JoinHandle<Vec<Request>>) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Ok(Some(r)) = Request::read_from(&mut theirs) {
                if let Request::Write { len, .. } = r {
                    let mut data = vec![0u8; len as usize];
                    theirs.read_exact(&mut data).unwrap();
                }
                seen.push(r);
                answer(r, &mut theirs);
            }
            seen
        });
        (Client::new(ours), t)
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let (client, t) = peer(|r, w| match r {
            Request::Read { offset: 0, .. } => reply::read(w, &[0u8; 1024]).unwrap(),
            Request::Read { .. } => reply::read(w, &[7u8; 1024]).unwrap(),
            Request::Allocated { .. } => reply::allocated(w, true, 4096).unwrap(),
            Request::Take | Request::Pending => reply::bytes(w, 65536).unwrap(),
            Request::Runs { .. } => reply::runs(w, &[(0, 512), (4096, 8192)]).unwrap(),
            Request::Flush => reply::refused(w, "no space").unwrap(),
            _ => reply::done(w).unwrap(),
        });
        let mut buf = [1u8; 1024];
        assert!(client.read(0, &mut buf).unwrap());
        assert_eq!(buf, [1u8; 1024], "zeroes leave the buffer");
        assert!(!client.read(1024, &mut buf).unwrap());
        assert_eq!(buf, [7u8; 1024]);
        assert_eq!(client.allocated(0, 1 << 20).unwrap(), (true, 4096));
        assert_eq!(client.take().unwrap(), 65536);
        assert_eq!(client.pending().unwrap(), 65536);
        assert_eq!(client.runs(8).unwrap(), [(0, 512), (4096, 8192)]);
        client.write(512, &[3u8; 512]).unwrap();
        client.zero(0, 1 << 20).unwrap();
        match client.flush() {
            Err(ChannelError::Refused(why)) => assert_eq!(why, "no space"),
            other => panic!("{other:?}"),
        }
        drop(client);
        assert_eq!(t.join().unwrap().len(), 9);
    }

    #[test]
    fn bad_requests_are_refused_before_anything_is_read() {
        for bad in [
            Request::Read {
                offset: 0,
                len: MAX_IO + 1,
            }
            .encode(),
            Request::Write { offset: 0, len: 0 }.encode(),
            Request::Zero {
                offset: 0,
                len: MAX_ZERO + 1,
            }
            .encode(),
            Request::Runs { max: MAX_RUNS + 1 }.encode(),
            Request::Allocated { offset: 0, len: 0 }.encode(),
            vec![99],
        ] {
            assert!(
                matches!(
                    Request::read_from(&mut bad.as_slice()),
                    Err(ChannelError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        assert!(Request::read_from(&mut &[][..]).unwrap().is_none());
        // Cut short inside a request.
        assert!(matches!(
            Request::read_from(&mut &[READ, 0, 0][..]),
            Err(ChannelError::Io(_))
        ));
    }

    #[test]
    fn bad_replies_are_errors() {
        // A reply out of bounds leaves the channel out of step: each on a channel of
        // its own.
        let (client, _t) = peer(|_, w| reply::runs(w, &[(0, 512); 3]).unwrap());
        assert!(matches!(client.runs(2), Err(ChannelError::Malformed(_))));
        let (client, _t) = peer(|_, w| reply::allocated(w, true, 0).unwrap());
        assert!(matches!(
            client.allocated(0, 512),
            Err(ChannelError::Malformed(_))
        ));
        let (client, _t) = peer(|_, w| w.write_all(&[9]).unwrap());
        assert!(matches!(client.flush(), Err(ChannelError::Malformed(_))));
        let (client, _t) = peer(|_, w| {
            w.write_all(&[REFUSED]).unwrap();
            w.write_all(&(MAX_TEXT + 1).to_le_bytes()).unwrap();
        });
        assert!(matches!(client.flush(), Err(ChannelError::Malformed(_))));
        // A peer gone.
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let gone = Client::new(ours);
        assert!(matches!(gone.take(), Err(ChannelError::Io(_))));
    }

    #[test]
    fn ranges_are_whole_sectors_inside_the_disk() {
        assert!(check_range(0, 512, 512).is_ok());
        assert!(check_range(512, 512, 512).is_err());
        assert!(check_range(1, 512, 4096).is_err());
        assert!(check_range(u64::MAX - 511, 512, u64::MAX).is_err());
    }
}
