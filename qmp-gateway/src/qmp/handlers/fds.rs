//! The fd commands: getfd/closefd (a client's named fds) and add-fd/remove-fd/
//! query-fdsets (the fd sets every client shares).

use serde::Deserialize;
use serde_json::json;

use crate::qmp::args::{serde_arguments, Int, NoArgs};
use crate::qmp::context::Ctx;
use crate::qmp::protocol::QmpResult;
use crate::qmp::qapi::{opt, req, Ty};

/// getfd and closefd.
#[derive(Debug, Deserialize)]
pub struct FdName {
    pub fdname: String,
}

serde_arguments!(FdName, [req("fdname", Ty::Str)]);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AddFd {
    pub fdset_id: Option<Int>,
    pub opaque: Option<String>,
}

serde_arguments!(AddFd, [opt("fdset-id", Ty::Int), opt("opaque", Ty::Str)]);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RemoveFd {
    pub fdset_id: Int,
    pub fd: Option<Int>,
}

serde_arguments!(RemoveFd, [req("fdset-id", Ty::Int), opt("fd", Ty::Int)]);

pub fn getfd(c: &mut Ctx, a: FdName) -> QmpResult {
    let fd = c.take_fd()?;
    c.named_fds.insert(&a.fdname, fd)?;
    Ok(json!({}))
}

pub fn closefd(c: &mut Ctx, a: FdName) -> QmpResult {
    c.named_fds.close(&a.fdname)?;
    Ok(json!({}))
}

pub fn add_fd(c: &mut Ctx, a: AddFd) -> QmpResult {
    let fd = c.take_fd()?;
    // An id beyond int64 counts as none given (the lowest free set is taken).
    let set = a.fdset_id.and_then(Int::as_i64);
    let (id, number) = c.gw.fdsets.add(set, fd, a.opaque)?;
    Ok(json!({"fdset-id": id, "fd": number}))
}

pub fn remove_fd(c: &mut Ctx, a: RemoveFd) -> QmpResult {
    let id = a.fdset_id.as_i64().unwrap_or_default();
    c.gw.fdsets.remove(id, a.fd.and_then(Int::as_i64))?;
    Ok(json!({}))
}

pub fn query_fdsets(c: &mut Ctx, _: NoArgs) -> QmpResult {
    Ok(c.gw.fdsets.query())
}
