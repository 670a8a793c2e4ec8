//! One client's QMP session: capabilities negotiation, then commands. Without OOB every
//! command runs in order on the reader thread. With OOB negotiated, in-band commands go
//! to a worker through a short queue (a client that floods it stops being read) while
//! exec-oob commands run at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use super::args;
use super::commands::{self, COMMANDS};
use super::context::{Ctx, ReceivedFd};
use super::handlers::machine::QmpCapabilities;
use super::json_stream::Item;
use super::outbox::Outbox;
use super::protocol::{self, parse_request, QmpError, QmpResult, Request};
use crate::fdstore::{Account, NamedFds};
use crate::gateway::{ExitReason, Gateway};

/// In-band requests queued per client (QEMU's limit too).
pub const INBAND_QUEUE: usize = 8;

/// Numbers clients in trace lines, in the order they came.
static CLIENTS: AtomicU64 = AtomicU64::new(1);

enum Job {
    Execute(Request, Vec<ReceivedFd>),
    Reply(Vec<u8>),
}

/// A client's fds: its named ones, and its account with the fd budget (which every fd it
/// makes the gateway hold is charged to).
pub struct ClientFds {
    pub named: NamedFds,
    pub account: Account,
}

pub struct Session {
    gw: Arc<Gateway>,
    outbox: Arc<Outbox>,
    fds: Arc<ClientFds>,
    /// Shared with the client's slot, which it keeps once set.
    negotiated: Arc<AtomicBool>,
    oob: bool,
    inband: Option<SyncSender<Job>>,
    /// Its number in trace lines.
    number: u64,
}

impl Session {
    pub fn new(
        gw: Arc<Gateway>,
        outbox: Arc<Outbox>,
        account: Account,
        negotiated: Arc<AtomicBool>,
    ) -> Session {
        Session {
            gw,
            outbox,
            fds: Arc::new(ClientFds {
                named: NamedFds::default(),
                account,
            }),
            negotiated,
            oob: false,
            inband: None,
            number: CLIENTS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The client's account with the fd budget (what it sends is charged there).
    pub fn fd_account(&self) -> &Account {
        &self.fds.account
    }

    /// Whether the client has negotiated capabilities.
    pub fn negotiated(&self) -> bool {
        self.negotiated.load(Ordering::SeqCst)
    }

    /// Handles one value (or limit error) from the input stream; `fds` are the fds
    /// received so far, which a command takes.
    pub fn handle(&mut self, item: Item, fds: &mut Vec<ReceivedFd>) {
        let text = match item {
            Item::Value(text) => text,
            Item::TooLarge => {
                return self.reply_in_order(error_line("JSON token size limit exceeded"))
            }
            Item::TooDeep => {
                return self.reply_in_order(error_line("JSON nesting depth limit exceeded"))
            }
        };
        let request = match parse_request(&text, self.oob) {
            Ok(r) => r,
            Err(rejected) => {
                return self.reply_in_order(protocol::response(Err(rejected.error), rejected.id))
            }
        };
        let fds = std::mem::take(fds);
        if !self.negotiated() {
            return self.negotiate(request);
        }
        match &self.inband {
            Some(queue) if !request.oob => {
                // Blocks when the queue is full: the reader stops reading this client.
                let _ = queue.send(Job::Execute(request, fds));
            }
            _ => execute(
                &self.gw,
                (&self.fds, self.number),
                &self.outbox,
                request,
                fds,
            ),
        }
    }

    fn reply_in_order(&mut self, line: Vec<u8>) {
        match &self.inband {
            Some(queue) => {
                let _ = queue.send(Job::Reply(line));
            }
            None => {
                self.outbox.push(line);
            }
        }
    }

    fn negotiate(&mut self, request: Request) {
        if request.command != "qmp_capabilities" {
            let e =
                QmpError::not_found("Expecting capabilities negotiation with 'qmp_capabilities'");
            self.outbox.push(protocol::response(Err(e), request.id));
            return;
        }
        let capabilities = match args::read::<QmpCapabilities>(request.arguments) {
            Ok(c) => c,
            Err(e) => {
                self.outbox.push(protocol::response(Err(e), request.id));
                return;
            }
        };
        self.oob = capabilities.oob();
        self.negotiated.store(true, Ordering::SeqCst);
        if self.oob {
            self.start_inband_worker();
        }
        self.gw.events.subscribe(
            &self.outbox,
            protocol::response(Ok(serde_json::json!({})), request.id),
        );
    }

    fn start_inband_worker(&mut self) {
        let (tx, rx) = mpsc::sync_channel::<Job>(INBAND_QUEUE);
        let (gw, outbox, client) = (self.gw.clone(), self.outbox.clone(), self.fds.clone());
        let number = self.number;
        let spawned = std::thread::Builder::new()
            .name("qmp-inband".into())
            .spawn(move || {
                for job in rx {
                    // A client that left does not get the commands it queued run.
                    if outbox.is_closed() {
                        continue;
                    }
                    match job {
                        Job::Execute(request, fds) => {
                            execute(&gw, (&client, number), &outbox, request, fds)
                        }
                        Job::Reply(line) => {
                            outbox.push(line);
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => self.inband = Some(tx),
            Err(e) => log::error!("QMP in-band worker: {e}; running commands in order instead"),
        }
    }
}

fn error_line(desc: &str) -> Vec<u8> {
    protocol::response(Err(QmpError::generic(desc)), None)
}

/// Runs one negotiated command of client `number` and queues its reply (traced:
/// qmp_command_enter, qmp_command_exit).
fn execute(
    gw: &Gateway,
    (client, number): (&ClientFds, u64),
    outbox: &Outbox,
    request: Request,
    fds: Vec<ReceivedFd>,
) {
    // Owed from here: a gateway that ends while the command runs still sends the reply.
    let Some(reply) = outbox.owe_reply() else {
        return;
    };
    let started = Instant::now();
    ipc::tracepoint!(
        QmpCommandEnter,
        "client={number} command={}",
        request.command
    );
    let Request {
        command: name,
        arguments,
        id,
        oob,
    } = request;
    let (result, exit_after) = run_command(gw, client, &name, arguments, oob, fds);
    ipc::tracepoint!(
        QmpCommandExit,
        "client={number} command={name} result={} duration_us={}",
        match &result {
            Ok(_) => "ok",
            Err(e) => e.class.as_str(),
        },
        started.elapsed().as_micros()
    );
    reply.send(protocol::response(result, id));
    if let Some(reason) = exit_after {
        gw.request_exit(reason);
    }
}

/// Runs command `name` (`execute` answers it), and says whether the gateway ends after
/// the answer.
fn run_command(
    gw: &Gateway,
    client: &ClientFds,
    name: &str,
    arguments: serde_json::Map<String, serde_json::Value>,
    oob: bool,
    fds: Vec<ReceivedFd>,
) -> (QmpResult, Option<ExitReason>) {
    // Fds the command does not keep are closed before its reply goes out, so a client
    // that sees the reply sees them closed.
    let Some(command) = commands::find(name) else {
        drop(fds);
        let e = QmpError::not_found(format!("The command {name} has not been found"));
        return (Err(e), None);
    };
    if oob && !command.allow_oob {
        drop(fds);
        let e = QmpError::generic(format!("The command {} does not support OOB", command.name));
        return (Err(e), None);
    }
    let mut ctx = Ctx {
        gw,
        named_fds: &client.named,
        fd_account: &client.account,
        fds,
        exit_after_reply: None,
        commands: COMMANDS,
    };
    let result = command.handler.run(&mut ctx, arguments);
    ctx.fds.clear();
    (result, ctx.exit_after_reply.take())
}
