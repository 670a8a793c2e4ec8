//! object-add, object-del and query-memdev: the objects clients create (objects/), and
//! guest RAM's own backend, which query-memdev lists after them as QEMU lists its
//! machine's.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::children::daemon::threads_named;
use crate::objects::{Object, ObjectError};
use crate::qmp::args::{serde_arguments, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::object_add::ObjectAdd;
use crate::qmp::protocol::{QmpError, QmpResult};
use crate::qmp::qapi::{req, Ty};

/// The id of guest RAM's backend in query-memdev. QEMU names it after its machine
/// ("pc.ram", "microvm.ram"); ours is the memfd vmm-core maps and the daemons share.
pub const MACHINE_RAM_ID: &str = "flotilla.ram";

impl From<ObjectError> for QmpError {
    fn from(e: ObjectError) -> QmpError {
        QmpError::generic(e.to_string())
    }
}

pub fn object_add(c: &mut Ctx, a: ObjectAdd) -> QmpResult {
    c.gw.objects.add(a.0)?;
    Ok(json!({}))
}

#[derive(Debug, Deserialize)]
pub struct ObjectDel {
    pub id: String,
}

serde_arguments!(ObjectDel, [req("id", Ty::Str)]);

pub fn object_del(c: &mut Ctx, a: ObjectDel) -> QmpResult {
    c.gw.objects.del(&a.id)?;
    Ok(json!({}))
}

/// The thread a block daemon serves its rings on (vhost-backend's worker).
const IO_THREAD_NAME: &str = "vhost-worker";

/// query-iothreads: each iothread object a disk is placed on, newest first, with the
/// host thread that serves that disk's rings: the I/O thread of the block daemon of the
/// first disk placed on it (each disk has a daemon, so an iothread serving several has
/// several threads; the others are not shown, QEMU's answer has room for one). An
/// iothread no disk is placed on has no thread and is not listed.
pub fn query_iothreads(c: &mut Ctx, _: NoArgs) -> QmpResult {
    let threads = c.gw.objects.each(|_, o| match o {
        Object::IoThread(t) => Some(t.clone()),
        Object::MemoryBackend(_) => None,
    });
    let mut list = Vec::new();
    for t in threads {
        let disks = c.gw.devices.lock().disks_on(&t.id);
        let tid = disks.iter().find_map(|disk| {
            let pid = c.gw.block.daemon_pid(disk)?;
            threads_named(pid, IO_THREAD_NAME).first().copied()
        });
        if let Some(tid) = tid {
            list.push(json!({
                "id": t.id,
                "thread-id": tid,
                "poll-max-ns": t.poll_max_ns,
                "poll-grow": t.poll_grow,
                "poll-shrink": t.poll_shrink,
                "aio-max-batch": t.aio_max_batch,
            }));
        }
    }
    Ok(Value::Array(list))
}

/// Memdev entries, newest object first, then guest RAM's.
pub fn query_memdev(c: &mut Ctx, _: NoArgs) -> QmpResult {
    let mut list = c.gw.objects.each(|id, o| match o {
        Object::MemoryBackend(m) => Some(json!({
            "id": id,
            "size": m.spec.size,
            "merge": m.spec.merge,
            "dump": m.spec.dump,
            "prealloc": m.spec.prealloc,
            "share": m.share(),
            "reserve": m.spec.reserve,
            "host-nodes": [],
            "policy": "default",
        })),
        Object::IoThread(_) => None,
    });
    let ram =
        c.gw.vmm_child
            .launch
            .lock()
            .as_ref()
            .map(|l| l.config.memory_mib << 20);
    if let Some(size) = ram {
        // Shared with the daemons; never madvise()d mergeable; dumped; not preallocated.
        list.push(json!({
            "id": MACHINE_RAM_ID,
            "size": size,
            "merge": false,
            "dump": true,
            "prealloc": false,
            "share": true,
            "reserve": true,
            "host-nodes": [],
            "policy": "default",
        }));
    }
    Ok(Value::Array(list))
}
