//! query-qmp-schema: every command, event and type, in QEMU's SchemaInfo form, built
//! from the command table, the event table and the named types.

use serde_json::{json, Value};

use super::context::Command;
use super::qapi::{Member, Ty, TypeDef, TypeKind, Types};
use crate::events::EventDef;

/// The name a type has in the introspection schema.
pub fn schema_name(ty: Ty) -> String {
    match ty {
        Ty::Str => "str".into(),
        // QEMU's introspection names every integer type "int".
        Ty::Int | Ty::Uint | Ty::U8 | Ty::U32 => "int".into(),
        Ty::Bool => "bool".into(),
        Ty::Number => "number".into(),
        Ty::Any => "any".into(),
        Ty::Null => "null".into(),
        Ty::Named(n) => n.into(),
        Ty::Array(elem) => format!("[{}]", schema_name(*elem)),
    }
}

fn builtin_json_type(ty: Ty) -> Option<&'static str> {
    Some(match ty {
        Ty::Str => "string",
        Ty::Int | Ty::Uint | Ty::U8 | Ty::U32 => "int",
        Ty::Bool => "boolean",
        Ty::Number => "number",
        Ty::Any => "value",
        Ty::Null => "null",
        _ => return None,
    })
}

fn members_schema(members: &[Member]) -> Value {
    Value::Array(
        members
            .iter()
            .map(|m| {
                let mut o = json!({"name": m.name, "type": schema_name(m.ty)});
                if m.optional {
                    o["default"] = Value::Null;
                }
                o
            })
            .collect(),
    )
}

/// query-qmp-schema: every command, event and type, in QEMU's SchemaInfo form.
pub fn build(commands: &[Command], events: &[EventDef], types: &Types) -> Value {
    let mut out: Vec<Value> = Vec::new();
    let mut arrays: Vec<Ty> = Vec::new();
    let note = |ty: Ty, arrays: &mut Vec<Ty>| {
        if let Ty::Array(_) = ty {
            if !arrays.contains(&ty) {
                arrays.push(ty);
            }
        }
    };
    for c in commands {
        let arg_type = format!("q_obj_{}-arg", c.name);
        let mut info = json!({
            "name": c.name,
            "meta-type": "command",
            "arg-type": arg_type,
            "ret-type": schema_name(c.ret),
        });
        if c.allow_oob {
            info["allow-oob"] = json!(true);
        }
        out.push(info);
        out.push(
            json!({"name": arg_type, "meta-type": "object", "members": members_schema(c.args())}),
        );
        note(c.ret, &mut arrays);
        c.args().iter().for_each(|m| note(m.ty, &mut arrays));
    }
    for e in events {
        out.push(json!({"name": e.name, "meta-type": "event", "arg-type": e.arg_type()}));
    }
    // The named types, then the events' own (each once: SHUTDOWN and RESET share one).
    let mut event_types: Vec<&TypeDef> = Vec::new();
    for t in events.iter().filter_map(|e| e.data) {
        if !event_types.iter().any(|seen| seen.name == t.name) {
            event_types.push(t);
        }
    }
    for t in types.0.iter().chain(event_types) {
        match t.kind {
            TypeKind::Object(members) => {
                members.iter().for_each(|m| note(m.ty, &mut arrays));
                out.push(json!({"name": t.name, "meta-type": "object", "members": members_schema(members)}));
            }
            TypeKind::Union(u) => {
                u.base.iter().for_each(|m| note(m.ty, &mut arrays));
                out.push(json!({
                    "name": t.name,
                    "meta-type": "object",
                    "members": members_schema(u.base),
                    "tag": u.tag,
                    "variants": u.variants.iter()
                        .map(|(case, ty)| json!({"case": case, "type": ty}))
                        .collect::<Vec<_>>(),
                }));
            }
            TypeKind::Alternate(types) => {
                types.iter().for_each(|ty| note(*ty, &mut arrays));
                out.push(json!({
                    "name": t.name,
                    "meta-type": "alternate",
                    "members": types.iter()
                        .map(|ty| json!({"type": schema_name(*ty)}))
                        .collect::<Vec<_>>(),
                }));
            }
            TypeKind::Enum(values) => out.push(json!({
                "name": t.name,
                "meta-type": "enum",
                "values": values,
                "members": values.iter().map(|v| json!({"name": v})).collect::<Vec<_>>(),
            })),
        }
    }
    for a in arrays {
        if let Ty::Array(elem) = a {
            out.push(json!({"name": schema_name(a), "meta-type": "array", "element-type": schema_name(*elem)}));
        }
    }
    for b in [Ty::Str, Ty::Int, Ty::Bool, Ty::Number, Ty::Any, Ty::Null] {
        out.push(json!({
            "name": schema_name(b),
            "meta-type": "builtin",
            "json-type": builtin_json_type(b),
        }));
    }
    Value::Array(out)
}
