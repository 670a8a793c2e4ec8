//! Finds the few AML definitions the guest needs without an AML interpreter: `Field` (where
//! a named field unit lies in its operation region), `OperationRegion` (its address space,
//! offset and length, which must be integer constants) and the `_Exx` methods (handlers of
//! edge-triggered general-purpose events). A table is searched for the opcodes and every
//! candidate is decoded with bounds checks. A candidate that does not decode is skipped (AML
//! data, a buffer say, may hold the same bytes) and the first such failure is kept, to explain
//! a name that is then not found.
//!
//! Scopes are not tracked: names are compared by their last NameSeg, and a Field's region is
//! looked for in the same table. That is good enough for the hotplug registers, which each
//! table defines once; two different definitions of a name in one table are reported rather
//! than guessed between.
//!
//! Pure code on byte slices (no I/O, no other module of the guest): its callers run it in
//! ring 3, and tests/tests/qemu_guest_hotplug.rs builds it on the host to feed it broken
//! tables.

/// A name segment: four characters, `A`-`Z` or `_` first, then `A`-`Z`, `0`-`9` or `_`.
pub type NameSeg = [u8; 4];

/// The standard header in front of every table's AML.
pub const TABLE_HEADER: usize = 36;
/// RegionSpace of SystemIO (port I/O).
pub const SPACE_SYSTEM_IO: u8 = 0x01;

const EXT_OP_PREFIX: u8 = 0x5b;
const OP_REGION_OP: u8 = 0x80;
const FIELD_OP: u8 = 0x81;
const METHOD_OP: u8 = 0x14;
const ROOT_CHAR: u8 = b'\\';
const PARENT_PREFIX: u8 = b'^';
const DUAL_NAME_PREFIX: u8 = 0x2e;
const MULTI_NAME_PREFIX: u8 = 0x2f;
const NULL_NAME: u8 = 0x00;
// Field list entries other than a named field (ACPI 6.5, 20.2.5.2).
const RESERVED_FIELD: u8 = 0x00;
const ACCESS_FIELD: u8 = 0x01;
const CONNECT_FIELD: u8 = 0x02;
const EXTENDED_ACCESS_FIELD: u8 = 0x03;

/// Why a candidate definition did not decode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Malformed {
    /// The table ends inside the definition.
    Truncated,
    /// Its PkgLength runs past the end of the table.
    PkgLengthPastEnd,
    /// A PkgLength with reserved bits set, or shorter than its own encoding.
    PkgLengthEncoding,
    /// Not a valid NameString.
    Name,
    /// The field list does not end where the PkgLength says.
    FieldList,
    /// A ConnectField entry (not supported).
    ConnectField,
    /// The region's offset or length is not an integer constant.
    NotConstant,
}

impl Malformed {
    pub fn describe(self) -> &'static str {
        match self {
            Malformed::Truncated => "the table ends inside the definition",
            Malformed::PkgLengthPastEnd => "its PkgLength runs past the end of the table",
            Malformed::PkgLengthEncoding => "its PkgLength is badly encoded",
            Malformed::Name => "its NameString is not valid",
            Malformed::FieldList => "its field list does not end where its PkgLength says",
            Malformed::ConnectField => "its field list has a ConnectField (not supported)",
            Malformed::NotConstant => "its offset or length is not an integer constant",
        }
    }
}

/// A candidate definition that did not decode: where (offset in the table) and why.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Problem {
    pub at: usize,
    pub what: Malformed,
}

/// A named field unit of a Field definition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FieldUnit {
    /// Last NameSeg of the operation region the Field names.
    pub region: NameSeg,
    pub bit_offset: u64,
    pub bit_width: u64,
    /// AccessType in force for the unit (0 AnyAcc, 1 ByteAcc, 2 WordAcc, 3 DWordAcc,
    /// 4 QWordAcc, 5 BufferAcc).
    pub access: u8,
    /// UpdateRule of the Field (0 Preserve, 1 WriteAsOnes, 2 WriteAsZeros).
    pub update: u8,
    /// Offset of the Field definition in the table.
    pub at: usize,
}

/// An OperationRegion definition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Region {
    pub space: u8,
    pub offset: u64,
    pub len: u64,
    /// Offset of the definition in the table.
    pub at: usize,
}

/// The outcome of looking a name up in one table.
#[derive(Clone, Copy, Debug)]
pub struct Search<T> {
    /// The first definition that decoded.
    pub found: Option<T>,
    /// Offset of a later definition of the same name that says something else.
    pub conflict: Option<usize>,
    /// The first candidate of the kind looked for that did not decode.
    pub malformed: Option<Problem>,
}

/// Decodes the PkgLength at `at`: (value, bytes it takes).
fn pkg_length(aml: &[u8], at: usize) -> Result<(usize, usize), Malformed> {
    let lead = *aml.get(at).ok_or(Malformed::Truncated)?;
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return Ok((usize::from(lead & 0x3f), 1));
    }
    if lead & 0x30 != 0 {
        return Err(Malformed::PkgLengthEncoding);
    }
    let mut value = usize::from(lead & 0x0f);
    for i in 0..follow {
        let byte = *aml.get(at + 1 + i).ok_or(Malformed::Truncated)?;
        value |= usize::from(byte) << (4 + 8 * i);
    }
    Ok((value, 1 + follow))
}

fn name_seg(aml: &[u8], at: usize) -> Result<NameSeg, Malformed> {
    let bytes = aml.get(at..at + 4).ok_or(Malformed::Truncated)?;
    let lead = bytes[0].is_ascii_uppercase() || bytes[0] == b'_';
    let rest = bytes[1..]
        .iter()
        .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !(lead && rest) {
        return Err(Malformed::Name);
    }
    Ok([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Decodes the NameString at `at`: (its last NameSeg, None for the null name; bytes it takes).
fn name_string(aml: &[u8], at: usize) -> Result<(Option<NameSeg>, usize), Malformed> {
    let mut i = at;
    if aml.get(i) == Some(&ROOT_CHAR) {
        i += 1;
    } else {
        while aml.get(i) == Some(&PARENT_PREFIX) {
            i += 1;
        }
    }
    let segments = match *aml.get(i).ok_or(Malformed::Truncated)? {
        NULL_NAME => return Ok((None, i + 1 - at)),
        DUAL_NAME_PREFIX => {
            i += 1;
            2
        }
        MULTI_NAME_PREFIX => {
            let count = *aml.get(i + 1).ok_or(Malformed::Truncated)?;
            i += 2;
            usize::from(count)
        }
        _ => 1,
    };
    if segments == 0 {
        return Err(Malformed::Name);
    }
    let mut last = [0; 4];
    for _ in 0..segments {
        last = name_seg(aml, i)?;
        i += 4;
    }
    Ok((Some(last), i - at))
}

/// Decodes an integer constant (ZeroOp, OneOp, OnesOp, Byte/Word/DWord/QWordPrefix) at `*at`
/// and moves past it.
fn integer(aml: &[u8], at: &mut usize) -> Result<u64, Malformed> {
    let op = *aml.get(*at).ok_or(Malformed::Truncated)?;
    let size = match op {
        0x00 | 0x01 | 0xff => {
            *at += 1;
            return Ok(match op {
                0x00 => 0,
                0x01 => 1,
                _ => u64::MAX,
            });
        }
        0x0a => 1,
        0x0b => 2,
        0x0c => 4,
        0x0e => 8,
        _ => return Err(Malformed::NotConstant),
    };
    let bytes = aml
        .get(*at + 1..*at + 1 + size)
        .ok_or(Malformed::Truncated)?;
    *at += 1 + size;
    Ok(bytes
        .iter()
        .rev()
        .fold(0, |acc, &b| (acc << 8) | u64::from(b)))
}

/// The end (exclusive) of the definition whose PkgLength is at `at`, and where its contents
/// start.
fn package(aml: &[u8], at: usize) -> Result<(usize, usize), Malformed> {
    let (len, encoding) = pkg_length(aml, at)?;
    if len < encoding {
        return Err(Malformed::PkgLengthEncoding);
    }
    let end = at + len;
    if end > aml.len() {
        return Err(Malformed::PkgLengthPastEnd);
    }
    Ok((end, at + encoding))
}

/// Decodes the Field definition at `at` (its ExtOpPrefix) and hands every named field unit
/// to `unit`.
fn field(aml: &[u8], at: usize, mut unit: impl FnMut(NameSeg, FieldUnit)) -> Result<(), Malformed> {
    let (end, mut i) = package(aml, at + 2)?;
    // Entries may not run past the definition: decode within it only.
    let body = &aml[..end];
    let list = |error: Malformed| match error {
        Malformed::Truncated => Malformed::FieldList,
        other => other,
    };
    let (region, taken) = name_string(body, i).map_err(list)?;
    let region = region.ok_or(Malformed::Name)?;
    i += taken;
    let flags = *body.get(i).ok_or(Malformed::FieldList)?;
    i += 1;
    let mut access = flags & 0x0f;
    let update = (flags >> 5) & 0x03;
    let mut offset: u64 = 0;
    while i < end {
        match body[i] {
            RESERVED_FIELD => {
                let (bits, taken) = pkg_length(body, i + 1).map_err(list)?;
                offset += bits as u64;
                i += 1 + taken;
            }
            ACCESS_FIELD => {
                access = *body.get(i + 1).ok_or(Malformed::FieldList)? & 0x0f;
                body.get(i + 2).ok_or(Malformed::FieldList)?;
                i += 3;
            }
            EXTENDED_ACCESS_FIELD => {
                access = *body.get(i + 1).ok_or(Malformed::FieldList)? & 0x0f;
                body.get(i + 3).ok_or(Malformed::FieldList)?;
                i += 4;
            }
            CONNECT_FIELD => return Err(Malformed::ConnectField),
            _ => {
                let name = name_seg(body, i).map_err(list)?;
                let (bits, taken) = pkg_length(body, i + 4).map_err(list)?;
                unit(
                    name,
                    FieldUnit {
                        region,
                        bit_offset: offset,
                        bit_width: bits as u64,
                        access,
                        update,
                        at,
                    },
                );
                offset += bits as u64;
                i += 4 + taken;
            }
        }
    }
    Ok(())
}

/// The name of the OperationRegion definition at `at` (its ExtOpPrefix), and where the rest
/// of it starts.
fn region_name(aml: &[u8], at: usize) -> Result<(NameSeg, usize), Malformed> {
    let (name, taken) = name_string(aml, at + 2)?;
    Ok((name.ok_or(Malformed::Name)?, at + 2 + taken))
}

/// Decodes the rest of an OperationRegion definition (at `at`), from `i`.
fn region(aml: &[u8], at: usize, mut i: usize) -> Result<Region, Malformed> {
    let space = *aml.get(i).ok_or(Malformed::Truncated)?;
    i += 1;
    let offset = integer(aml, &mut i)?;
    let len = integer(aml, &mut i)?;
    Ok(Region {
        space,
        offset,
        len,
        at,
    })
}

/// Offsets of the two-byte extended opcode `0x5b op` in the table's AML.
fn extended_ops(table: &[u8], op: u8) -> impl Iterator<Item = usize> + '_ {
    (TABLE_HEADER..table.len().saturating_sub(1))
        .filter(move |&i| table[i] == EXT_OP_PREFIX && table[i + 1] == op)
}

/// Keeps the first definition found, notes a later different one, and the first candidate
/// that did not decode.
fn record<T: Copy + PartialEq>(
    search: &mut Search<T>,
    found: T,
    at: usize,
    same: impl Fn(&T, &T) -> bool,
) {
    match search.found {
        None => search.found = Some(found),
        Some(first) if !same(&first, &found) && search.conflict.is_none() => {
            search.conflict = Some(at)
        }
        Some(_) => {}
    }
}

/// The Field unit named `name` in `table` (a whole ACPI table, header included).
pub fn find_field(table: &[u8], name: NameSeg) -> Search<FieldUnit> {
    let mut search = Search {
        found: None,
        conflict: None,
        malformed: None,
    };
    for at in extended_ops(table, FIELD_OP) {
        // Kept only if the whole definition decodes.
        let mut hit = None;
        let decoded = field(table, at, |unit_name, unit| {
            if unit_name == name {
                hit.get_or_insert(unit);
            }
        });
        match decoded {
            Ok(()) => {
                if let Some(unit) = hit {
                    record(&mut search, unit, at, |a, b| {
                        (a.region, a.bit_offset, a.bit_width, a.access)
                            == (b.region, b.bit_offset, b.bit_width, b.access)
                    });
                }
            }
            Err(what) => {
                search.malformed.get_or_insert(Problem { at, what });
            }
        }
    }
    search
}

/// The OperationRegion named `name` in `table` (a whole ACPI table, header included).
pub fn find_region(table: &[u8], name: NameSeg) -> Search<Region> {
    let mut search = Search {
        found: None,
        conflict: None,
        malformed: None,
    };
    for at in extended_ops(table, OP_REGION_OP) {
        // Other regions may well have offsets computed at run time: only this one's count.
        let decoded = match region_name(table, at) {
            Ok((found, _)) if found != name => continue,
            Ok((_, rest)) => region(table, at, rest),
            Err(what) => Err(what),
        };
        match decoded {
            Ok(region) => record(&mut search, region, at, |a, b| {
                (a.space, a.offset, a.len) == (b.space, b.offset, b.len)
            }),
            // A region whose name does not decode may be the one looked for: keep why.
            Err(what) => {
                search.malformed.get_or_insert(Problem { at, what });
            }
        }
    }
    search
}

/// The GPE number of an `_Exx` name (xx two upper-case hex digits).
pub fn edge_gpe(name: NameSeg) -> Option<u8> {
    if name[..2] != *b"_E" {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    Some((digit(name[2])? << 4) | digit(name[3])?)
}

/// Sets bit N of `gpes` (bit N % 64 of word N / 64) for every `_EN` method in `table` (a
/// whole ACPI table, header included). MethodOp is a common byte in AML data, so candidates
/// that do not decode are not reported.
pub fn edge_gpe_methods(table: &[u8], gpes: &mut [u64; 4]) {
    gpe_methods(table, None, gpes);
}

/// As [`edge_gpe_methods`], only the methods whose body names `callee` (the method the
/// event runs: QEMU's `\_GPE._E02` is `\_SB.CPUS.CSCN ()`).
pub fn edge_gpe_methods_calling(table: &[u8], callee: NameSeg, gpes: &mut [u64; 4]) {
    gpe_methods(table, Some(callee), gpes);
}

fn gpe_methods(table: &[u8], callee: Option<NameSeg>, gpes: &mut [u64; 4]) {
    for at in (TABLE_HEADER..table.len()).filter(|&i| table[i] == METHOD_OP) {
        let Ok((end, name_at)) = package(table, at + 1) else {
            continue;
        };
        if let Ok((Some(name), taken)) = name_string(&table[..end], name_at) {
            let body = table.get(name_at + taken..end).unwrap_or_default();
            let calls = callee.is_none_or(|c| body.windows(4).any(|w| w == c));
            if let (Some(gpe), true) = (edge_gpe(name), calls) {
                gpes[usize::from(gpe / 64)] |= 1 << (gpe % 64);
            }
        }
    }
}

/// NameOp: `Name (NAME, object)`.
const NAME_OP: u8 = 0x08;

/// The integer constant of a `Name (name, value)` definition in `table` (a whole ACPI table,
/// header included): QEMU's MDNR, the number of memory slots. NameOp is a common byte in AML
/// data, so only candidates with this name count; one whose value is not an integer constant
/// is kept as the reason the name was not found.
pub fn find_integer_name(table: &[u8], name: NameSeg) -> Search<u64> {
    let mut search = Search {
        found: None,
        conflict: None,
        malformed: None,
    };
    for at in (TABLE_HEADER..table.len()).filter(|&i| table[i] == NAME_OP) {
        let Ok((Some(found), taken)) = name_string(table, at + 1) else {
            continue;
        };
        if found != name {
            continue;
        }
        let mut i = at + 1 + taken;
        match integer(table, &mut i) {
            Ok(value) => record(&mut search, value, at, |a, b| a == b),
            Err(what) => {
                search.malformed.get_or_insert(Problem { at, what });
            }
        }
    }
    search
}
