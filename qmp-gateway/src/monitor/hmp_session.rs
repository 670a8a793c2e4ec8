//! One HMP session on a monitor chardev (mode=readline): QEMU 7.2's banner and prompt,
//! then lines typed (edited and echoed by readline.rs) run by the human monitor's
//! dispatcher (qmp/handlers/hmp: run_line, whose `cpu N` lasts for the session), their
//! text written back and the prompt again. The session ends when its peer goes (a
//! socket chardev then waits for the next), or when a write stalls for a while (a peer
//! that does not read).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::fdstore::{Account, NamedFds};
use crate::gateway::Gateway;
use crate::qmp::commands::COMMANDS;
use crate::qmp::conn::Conn;
use crate::qmp::context::Ctx;
use crate::qmp::handlers::hmp::run_line;
use crate::qmp::protocol::QEMU_VERSION;
use crate::qmp::server::Server;

/// QEMU's prompt.
pub const PROMPT: &str = "(qemu) ";
/// How long a write may wait for a peer that does not read before the session ends.
const WRITE_PATIENCE: Duration = Duration::from_secs(30);

/// QEMU's banner, with the QEMU version the gateway answers query-version with (its
/// words kept, "QEMU" included, for the tools that wait for them).
pub fn banner() -> String {
    let (major, minor, micro) = QEMU_VERSION;
    format!("QEMU {major}.{minor}.{micro} monitor - type 'help' for more information\r\n")
}

/// Serves an HMP session on `conn` in a thread of its own.
pub fn start(server: &Server, conn: Conn) {
    let (gw, account) = (server.gateway().clone(), server.fd_account());
    let spawned = std::thread::Builder::new()
        .name("hmp-monitor".into())
        .spawn(move || {
            run(&gw, &account, &conn);
            conn.shutdown();
        });
    if let Err(e) = spawned {
        log::error!("HMP monitor: cannot start its thread: {e}");
    }
}

fn run(gw: &Arc<Gateway>, account: &Account, conn: &Conn) {
    let Some(mut out) = conn.clone_for_writing() else {
        return;
    };
    conn.set_write_timeout(Some(WRITE_PATIENCE));
    if out
        .write_all(format!("{}{PROMPT}", banner()).as_bytes())
        .is_err()
    {
        return;
    }
    let named = NamedFds::default();
    let mut editor = super::readline::LineEditor::default();
    let mut cpu = 0;
    let mut buf = [0u8; 4096];
    loop {
        // HMP takes no fds here: any sent are closed by the kernel.
        let n = match conn.read(&mut buf, 0) {
            Ok(r) if r.bytes > 0 => r.bytes,
            _ => return,
        };
        let mut reply = Vec::new();
        for &byte in &buf[..n] {
            let Some(line) = editor.feed(byte, &mut reply) else {
                continue;
            };
            let mut ctx = Ctx {
                gw,
                named_fds: &named,
                fd_account: account,
                fds: Vec::new(),
                exit_after_reply: None,
                commands: COMMANDS,
            };
            reply.extend_from_slice(run_line(&mut ctx, &line, &mut cpu).as_bytes());
            if let Some(reason) = ctx.exit_after_reply.take() {
                let _ = out.write_all(&reply);
                gw.request_exit(reason);
                return;
            }
            reply.extend_from_slice(PROMPT.as_bytes());
        }
        if out.write_all(&reply).is_err() {
            return;
        }
    }
}
