//! The QAPI-style vocabulary the command table, the named types and the events are
//! written in, and the checker that holds a command's JSON arguments to their members
//! with QEMU's input visitor's messages. query-qmp-schema is generated from the same
//! members (schema.rs), so the two cannot disagree.

use serde_json::{Map, Value};

use super::protocol::QmpError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int,
    /// An unsigned QAPI integer (uint8 ... uint64): wrong JSON is answered with QEMU's
    /// "expects uint64", and negative int64s are taken as QEMU takes them.
    Uint,
    Bool,
    Number,
    Any,
    Null,
    Named(&'static str),
    Array(&'static Ty),
}

#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub name: &'static str,
    pub ty: Ty,
    pub optional: bool,
}

pub const fn req(name: &'static str, ty: Ty) -> Member {
    Member {
        name,
        ty,
        optional: false,
    }
}

pub const fn opt(name: &'static str, ty: Ty) -> Member {
    Member {
        name,
        ty,
        optional: true,
    }
}

#[derive(Debug, Clone, Copy)]
pub enum TypeKind {
    Object(&'static [Member]),
    Enum(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
pub struct TypeDef {
    pub name: &'static str,
    pub kind: TypeKind,
}

/// Named types known to the checker and the schema.
pub struct Types(pub &'static [TypeDef]);

impl Types {
    pub fn get(&self, name: &str) -> Option<&TypeDef> {
        self.0.iter().find(|t| t.name == name)
    }

    /// Checks `args` against `members` as QEMU's input visitor does; `path` prefixes
    /// nested member names in messages ("a.b").
    pub fn check_members(
        &self,
        members: &[Member],
        args: &Map<String, Value>,
        path: &str,
    ) -> Result<(), QmpError> {
        let full = |name: &str| {
            if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            }
        };
        for m in members {
            match args.get(m.name) {
                None if !m.optional => {
                    return Err(QmpError::generic(format!(
                        "Parameter '{}' is missing",
                        full(m.name)
                    )))
                }
                None => {}
                Some(v) => self.check_value(m.ty, v, &full(m.name))?,
            }
        }
        if let Some(extra) = args
            .keys()
            .find(|k| !members.iter().any(|m| m.name == k.as_str()))
        {
            return Err(QmpError::generic(format!(
                "Parameter '{}' is unexpected",
                full(extra)
            )));
        }
        Ok(())
    }

    fn check_value(&self, ty: Ty, v: &Value, path: &str) -> Result<(), QmpError> {
        let wrong = |expected: &str| {
            Err(QmpError::generic(format!(
                "Invalid parameter type for '{path}', expected: {expected}"
            )))
        };
        match ty {
            Ty::Any => Ok(()),
            Ty::Str if v.is_string() => Ok(()),
            Ty::Str => wrong("string"),
            Ty::Int if v.is_i64() || v.is_u64() => Ok(()),
            Ty::Int => wrong("integer"),
            Ty::Uint if v.is_i64() || v.is_u64() => Ok(()),
            Ty::Uint => Err(QmpError::generic(format!(
                "Parameter '{path}' expects uint64"
            ))),
            Ty::Bool if v.is_boolean() => Ok(()),
            Ty::Bool => wrong("boolean"),
            Ty::Number if v.is_number() => Ok(()),
            Ty::Number => wrong("number"),
            Ty::Null if v.is_null() => Ok(()),
            Ty::Null => wrong("null"),
            Ty::Array(elem) => match v {
                Value::Array(items) => items
                    .iter()
                    .try_for_each(|item| self.check_value(*elem, item, path)),
                _ => wrong("array"),
            },
            Ty::Named(name) => match self.get(name).map(|t| t.kind) {
                Some(TypeKind::Enum(values)) => match v {
                    Value::String(s) if values.contains(&s.as_str()) => Ok(()),
                    Value::String(s) => Err(QmpError::generic(format!(
                        "Parameter '{path}' does not accept value '{s}'"
                    ))),
                    _ => wrong("string"),
                },
                Some(TypeKind::Object(members)) => match v {
                    Value::Object(obj) => self.check_members(members, obj, path),
                    _ => wrong("object"),
                },
                None => Err(QmpError::generic(format!(
                    "internal error: unknown type {name}"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TYPES: Types = Types(&[
        TypeDef {
            name: "Cap",
            kind: TypeKind::Enum(&["oob"]),
        },
        TypeDef {
            name: "Inner",
            kind: TypeKind::Object(&[req("x", Ty::Int)]),
        },
    ]);

    fn check(members: &[Member], args: Value) -> Result<(), String> {
        let Value::Object(args) = args else { panic!() };
        TYPES.check_members(members, &args, "").map_err(|e| e.desc)
    }

    #[test]
    fn messages_match_qemu() {
        let m = [req("fdname", Ty::Str), opt("n", Ty::Int)];
        assert_eq!(
            check(&m, json!({})),
            Err("Parameter 'fdname' is missing".into())
        );
        assert_eq!(
            check(&m, json!({"fdname": 1})),
            Err("Invalid parameter type for 'fdname', expected: string".into())
        );
        assert_eq!(
            check(&m, json!({"fdname": "a", "extra": [1]})),
            Err("Parameter 'extra' is unexpected".into())
        );
        assert_eq!(
            check(&m, json!({"fdname": "a", "n": "x"})),
            Err("Invalid parameter type for 'n', expected: integer".into())
        );
        assert_eq!(check(&m, json!({"fdname": "a", "n": 3})), Ok(()));
        let u = [req("threshold", Ty::Uint)];
        assert_eq!(check(&u, json!({"threshold": -1})), Ok(()));
        assert_eq!(
            check(&u, json!({"threshold": "x"})),
            Err("Parameter 'threshold' expects uint64".into())
        );
    }

    #[test]
    fn enums_arrays_and_nested_objects() {
        let m = [
            opt("enable", Ty::Array(&Ty::Named("Cap"))),
            opt("o", Ty::Named("Inner")),
        ];
        assert_eq!(check(&m, json!({"enable": ["oob"]})), Ok(()));
        assert_eq!(
            check(&m, json!({"enable": ["nope"]})),
            Err("Parameter 'enable' does not accept value 'nope'".into())
        );
        assert_eq!(
            check(&m, json!({"enable": "oob"})),
            Err("Invalid parameter type for 'enable', expected: array".into())
        );
        assert_eq!(
            check(&m, json!({"o": {}})),
            Err("Parameter 'o.x' is missing".into())
        );
    }
}
