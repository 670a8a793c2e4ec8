//! The QMP listeners (Unix sockets and TCP) and one reader and one writer thread per
//! client, any number of clients at once.

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::conn::Conn;
use super::json_stream::JsonStream;
use super::outbox::Outbox;
use super::protocol;
use super::session::Session;
use crate::gateway::Gateway;

/// Most clients served at once; more are turned away.
pub const MAX_CLIENTS: usize = 256;
/// Most fds a client may have sent ahead of the command that takes them.
pub const MAX_PENDING_FDS: usize = 16;

#[derive(Clone)]
pub struct Server {
    gw: Arc<Gateway>,
    clients: Arc<AtomicUsize>,
}

impl Server {
    pub fn new(gw: Arc<Gateway>) -> Server {
        Server {
            gw,
            clients: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn serve_unix(&self, listener: UnixListener) -> std::io::Result<()> {
        let server = self.clone();
        std::thread::Builder::new()
            .name("qmp-accept".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    server.accept(Conn::Unix(conn));
                }
            })?;
        Ok(())
    }

    pub fn serve_tcp(&self, listener: TcpListener) -> std::io::Result<()> {
        let server = self.clone();
        std::thread::Builder::new()
            .name("qmp-accept-tcp".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let _ = conn.set_nodelay(true);
                    server.accept(Conn::Tcp(conn));
                }
            })?;
        Ok(())
    }

    fn accept(&self, conn: Conn) {
        if self.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            self.clients.fetch_sub(1, Ordering::SeqCst);
            log::warn!("QMP: {MAX_CLIENTS} clients already connected; turning one away");
            conn.shutdown();
            return;
        }
        let server = self.clone();
        let spawned = std::thread::Builder::new()
            .name("qmp-client".into())
            .spawn(move || {
                server.client(conn);
                server.clients.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::error!("QMP: cannot start a client thread: {e}");
            self.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn client(&self, conn: Conn) {
        let outbox = match conn.try_clone() {
            Ok(c) => Arc::new(Outbox::new(c)),
            Err(e) => {
                log::warn!("QMP client: {e}");
                return;
            }
        };
        let writer = outbox.clone();
        if std::thread::Builder::new()
            .name("qmp-writer".into())
            .spawn(move || writer.run_writer())
            .is_err()
        {
            return;
        }
        outbox.push(protocol::greeting());
        let mut session = Session::new(self.gw.clone(), outbox.clone());
        let mut stream = JsonStream::default();
        let mut pending: Vec<OwnedFd> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (n, fds) = match conn.read(&mut buf, MAX_PENDING_FDS) {
                Ok(r) => r,
                Err(_) => break,
            };
            pending.extend(fds);
            if pending.len() > MAX_PENDING_FDS {
                log::warn!(
                    "QMP client sent more than {MAX_PENDING_FDS} unclaimed fds; closing the oldest"
                );
                let extra = pending.len() - MAX_PENDING_FDS;
                pending.drain(..extra);
            }
            if n == 0 {
                break;
            }
            for item in stream.feed(&buf[..n]) {
                session.handle(item, &mut pending);
            }
            if outbox.is_closed() {
                break;
            }
        }
        outbox.close();
    }
}
