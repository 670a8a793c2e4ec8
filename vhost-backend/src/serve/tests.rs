//! A frontend played byte by byte over a socket pair against `serve_stream`: QEMU's early
//! SET_VRING_ENABLE (acknowledged, then applied once the features arrive), hang-ups in
//! the middle of a message, oversized messages, and fresh state for every connection.
//! The test device, `Recorder`, serves the dirty log's tests too.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;
use crate::rings::Rings;
use crate::vring::Vring;
use crate::watch::HostWatch;

const QUEUES: usize = 2;
const QSIZE: u16 = 16;
const MEM_SIZE: u64 = 0x10000;
/// Where the frontend has guest memory in its own address space.
const FRONTEND_BASE: u64 = 0x7000_0000;
const VERSION: u32 = 1;
const NEED_REPLY: u32 = 0x8;
const REPLY: u32 = 0x4;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const VERSION_1: u64 = 1 << 32;
const WAIT: Duration = Duration::from_secs(5);

/// Says which rings it was asked to serve, and how often a frontend went away. It
/// completes every chain it finds, filling its device-writable buffers as a block read
/// does, and once done with a kick says how many it completed (if any).
#[derive(Clone)]
pub(crate) struct Recorder {
    kicks: Arc<parking_lot::Mutex<Sender<usize>>>,
    completions: Arc<parking_lot::Mutex<Sender<usize>>>,
    disconnects: Arc<AtomicUsize>,
}

impl Recorder {
    /// The device, and which rings it was asked to serve.
    fn new() -> (Recorder, Receiver<usize>) {
        let (dev, kicks, _) = Recorder::with_receivers();
        (dev, kicks)
    }

    /// The device, and how many chains it completed on each kick that completed some.
    pub(crate) fn completing() -> (Recorder, Receiver<usize>) {
        let (dev, _, completions) = Recorder::with_receivers();
        (dev, completions)
    }

    fn with_receivers() -> (Recorder, Receiver<usize>, Receiver<usize>) {
        let (kicks, kicks_rx) = mpsc::channel();
        let (completions, completions_rx) = mpsc::channel();
        let dev = Recorder {
            kicks: Arc::new(parking_lot::Mutex::new(kicks)),
            completions: Arc::new(parking_lot::Mutex::new(completions)),
            disconnects: Arc::new(AtomicUsize::new(0)),
        };
        (dev, kicks_rx, completions_rx)
    }
}

impl Device for Recorder {
    fn num_queues(&self) -> usize {
        QUEUES
    }

    fn max_queue_size(&self) -> u16 {
        QSIZE
    }

    fn features(&self) -> u64 {
        VERSION_1
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }

    fn read_config(&self, _offset: u32, size: u32) -> Vec<u8> {
        vec![0; size as usize]
    }

    fn host_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    fn queue_kicked(
        &self,
        q: usize,
        ring: &mut Vring,
        mem: &Arc<vm_memory::GuestMemoryMmap>,
        _watch: &HostWatch,
    ) -> std::io::Result<()> {
        ring.disable_notification(mem)?;
        let mut completed = 0;
        while let Some((head, chain)) = ring.pop_chain(mem) {
            let mut written = 0;
            for d in chain.unwrap_or_default().iter().filter(|d| d.writable) {
                mem.write_slice(&vec![0xab; d.len as usize], GuestAddress(d.addr))
                    .map_err(std::io::Error::other)?;
                written += d.len;
            }
            ring.add_used(mem, head, written)?;
            completed += 1;
        }
        ring.enable_notification(mem)?;
        if completed > 0 {
            ring.notify(mem)?;
            let _ = self.completions.lock().send(completed);
        }
        let _ = self.kicks.lock().send(q);
        Ok(())
    }

    fn host_ready(
        &self,
        _source: usize,
        _rings: &Rings,
        _mem: Option<&Arc<vm_memory::GuestMemoryMmap>>,
        _watch: &HostWatch,
    ) -> std::io::Result<()> {
        Ok(())
    }

    fn disconnected(&self) {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

/// The frontend's end of a connection being served in a thread of its own.
struct Frontend {
    sock: UnixStream,
    served: Receiver<Result<(), ServeError>>,
}

fn connect(dev: &Recorder) -> Frontend {
    let (sock, backend) = UnixStream::pair().unwrap();
    let (tx, served) = mpsc::channel();
    let dev = dev.clone();
    std::thread::spawn(move || {
        let _ = tx.send(serve_stream(&dev, backend));
    });
    Frontend { sock, served }
}

fn header(request: FrontendReq, flags: u32, size: u32) -> Vec<u8> {
    [u32::from(request), flags, size]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

fn eventfd() -> File {
    // SAFETY: eventfd with integer arguments; the fd is ours alone.
    File::from(unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) })
}

impl Frontend {
    fn send(&self, request: FrontendReq, flags: u32, body: &[u8], fds: &[RawFd]) {
        let mut bytes = header(request, VERSION | flags, body.len() as u32);
        bytes.extend_from_slice(body);
        if fds.is_empty() {
            (&self.sock).write_all(&bytes).unwrap();
        } else {
            let sent = self.sock.send_with_fds(&[&bytes[..]], fds).unwrap();
            assert_eq!(sent, bytes.len());
        }
    }

    /// Reads a reply to `request`: its body.
    fn reply(&self, request: FrontendReq) -> Vec<u8> {
        let mut head = [0u8; 12];
        (&self.sock).read_exact(&mut head).unwrap();
        let word = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap());
        assert_eq!(word(0), u32::from(request));
        assert_eq!(word(4), VERSION | REPLY);
        let mut body = vec![0; word(8) as usize];
        (&self.sock).read_exact(&mut body).unwrap();
        body
    }

    fn u64_reply(&self, request: FrontendReq) -> u64 {
        u64::from_le_bytes(self.reply(request).try_into().unwrap())
    }

    /// Sends with NEED_REPLY and returns the acknowledgement (0: done).
    fn call(&self, request: FrontendReq, body: &[u8], fds: &[RawFd]) -> u64 {
        self.send(request, NEED_REPLY, body, fds);
        self.u64_reply(request)
    }

    fn get(&self, request: FrontendReq) -> u64 {
        self.send(request, 0, &[], &[]);
        self.u64_reply(request)
    }

    /// Ownership and protocol features with REPLY_ACK, as QEMU starts.
    fn negotiate_protocol(&self) {
        self.send(FrontendReq::SET_OWNER, 0, &[], &[]);
        assert_ne!(self.get(FrontendReq::GET_FEATURES) & PROTOCOL_FEATURES, 0);
        let offered = self.get(FrontendReq::GET_PROTOCOL_FEATURES);
        let wanted = (VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ).bits();
        assert_eq!(offered & wanted, wanted);
        assert_eq!(
            self.call(
                FrontendReq::SET_PROTOCOL_FEATURES,
                &wanted.to_le_bytes(),
                &[]
            ),
            0
        );
    }

    fn enable(&self, ring: u32, state: u32, need_reply: bool) -> Option<u64> {
        let body = [ring.to_le_bytes(), state.to_le_bytes()].concat();
        if need_reply {
            Some(self.call(FrontendReq::SET_VRING_ENABLE, &body, &[]))
        } else {
            self.send(FrontendReq::SET_VRING_ENABLE, 0, &body, &[]);
            None
        }
    }

    /// Guest memory: one region of a memfd.
    fn set_memory(&self, memfd: &File) {
        let mut body = Vec::new();
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for v in [0, MEM_SIZE, FRONTEND_BASE, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            self.call(FrontendReq::SET_MEM_TABLE, &body, &[memfd.as_raw_fd()]),
            0
        );
    }

    /// Ring `q` set up and started (its kick fd given last, as QEMU does).
    fn start_ring(&self, q: u32, call: &File, kick: &File) {
        let state = |num: u32| [q.to_le_bytes(), num.to_le_bytes()].concat();
        assert_eq!(
            self.call(FrontendReq::SET_VRING_NUM, &state(u32::from(QSIZE)), &[]),
            0
        );
        let base = FRONTEND_BASE + 0x1000 + 0x3000 * u64::from(q);
        let mut addr = Vec::new();
        addr.extend_from_slice(&q.to_le_bytes());
        addr.extend_from_slice(&0u32.to_le_bytes());
        for v in [base, base + 0x2000, base + 0x1000, 0] {
            addr.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(self.call(FrontendReq::SET_VRING_ADDR, &addr, &[]), 0);
        assert_eq!(self.call(FrontendReq::SET_VRING_BASE, &state(0), &[]), 0);
        let index = u64::from(q).to_le_bytes();
        assert_eq!(
            self.call(FrontendReq::SET_VRING_CALL, &index, &[call.as_raw_fd()]),
            0
        );
        assert_eq!(
            self.call(FrontendReq::SET_VRING_KICK, &index, &[kick.as_raw_fd()]),
            0
        );
    }

    fn served(&self) -> Result<(), ServeError> {
        self.served
            .recv_timeout(WAIT)
            .expect("the connection ended")
    }
}

/// A memfd of `len` bytes (guest memory, a log).
pub(crate) fn memfd(len: u64) -> File {
    // SAFETY: memfd_create with a valid C string; the fd is ours alone.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: as above.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(len).unwrap();
    f
}

#[test]
fn an_early_enable_is_acknowledged_and_applied_once_the_features_arrive() {
    let (dev, kicks) = Recorder::new();
    let front = connect(&dev);
    front.negotiate_protocol();
    // Before SET_FEATURES, as QEMU 7.2's vhost-user-net does: ring 0 on, ring 1 on and
    // then off again (the last state counts), a ring the device does not have refused.
    assert_eq!(front.enable(0, 1, true), Some(0));
    assert_eq!(front.enable(1, 1, false), None);
    assert_eq!(front.enable(1, 0, true), Some(0));
    assert_eq!(front.enable(7, 1, true), Some(1));
    assert_eq!(front.enable(0, 2, true), Some(1));
    let features = PROTOCOL_FEATURES | VERSION_1;
    assert_eq!(
        front.call(FrontendReq::SET_FEATURES, &features.to_le_bytes(), &[]),
        0
    );
    let mem = memfd(MEM_SIZE);
    front.set_memory(&mem);
    let fds: Vec<(File, File)> = (0..QUEUES).map(|_| (eventfd(), eventfd())).collect();
    for (q, (call, kick)) in fds.iter().enumerate() {
        front.start_ring(q as u32, call, kick);
    }
    // Ring 0 went live enabled: the device is asked to serve it. Ring 1 stays disabled.
    assert_eq!(kicks.recv_timeout(WAIT), Ok(0));
    assert_eq!(
        kicks.recv_timeout(Duration::from_millis(300)),
        Err(RecvTimeoutError::Timeout)
    );
    // Once the features are in, enables go through the vhost crate as any message.
    assert_eq!(front.enable(1, 1, true), Some(0));
    assert_eq!(kicks.recv_timeout(WAIT), Ok(1));
    front.sock.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(front.served().is_ok());
    assert_eq!(dev.disconnects.load(Ordering::SeqCst), 1);
}

#[test]
fn without_reply_ack_an_early_enable_gets_no_reply() {
    let (dev, _kicks) = Recorder::new();
    let front = connect(&dev);
    front.send(FrontendReq::SET_OWNER, 0, &[], &[]);
    let body = [0u32.to_le_bytes(), 1u32.to_le_bytes()].concat();
    front.send(FrontendReq::SET_VRING_ENABLE, NEED_REPLY, &body, &[]);
    // Had the enable been answered, its reply would come before this one.
    assert_ne!(front.get(FrontendReq::GET_FEATURES) & PROTOCOL_FEATURES, 0);
}

#[test]
fn a_frontend_that_hangs_up_in_the_middle_of_a_message_ends_its_connection_normally() {
    let (dev, _kicks) = Recorder::new();
    // Inside a header.
    let front = connect(&dev);
    (&front.sock)
        .write_all(&header(FrontendReq::SET_FEATURES, VERSION, 8)[..6])
        .unwrap();
    front.sock.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(front.served().is_ok());
    // Inside the body of an early enable, which the framework reads itself.
    let front = connect(&dev);
    let mut bytes = header(FrontendReq::SET_VRING_ENABLE, VERSION, 8);
    bytes.extend_from_slice(&[0, 0, 0]);
    (&front.sock).write_all(&bytes).unwrap();
    front.sock.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(front.served().is_ok());
    assert_eq!(dev.disconnects.load(Ordering::SeqCst), 2);
}

#[test]
fn a_message_that_announces_too_much_ends_the_connection_with_an_error() {
    let (dev, _kicks) = Recorder::new();
    for request in [FrontendReq::SET_FEATURES, FrontendReq::SET_VRING_ENABLE] {
        let front = connect(&dev);
        (&front.sock)
            .write_all(&header(request, VERSION, u32::MAX))
            .unwrap();
        let result = front.served();
        assert!(
            matches!(
                result,
                Err(ServeError::Connection(VhostError::InvalidMessage))
            ),
            "{result:?}"
        );
    }
}

#[test]
fn every_connection_starts_fresh() {
    let (dev, _kicks) = Recorder::new();
    let first = connect(&dev);
    first.negotiate_protocol();
    // A second SET_OWNER on one connection is refused, and ends it.
    assert_eq!(first.call(FrontendReq::SET_OWNER, &[], &[]), 1);
    assert!(first.served().is_err());
    // The next frontend owns the device from scratch.
    let second = connect(&dev);
    second.negotiate_protocol();
    assert_eq!(
        second.call(FrontendReq::SET_FEATURES, &VERSION_1.to_le_bytes(), &[]),
        0
    );
    second.sock.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(second.served().is_ok());
}

/// A daemon killed after putting a completion on the used ring but before calling the
/// driver took that interrupt with it; the daemon after it cannot tell. Every call fd a
/// frontend gives is called once, so the driver looks at its used ring again.
#[test]
fn every_new_call_fd_is_called_once_so_an_interrupt_lost_with_the_last_daemon_is_not_waited_for() {
    let (dev, _kicks) = Recorder::new();
    let front = connect(&dev);
    front.negotiate_protocol();
    let count = |f: &File| {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes from a nonblocking eventfd into a local buffer.
        let n = unsafe { libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n == 8 {
            u64::from_ne_bytes(buf)
        } else {
            0
        }
    };
    let nonblocking = |f: &File| {
        // SAFETY: fcntl on our own fd with integer arguments.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    };
    for q in 0..QUEUES as u64 {
        let call = eventfd();
        nonblocking(&call);
        assert_eq!(
            front.call(
                FrontendReq::SET_VRING_CALL,
                &q.to_le_bytes(),
                &[call.as_raw_fd()]
            ),
            0
        );
        assert_eq!(count(&call), 1, "queue {q}'s new call fd was not called");
        assert_eq!(count(&call), 0, "called once");
    }
    // Without a fd (VHOST_USER_VRING_NOFD_MASK) there is nothing to call, and no error.
    let nofd = 1u64 << 8;
    assert_eq!(
        front.call(FrontendReq::SET_VRING_CALL, &nofd.to_le_bytes(), &[]),
        0
    );
    front.sock.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(front.served().is_ok());
}
