//! A client's outgoing messages: a byte-bounded queue drained by the client's writer
//! thread. A client that stops reading fills its outbox and is disconnected, instead of
//! stalling the gateway or growing its memory.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::conn::Conn;
use super::pretty::pretty_line;

/// Most bytes queued for one client.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;

#[derive(Default)]
struct State {
    queue: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: bool,
    /// Closed because it overflowed (a slow or stuck client).
    overflowed: bool,
    /// The writer has sent everything it will send and ended.
    finished: bool,
    /// Commands running whose reply is still to come: a close (the gateway ending)
    /// lets the writer wait for those replies, which the client is owed.
    owed: usize,
}

impl State {
    /// Whether the writer has nothing more to send once its queue is empty.
    fn done(&self) -> bool {
        self.closed && (self.owed == 0 || self.overflowed)
    }
}

/// A command's reply, owed to the client from the command's start: it is sent even if
/// the outbox is closed while the command runs.
pub struct OwedReply<'a> {
    outbox: &'a Outbox,
    sent: bool,
}

impl OwedReply<'_> {
    /// Queues the reply; false if the client is gone.
    pub fn send(mut self, msg: Vec<u8>) -> bool {
        self.sent = true;
        let mut st = self.outbox.state.lock();
        // Queued under the same lock: the writer never sees nothing owed and nothing
        // queued in between.
        st.owed -= 1;
        if st.overflowed || st.finished {
            drop(st);
            self.outbox.cv.notify_all();
            return false;
        }
        self.outbox.enqueue(st, msg)
    }
}

impl Drop for OwedReply<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.outbox.state.lock().owed -= 1;
            self.outbox.cv.notify_all();
        }
    }
}

pub struct Outbox {
    state: Mutex<State>,
    cv: Condvar,
    conn: Conn,
    /// Messages go out in QMP's pretty form (a monitor's pretty=on).
    pretty: bool,
}

impl Outbox {
    pub fn new(conn: Conn) -> Outbox {
        Outbox::with_form(conn, false)
    }

    /// An outbox whose messages go out pretty if `pretty`.
    pub fn with_form(conn: Conn, pretty: bool) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            conn,
            pretty,
        }
    }

    /// Queues one message; false if the client is gone (or has just been dropped for
    /// not reading).
    pub fn push(&self, msg: Vec<u8>) -> bool {
        let st = self.state.lock();
        if st.closed {
            return false;
        }
        self.enqueue(st, msg)
    }

    fn enqueue(&self, mut st: MutexGuard<'_, State>, msg: Vec<u8>) -> bool {
        if st.bytes + msg.len() > MAX_QUEUED_BYTES {
            log::warn!("QMP client is not reading its replies and events; disconnecting it");
            st.closed = true;
            st.overflowed = true;
            st.queue.clear();
            drop(st);
            self.conn.shutdown();
            self.cv.notify_all();
            return false;
        }
        st.bytes += msg.len();
        st.queue.push_back(msg);
        drop(st);
        self.cv.notify_all();
        true
    }

    /// A command starts: its reply is owed (sent with [`OwedReply::send`]). None if the
    /// outbox is closed already: the command is not run.
    pub fn owe_reply(&self) -> Option<OwedReply<'_>> {
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        st.owed += 1;
        Some(OwedReply {
            outbox: self,
            sent: false,
        })
    }

    /// No more messages: the writer sends what is queued and the replies of the
    /// commands running, then ends.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.cv.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// True once the writer thread has ended (all it could send is sent).
    pub fn is_finished(&self) -> bool {
        self.state.lock().finished
    }

    /// Waits until the writer has ended or `deadline` passed; whether it ended. Woken by
    /// the writer's end, not by a timer.
    pub fn wait_finished(&self, deadline: Instant) -> bool {
        let mut st = self.state.lock();
        while !st.finished {
            if self.cv.wait_until(&mut st, deadline).timed_out() {
                return st.finished;
            }
        }
        true
    }

    /// The writer thread's loop; returns when closed and drained, or on a write error.
    pub fn run_writer(&self) {
        let mut writer = self.conn.clone_for_writing();
        loop {
            let msg = {
                let mut st = self.state.lock();
                loop {
                    if let Some(m) = st.queue.pop_front() {
                        st.bytes -= m.len();
                        break Some(m);
                    }
                    if st.done() {
                        break None;
                    }
                    self.cv.wait(&mut st);
                }
            };
            let Some(mut msg) = msg else { break };
            if self.pretty {
                msg = pretty_line(&msg);
            }
            if writer
                .as_mut()
                .map(|w| w.write_all(&msg))
                .is_none_or(|r| r.is_err())
            {
                self.state.lock().closed = true;
                break;
            }
        }
        self.conn.shutdown();
        self.state.lock().finished = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// An outbox with its writer thread, and the client's end.
    fn outbox_with_writer() -> (Arc<Outbox>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let outbox = Arc::new(Outbox::new(Conn::Unix(ours)));
        let writer = outbox.clone();
        std::thread::spawn(move || writer.run_writer());
        (outbox, theirs)
    }

    /// The wait at the gateway's end is woken by the writer's end (what it queued
    /// delivered), not by a timer; a writer that cannot end is given up at the deadline.
    #[test]
    fn wait_finished_wakes_when_the_writer_ends() {
        let (outbox, mut theirs) = outbox_with_writer();
        assert!(outbox.push(b"{\"event\": \"SHUTDOWN\"}\r\n".to_vec()));
        assert!(!outbox.wait_finished(Instant::now() + Duration::from_millis(50)));
        outbox.close();
        let start = Instant::now();
        assert!(outbox.wait_finished(start + Duration::from_secs(10)));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        let mut got = String::new();
        theirs.read_to_string(&mut got).unwrap();
        assert_eq!(got, "{\"event\": \"SHUTDOWN\"}\r\n");
    }

    /// A command that runs when the gateway ends (closes every outbox) still gets its
    /// reply out; one that comes after the close is not run.
    #[test]
    fn a_reply_owed_before_the_close_is_sent() {
        let (outbox, mut theirs) = outbox_with_writer();
        let reply = outbox.owe_reply().expect("open outbox");
        outbox.close();
        assert!(outbox.owe_reply().is_none());
        assert!(!outbox.push(b"{\"event\": \"SHUTDOWN\"}\r\n".to_vec()));
        assert!(!outbox.wait_finished(Instant::now() + Duration::from_millis(50)));
        assert!(reply.send(b"{\"return\": {}}\r\n".to_vec()));
        assert!(outbox.wait_finished(Instant::now() + Duration::from_secs(10)));
        let mut got = String::new();
        theirs.read_to_string(&mut got).unwrap();
        assert_eq!(got, "{\"return\": {}}\r\n");
    }

    /// A command that ends without a reply (its owner dropped it) does not hold the
    /// writer open.
    #[test]
    fn a_dropped_owed_reply_lets_the_writer_end() {
        let (outbox, _theirs) = outbox_with_writer();
        let reply = outbox.owe_reply().expect("open outbox");
        outbox.close();
        assert!(!outbox.wait_finished(Instant::now() + Duration::from_millis(50)));
        drop(reply);
        assert!(outbox.wait_finished(Instant::now() + Duration::from_secs(10)));
    }
}
