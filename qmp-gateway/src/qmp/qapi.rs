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
    /// A uint8: beyond it (a negative int64 too, taken as a uint64 first) is answered
    /// with QEMU's "expects uint8_t".
    U8,
    /// A uint32: the same, with "expects uint32_t".
    U32,
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
    Union(Union),
    /// A QAPI alternate: a value of the first of these types whose JSON type it has.
    Alternate(&'static [Ty]),
}

/// A QAPI union as QEMU's introspection shows it (simple unions are flat unions whose
/// branches wrap their type in a `data` member): the base members, the one of them
/// whose enum value picks the branch, and each branch's object type, whose members
/// join the base's. A value with no branch has the base's members only.
#[derive(Debug, Clone, Copy)]
pub struct Union {
    pub base: &'static [Member],
    pub tag: &'static str,
    /// (tag value, object type name).
    pub variants: &'static [(&'static str, &'static str)],
}

#[derive(Debug, Clone, Copy)]
pub struct TypeDef {
    pub name: &'static str,
    pub kind: TypeKind,
}

/// Named types known to the checker and the schema.
pub struct Types(pub &'static [TypeDef]);

/// Where a value sits, as QEMU's input visitor names it: `full` in type and missing /
/// unexpected messages ("events[0].data.key"), and `own` (the member's own name, None
/// for a list element) in an enum's "does not accept value" message, which QEMU 7.2
/// words with the bare name ("Parameter 'null' ..." for a list element).
#[derive(Clone, Copy)]
struct Place<'a> {
    full: &'a str,
    own: Option<&'a str>,
}

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
        self.check_present(members, args, path)?;
        check_unexpected(args, path, |k| members.iter().any(|m| m.name == k))
    }

    /// Each of `members` that is in `args` has its type, each required one is there
    /// (in their order, the first error wins, as QEMU visits them).
    fn check_present(
        &self,
        members: &[Member],
        args: &Map<String, Value>,
        path: &str,
    ) -> Result<(), QmpError> {
        for m in members {
            let full = member_path(path, m.name);
            match args.get(m.name) {
                None if !m.optional => {
                    return Err(QmpError::generic(format!("Parameter '{full}' is missing")))
                }
                None => {}
                Some(v) => self.check_value(
                    m.ty,
                    v,
                    Place {
                        full: &full,
                        own: Some(m.name),
                    },
                )?,
            }
        }
        Ok(())
    }

    /// `args` as the named union or object type `name`: a boxed command's arguments
    /// (object-add's ObjectOptions).
    pub fn check_boxed(&self, name: &str, args: &Map<String, Value>) -> Result<(), QmpError> {
        match self.get(name).map(|t| t.kind) {
            Some(TypeKind::Union(u)) => self.check_union(&u, args, ""),
            Some(TypeKind::Object(members)) => self.check_members(members, args, ""),
            _ => Err(QmpError::generic(format!(
                "internal error: {name} is not an object or union type"
            ))),
        }
    }

    /// A union's base members, then its branch's, then nothing else.
    fn check_union(
        &self,
        u: &Union,
        args: &Map<String, Value>,
        path: &str,
    ) -> Result<(), QmpError> {
        self.check_present(u.base, args, path)?;
        // The base check made the tag present and one of its enum's values (a tag
        // that is optional and absent has no branch).
        let branch = args
            .get(u.tag)
            .and_then(Value::as_str)
            .and_then(|case| u.variants.iter().find(|(c, _)| *c == case))
            .map(|(_, ty)| *ty);
        let branch_members: &[Member] = match branch.map(|ty| self.get(ty).map(|t| t.kind)) {
            None => &[],
            Some(Some(TypeKind::Object(members))) => members,
            Some(_) => {
                return Err(QmpError::generic(format!(
                    "internal error: union branch {branch:?} is not an object type"
                )))
            }
        };
        self.check_present(branch_members, args, path)?;
        check_unexpected(args, path, |k| {
            u.base.iter().chain(branch_members).any(|m| m.name == k)
        })
    }

    fn check_value(&self, ty: Ty, v: &Value, at: Place) -> Result<(), QmpError> {
        let path = at.full;
        let wrong = |expected: &str| {
            Err(QmpError::generic(format!(
                "Invalid parameter type for '{path}', expected: {expected}"
            )))
        };
        match ty {
            Ty::Any => Ok(()),
            Ty::Str if v.is_string() => Ok(()),
            Ty::Str => wrong("string"),
            // An int64: QEMU's input visitor refuses what is beyond it (qnum_get_try_int).
            Ty::Int if v.is_i64() => Ok(()),
            Ty::Int => wrong("integer"),
            Ty::Uint | Ty::U8 | Ty::U32 if !(v.is_i64() || v.is_u64()) => Err(QmpError::generic(
                format!("Parameter '{path}' expects uint64"),
            )),
            Ty::Uint => Ok(()),
            Ty::U8 | Ty::U32 => {
                let (max, c_type) = match ty {
                    Ty::U8 => (u64::from(u8::MAX), "uint8_t"),
                    _ => (u64::from(u32::MAX), "uint32_t"),
                };
                if v.as_u64().is_some_and(|n| n <= max) {
                    Ok(())
                } else {
                    // QEMU's range check names the member by its own name.
                    Err(QmpError::generic(format!(
                        "Parameter '{}' expects {c_type}",
                        at.own.unwrap_or(path)
                    )))
                }
            }
            Ty::Bool if v.is_boolean() => Ok(()),
            Ty::Bool => wrong("boolean"),
            Ty::Number if v.is_number() => Ok(()),
            Ty::Number => wrong("number"),
            Ty::Null if v.is_null() => Ok(()),
            Ty::Null => wrong("null"),
            Ty::Array(elem) => match v {
                Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| {
                    let full = format!("{path}[{i}]");
                    self.check_value(
                        *elem,
                        item,
                        Place {
                            full: &full,
                            own: None,
                        },
                    )
                }),
                _ => wrong("array"),
            },
            Ty::Named(name) => match self.get(name).map(|t| t.kind) {
                Some(TypeKind::Enum(values)) => match v {
                    Value::String(s) if values.contains(&s.as_str()) => Ok(()),
                    Value::String(s) => Err(QmpError::generic(format!(
                        "Parameter '{}' does not accept value '{s}'",
                        at.own.unwrap_or("null")
                    ))),
                    _ => wrong("string"),
                },
                Some(TypeKind::Object(members)) => match v {
                    Value::Object(obj) => self.check_members(members, obj, path),
                    _ => wrong("object"),
                },
                Some(TypeKind::Union(u)) => match v {
                    Value::Object(obj) => self.check_union(&u, obj, path),
                    _ => wrong("object"),
                },
                // An alternate's type error names the member by its own name.
                Some(TypeKind::Alternate(types)) => {
                    match types.iter().find(|t| self.json_type_fits(**t, v)) {
                        Some(t) => self.check_value(*t, v, at),
                        None => Err(QmpError::generic(format!(
                            "Invalid parameter type for '{}', expected: {name}",
                            at.own.unwrap_or("null")
                        ))),
                    }
                }
                None => Err(QmpError::generic(format!(
                    "internal error: unknown type {name}"
                ))),
            },
        }
    }

    /// Whether `v` has the JSON type of `ty` (how an alternate picks its branch).
    fn json_type_fits(&self, ty: Ty, v: &Value) -> bool {
        match ty {
            Ty::Any => true,
            Ty::Str => v.is_string(),
            Ty::Int | Ty::Uint | Ty::U8 | Ty::U32 | Ty::Number => v.is_number(),
            Ty::Bool => v.is_boolean(),
            Ty::Null => v.is_null(),
            Ty::Array(_) => v.is_array(),
            Ty::Named(name) => match self.get(name).map(|t| t.kind) {
                Some(TypeKind::Enum(_)) => v.is_string(),
                Some(TypeKind::Object(_) | TypeKind::Union(_)) => v.is_object(),
                Some(TypeKind::Alternate(types)) => {
                    types.iter().any(|t| self.json_type_fits(*t, v))
                }
                None => false,
            },
        }
    }
}

/// `name` inside the object at `path` ("" at the top).
fn member_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// QEMU's check_struct: a member no one visited is an error, named in full.
fn check_unexpected(
    args: &Map<String, Value>,
    path: &str,
    known: impl Fn(&str) -> bool,
) -> Result<(), QmpError> {
    match args.keys().find(|k| !known(k)) {
        Some(extra) => Err(QmpError::generic(format!(
            "Parameter '{}' is unexpected",
            member_path(path, extra)
        ))),
        None => Ok(()),
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
        TypeDef {
            name: "Shape",
            kind: TypeKind::Union(Union {
                base: &[req("kind", Ty::Named("ShapeKind")), opt("id", Ty::Str)],
                tag: "kind",
                variants: &[("circle", "Circle"), ("dot", "q_empty")],
            }),
        },
        TypeDef {
            name: "ShapeKind",
            kind: TypeKind::Enum(&["circle", "dot", "blank"]),
        },
        TypeDef {
            name: "Circle",
            kind: TypeKind::Object(&[
                req("data", Ty::Named("Inner")),
                opt("fill", Ty::Named("Cap")),
            ]),
        },
        TypeDef {
            name: "q_empty",
            kind: TypeKind::Object(&[]),
        },
        TypeDef {
            name: "StrOrNull",
            kind: TypeKind::Alternate(&[Ty::Str, Ty::Null]),
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
        assert_eq!(
            check(&m, json!({"fdname": "a", "n": 1u64 << 63})),
            Err("Invalid parameter type for 'n', expected: integer".into())
        );
        let u = [req("threshold", Ty::Uint)];
        assert_eq!(check(&u, json!({"threshold": -1})), Ok(()));
        assert_eq!(
            check(&u, json!({"threshold": "x"})),
            Err("Parameter 'threshold' expects uint64".into())
        );
    }

    #[test]
    fn sized_uints_and_alternates() {
        let m = [opt("level", Ty::U8), opt("creds", Ty::Named("StrOrNull"))];
        assert_eq!(check(&m, json!({"level": 255})), Ok(()));
        for too_big in [json!(256), json!(-1)] {
            assert_eq!(
                check(&m, json!({"level": too_big})),
                Err("Parameter 'level' expects uint8_t".into())
            );
        }
        assert_eq!(
            check(&m, json!({"level": "x"})),
            Err("Parameter 'level' expects uint64".into())
        );
        assert_eq!(check(&m, json!({"creds": "c"})), Ok(()));
        assert_eq!(check(&m, json!({"creds": null})), Ok(()));
        for wrong in [json!(1), json!([]), json!({})] {
            assert_eq!(
                check(&m, json!({"creds": wrong})),
                Err("Invalid parameter type for 'creds', expected: StrOrNull".into())
            );
        }
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
            Err("Parameter 'null' does not accept value 'nope'".into())
        );
        assert_eq!(
            check(&m, json!({"enable": ["oob", 1]})),
            Err("Invalid parameter type for 'enable[1]', expected: string".into())
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

    #[test]
    fn unions_check_the_base_then_the_branch_then_extras() {
        let m = [req("shapes", Ty::Array(&Ty::Named("Shape")))];
        let ok = json!({"kind": "circle", "id": "c", "data": {"x": 1}, "fill": "oob"});
        assert_eq!(
            check(
                &m,
                json!({"shapes": [ok, {"kind": "dot"}, {"kind": "blank"}]})
            ),
            Ok(())
        );
        let err = |shape: Value| check(&m, json!({"shapes": [{"kind": "dot"}, shape]}));
        assert_eq!(
            err(json!({"data": {"x": 1}})),
            Err("Parameter 'shapes[1].kind' is missing".into())
        );
        assert_eq!(
            err(json!({"kind": 1})),
            Err("Invalid parameter type for 'shapes[1].kind', expected: string".into())
        );
        assert_eq!(
            err(json!({"kind": "square"})),
            Err("Parameter 'kind' does not accept value 'square'".into())
        );
        assert_eq!(
            err(json!({"kind": "circle", "id": 2})),
            Err("Invalid parameter type for 'shapes[1].id', expected: string".into())
        );
        assert_eq!(
            err(json!({"kind": "circle"})),
            Err("Parameter 'shapes[1].data' is missing".into())
        );
        assert_eq!(
            err(json!({"kind": "circle", "data": 1})),
            Err("Invalid parameter type for 'shapes[1].data', expected: object".into())
        );
        assert_eq!(
            err(json!({"kind": "circle", "data": {}})),
            Err("Parameter 'shapes[1].data.x' is missing".into())
        );
        assert_eq!(
            err(json!({"kind": "circle", "data": {"x": 1, "y": 2}})),
            Err("Parameter 'shapes[1].data.y' is unexpected".into())
        );
        // A nested enum is named by its own name, as QEMU 7.2 words it.
        assert_eq!(
            err(json!({"kind": "circle", "data": {"x": 1}, "fill": "red"})),
            Err("Parameter 'fill' does not accept value 'red'".into())
        );
        // Members of another branch are unexpected in this one.
        assert_eq!(
            err(json!({"kind": "dot", "data": {"x": 1}})),
            Err("Parameter 'shapes[1].data' is unexpected".into())
        );
        assert_eq!(
            err(json!({"kind": "blank", "fill": "oob"})),
            Err("Parameter 'shapes[1].fill' is unexpected".into())
        );
        assert_eq!(
            check(&m, json!({"shapes": {"kind": "dot"}})),
            Err("Invalid parameter type for 'shapes', expected: array".into())
        );
        assert_eq!(
            check(&m, json!({"shapes": ["dot"]})),
            Err("Invalid parameter type for 'shapes[0]', expected: object".into())
        );
    }
}
