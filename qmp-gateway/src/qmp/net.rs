//! The network commands' handlers: arguments read from QMP, answers from the network
//! layer (which asks the NICs' daemons where the answer is theirs).

use serde_json::{Map, Value};

use super::commands::Ctx;
use super::protocol::QmpResult;

fn str_arg<'a>(args: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

pub fn netdev_add(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.net.netdev_add(args, c.named_fds)
}

pub fn netdev_del(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.net.netdev_del(str_arg(args, "id").unwrap_or_default())
}

pub fn set_link(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    let up = args.get("up").and_then(Value::as_bool).unwrap_or(false);
    c.gw.net
        .set_link(str_arg(args, "name").unwrap_or_default(), up)
}

pub fn query_rx_filter(c: &mut Ctx, args: &Map<String, Value>) -> QmpResult {
    c.gw.net.query_rx_filter(str_arg(args, "name"))
}
