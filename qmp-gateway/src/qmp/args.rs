//! Typed arguments: each command's arguments are a type of their own, with the members
//! the table, the checker and the schema know. `read` checks the JSON arguments against
//! the members (QEMU's messages, qapi.rs), then deserializes them once, with serde, into
//! that type: a handler gets the type and never reads JSON.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::protocol::QmpError;
use super::qapi::Member;
use super::types::TYPES;

/// A command's arguments.
pub trait Arguments: Sized {
    /// The members, as the table, the checker and the schema know them.
    const MEMBERS: &'static [Member];

    /// The arguments, already checked against `MEMBERS`, as this type.
    fn decode(args: Map<String, Value>) -> Result<Self, QmpError>;

    /// The names serde reads (None: decoded by hand), for the test that holds them to
    /// `MEMBERS`.
    #[cfg(test)]
    fn serde_fields() -> Option<&'static [&'static str]>;
}

/// A command's JSON arguments as its type `A`: checked against `A`'s members (QEMU's
/// messages), then decoded.
pub fn read<A: Arguments>(args: Map<String, Value>) -> Result<A, QmpError> {
    TYPES.check_members(A::MEMBERS, &args, "")?;
    A::decode(args)
}

/// Implements [`Arguments`] for a struct serde reads, with its members:
/// `serde_arguments!(SetLink, [req("name", Ty::Str), req("up", Ty::Bool)]);`
macro_rules! serde_arguments {
    ($ty:ty, [$($member:expr),* $(,)?]) => {
        $crate::qmp::args::shared_members!($ty, &[$($member),*]);
    };
}
pub(crate) use serde_arguments;

/// The same, with members that are a named type's (also a transaction action's data).
macro_rules! shared_members {
    ($ty:ty, $members:expr) => {
        impl $crate::qmp::args::Arguments for $ty {
            const MEMBERS: &'static [$crate::qmp::qapi::Member] = $members;

            fn decode(
                args: serde_json::Map<String, serde_json::Value>,
            ) -> Result<Self, $crate::qmp::protocol::QmpError> {
                $crate::qmp::args::from_checked(args)
            }

            #[cfg(test)]
            fn serde_fields() -> Option<&'static [&'static str]> {
                Some($crate::qmp::args::serde_fields::<Self>())
            }
        }
    };
}
pub(crate) use shared_members;

/// Deserializes arguments that were checked against their members. That cannot fail
/// unless a type and its members disagree (the table's tests hold them together).
pub fn from_checked<T: DeserializeOwned>(args: Map<String, Value>) -> Result<T, QmpError> {
    serde_json::from_value(Value::Object(args)).map_err(|e| {
        QmpError::generic(format!(
            "internal error: the arguments do not fit their type: {e}"
        ))
    })
}

/// The arguments of a command that takes none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoArgs;

impl Arguments for NoArgs {
    const MEMBERS: &'static [Member] = &[];

    fn decode(_: Map<String, Value>) -> Result<Self, QmpError> {
        // The checker let no member through.
        Ok(NoArgs)
    }

    #[cfg(test)]
    fn serde_fields() -> Option<&'static [&'static str]> {
        Some(&[])
    }
}

/// A QMP 'int' as the client wrote it. JSON integers may be negative or beyond int64
/// (QEMU's int and uint share one JSON number), so the value is kept whole and each
/// command says how it reads one that is out of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int(pub i128);

impl Int {
    /// The value if it is an int64.
    pub fn as_i64(self) -> Option<i64> {
        i64::try_from(self.0).ok()
    }

    /// The value if it is a uint64.
    pub fn as_u64(self) -> Option<u64> {
        u64::try_from(self.0).ok()
    }

    /// The value as an int64, a larger one as the largest (beyond what any size or
    /// offset argument accepts).
    pub fn saturating_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
        }

        d.deserialize_any(IntVisitor)
    }
}

/// The field names serde reads into `T`: a deserializer that only asks the struct for
/// them.
#[cfg(test)]
pub fn serde_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    #[derive(Debug)]
    struct Fields(&'static [&'static str]);

    impl std::fmt::Display for Fields {
        fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    impl std::error::Error for Fields {}

    impl de::Error for Fields {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Fields(&[])
        }
    }

    struct AskFields;

    impl<'de> Deserializer<'de> for AskFields {
        type Error = Fields;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    match T::deserialize(AskFields) {
        Err(Fields(fields)) => fields,
        Ok(_) => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ints_keep_their_whole_range() {
        let read = |v: Value| serde_json::from_value::<Int>(v).unwrap();
        assert_eq!(read(json!(-5)).as_i64(), Some(-5));
        assert_eq!(read(json!(-5)).as_u64(), None);
        let big = read(json!(u64::MAX));
        assert_eq!(big.as_i64(), None);
        assert_eq!(big.as_u64(), Some(u64::MAX));
        assert_eq!(big.saturating_i64(), i64::MAX);
        assert!(serde_json::from_value::<Int>(json!(1.5)).is_err());
    }

    #[test]
    fn serde_fields_names_what_a_struct_reads() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct S {
            #[serde(rename = "node-name")]
            node_name: String,
            size: Option<Int>,
        }
        assert_eq!(serde_fields::<S>(), ["node-name", "size"]);
    }
}
