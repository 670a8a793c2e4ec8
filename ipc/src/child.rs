//! A child process's end of its control channel with the gateway: the first call (which
//! opens the node or NIC, or launches the VM, and brings the fds), the gateway's later
//! calls, the answers, and the events the child raises on its own. The gateway's end is
//! in qmp-gateway; the message types of each child are in `messages`.

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::connection::Connection;
use crate::error::IpcError;
use crate::messages::{Call, Message, RemoteError, Upcall};

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("control channel: {0}")]
    Ipc(#[from] IpcError),
    #[error("control channel: the gateway hung up before {0}")]
    HungUpFirst(&'static str),
    #[error("control channel: expected {expected} first, got {got}")]
    NotFirst { expected: &'static str, got: String },
}

/// One call from the gateway: its number (for the answer), the request and its fds.
#[derive(Debug)]
pub struct IncomingCall<R> {
    pub id: u64,
    pub request: R,
    pub fds: Vec<OwnedFd>,
}

/// The link, typed by the child's requests `R`, replies `T` and events `E`. Cloning it
/// shares the socket: any thread may answer or raise an event; one thread receives.
pub struct ChildLink<R, T, E> {
    conn: Arc<Connection>,
    kinds: PhantomData<fn(R) -> (T, E)>,
}

impl<R, T, E> Clone for ChildLink<R, T, E> {
    fn clone(&self) -> Self {
        ChildLink {
            conn: self.conn.clone(),
            kinds: PhantomData,
        }
    }
}

impl<R, T, E> ChildLink<R, T, E>
where
    R: Serialize + DeserializeOwned + std::fmt::Debug,
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
    Call<R>: Message,
    Upcall<T, E>: Message,
{
    pub fn new(stream: UnixStream) -> Self {
        ChildLink {
            conn: Arc::new(Connection::new(stream)),
            kinds: PhantomData,
        }
    }

    /// The next call; None once the gateway hung up (and so the VM is gone).
    pub fn recv(&self) -> Result<Option<IncomingCall<R>>, IpcError> {
        Ok(self.conn.recv::<Call<R>>()?.map(|r| IncomingCall {
            id: r.msg.id,
            request: r.msg.request,
            fds: r.fds,
        }))
    }

    /// Closes the channel both ways: the parent's reader sees it end.
    pub fn hang_up(&self) {
        self.conn.shutdown();
    }

    /// The first call, which must be the one `take` accepts (the open or the launch,
    /// named `expected` in errors; `before` says what a hang-up came before).
    pub fn recv_first<C>(
        &self,
        expected: &'static str,
        before: &'static str,
        take: impl FnOnce(R) -> Option<C>,
    ) -> Result<(u64, C, Vec<OwnedFd>), ChildError> {
        let call = self.recv()?.ok_or(ChildError::HungUpFirst(before))?;
        // Formatted up front (once per process) so that `take` may consume the request.
        let got = format!("{:?}", call.request);
        match take(call.request) {
            Some(c) => Ok((call.id, c, call.fds)),
            None => Err(ChildError::NotFirst { expected, got }),
        }
    }

    /// Answers the gateway's calls with `handle` until one that `is_quit` says ends the
    /// child (answered first) or the gateway hangs up (the VM it served is gone).
    pub fn answer_calls(
        &self,
        is_quit: impl Fn(&R) -> bool,
        mut handle: impl FnMut(R, Vec<OwnedFd>) -> Result<T, RemoteError>,
    ) -> Result<(), IpcError> {
        self.answer_calls_with_fds(is_quit, |request, fds| {
            handle(request, fds).map(|answer| (answer, Vec::new()))
        })
    }

    /// `answer_calls`, where an answer may hand fds over (as `reply_with_fds`).
    pub fn answer_calls_with_fds(
        &self,
        is_quit: impl Fn(&R) -> bool,
        mut handle: impl FnMut(R, Vec<OwnedFd>) -> Result<(T, Vec<OwnedFd>), RemoteError>,
    ) -> Result<(), IpcError> {
        while let Some(call) = self.recv()? {
            let quit = is_quit(&call.request);
            match handle(call.request, call.fds) {
                Ok((answer, fds)) => {
                    let fds: Vec<BorrowedFd> = fds.iter().map(|f| f.as_fd()).collect();
                    self.reply_with_fds(call.id, Ok(answer), &fds);
                }
                Err(e) => self.reply(call.id, Err(e)),
            }
            if quit {
                break;
            }
        }
        Ok(())
    }

    /// Answers call `id`. A gateway that is gone cannot be told: that is logged, and the
    /// child learns of it at its next receive.
    pub fn reply(&self, id: u64, result: Result<T, RemoteError>) {
        self.reply_with_fds(id, result, &[]);
    }

    /// Answers call `id` with the fds the answer declares (memory it hands over).
    pub fn reply_with_fds(&self, id: u64, result: Result<T, RemoteError>, fds: &[BorrowedFd]) {
        if let Err(e) = self
            .conn
            .send(&Upcall::<T, E>::Response { id, result }, fds)
        {
            log::warn!("replying to the gateway: {e}");
        }
    }

    /// Raises an event (logged if the gateway is gone, as for `reply`).
    pub fn event(&self, event: E) {
        if let Err(e) = self.conn.send(&Upcall::<T, E>::Event(event), &[]) {
            log::warn!("sending an event to the gateway: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{BlockEvent, BlockReply, BlockRequest, FromBlock, ToBlock};

    type BlockLink = ChildLink<BlockRequest, BlockReply, BlockEvent>;

    fn first_open(link: &BlockLink) -> Result<(u64, (), Vec<OwnedFd>), ChildError> {
        link.recv_first("the open call", "opening a node", |r| match r {
            BlockRequest::Open(_) => Some(()),
            _ => None,
        })
    }

    #[test]
    fn the_first_call_must_come_and_be_the_right_one() {
        let (gateway, child) = UnixStream::pair().unwrap();
        drop(gateway);
        let err = first_open(&BlockLink::new(child)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "control channel: the gateway hung up before opening a node"
        );

        let (gateway, child) = UnixStream::pair().unwrap();
        let gateway = Connection::new(gateway);
        let call = ToBlock {
            id: 7,
            request: BlockRequest::Stats,
        };
        gateway.send(&call, &[]).unwrap();
        let err = first_open(&BlockLink::new(child)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "control channel: expected the open call first, got Stats"
        );
    }

    #[test]
    fn answers_and_events_reach_the_gateway() {
        let (gateway, child) = UnixStream::pair().unwrap();
        let gateway = Connection::new(gateway);
        let link = BlockLink::new(child);
        gateway
            .send(
                &ToBlock {
                    id: 3,
                    request: BlockRequest::Quit,
                },
                &[],
            )
            .unwrap();
        let call = link.recv().unwrap().unwrap();
        assert_eq!((call.id, call.request), (3, BlockRequest::Quit));
        link.reply(3, Ok(BlockReply::Done));
        link.clone().event(BlockEvent::WriteThreshold {
            node_name: "n".into(),
            amount_exceeded: 1,
            threshold: 2,
        });
        let answer = gateway.recv::<FromBlock>().unwrap().unwrap().msg;
        assert_eq!(
            answer,
            FromBlock::Response {
                id: 3,
                result: Ok(BlockReply::Done)
            }
        );
        assert!(matches!(
            gateway.recv::<FromBlock>().unwrap().unwrap().msg,
            FromBlock::Event(BlockEvent::WriteThreshold { .. })
        ));
        drop(gateway);
        assert!(link.recv().unwrap().is_none());
    }
}
