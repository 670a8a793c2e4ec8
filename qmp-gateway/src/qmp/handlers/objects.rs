//! object-add, object-del and query-memdev: the objects clients create (objects/), and
//! guest RAM's own backend, which query-memdev lists after them as QEMU lists its
//! machine's.

use serde::Deserialize;
use serde_json::{json, Value};

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

/// query-iothreads: every iothread object, newest first, with its host thread: the I/O
/// thread of the block daemon that waits for its first disk, or of the daemon of a disk
/// placed on it (block/iothreads.rs). One whose daemon is not running (dead, being
/// restarted) has no thread at that moment and is left out rather than given a false one.
pub fn query_iothreads(c: &mut Ctx, _: NoArgs) -> QmpResult {
    let threads = c.gw.objects.each(|_, o| match o {
        Object::IoThread(t) => Some(t.clone()),
        Object::MemoryBackend(_) | Object::Secret(_) => None,
    });
    let mut list = Vec::new();
    for t in threads {
        if let Some(thread) = c.gw.block.iothread_thread(&t.id) {
            list.push(json!({
                "id": t.id,
                "thread-id": thread.tid,
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
        Object::IoThread(_) | Object::Secret(_) => None,
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
