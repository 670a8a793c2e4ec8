//! Finds `Name(\_S5_, Package(){SLP_TYPa, SLP_TYPb, ...})` in the DSDT's AML byte code and
//! decodes the two sleep-type values needed for soft-off. This is a pattern match, not an AML
//! interpreter: a `_S5_` that is computed by a method is reported as unsupported.

const NAME_OP: u8 = 0x08;
const PACKAGE_OP: u8 = 0x12;
const ROOT_CHAR: u8 = b'\\';

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SleepTypes {
    pub a: u8,
    pub b: u8,
}

#[derive(Clone, Copy, Debug)]
pub enum S5Error {
    NotFound,
    NotAPackage,
    Truncated,
    UnsupportedElement,
    OutOfRange,
}

impl S5Error {
    pub fn describe(self) -> &'static str {
        match self {
            S5Error::NotFound => "no Name(_S5_) in the DSDT",
            S5Error::NotAPackage => "_S5_ is not a package",
            S5Error::Truncated => "_S5_ package truncated",
            S5Error::UnsupportedElement => "_S5_ element is not an integer constant",
            S5Error::OutOfRange => "_S5_ sleep type does not fit in 3 bits",
        }
    }
}

/// Decodes one integer constant (ZeroOp, OneOp, OnesOp, Byte/Word/DWord/QWordPrefix).
fn integer(aml: &[u8], at: &mut usize) -> Result<u64, S5Error> {
    let op = *aml.get(*at).ok_or(S5Error::Truncated)?;
    *at += 1;
    let size = match op {
        0x00 => return Ok(0),
        0x01 => return Ok(1),
        0xff => return Ok(u64::MAX),
        0x0a => 1,
        0x0b => 2,
        0x0c => 4,
        0x0e => 8,
        _ => return Err(S5Error::UnsupportedElement),
    };
    let bytes = aml.get(*at..*at + size).ok_or(S5Error::Truncated)?;
    *at += size;
    Ok(bytes
        .iter()
        .rev()
        .fold(0, |acc, &b| (acc << 8) | u64::from(b)))
}

fn sleep_type(value: u64) -> Result<u8, S5Error> {
    u8::try_from(value)
        .ok()
        .filter(|&v| v <= 7)
        .ok_or(S5Error::OutOfRange)
}

/// Position of the next "_S5_" at or after `from`. Scans for its '5' eight bytes at a time
/// (SWAR zero-byte test on `word ^ '5'*8`) and verifies candidates: a byte-by-byte window
/// search over a q35-sized DSDT costs tens of milliseconds in emulated ring 0.
fn next_s5_name(aml: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const KEY: u64 = b'5' as u64 * ONES;
    let matches_at = |name_at: usize| aml.get(name_at..name_at + 4) == Some(b"_S5_".as_slice());
    let mut at = from + 2; // where the '5' of a match at `from` would be
    while at + 8 <= aml.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&aml[at..at + 8]);
        let x = u64::from_le_bytes(word) ^ KEY;
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            if let Some(k) = (at..at + 8).find(|&k| matches_at(k - 2)) {
                return Some(k - 2);
            }
        }
        at += 8;
    }
    (at..aml.len()).find(|&k| matches_at(k - 2)).map(|k| k - 2)
}

/// `aml` is the DSDT body (after the 36-byte header).
pub fn find_s5(aml: &[u8]) -> Result<SleepTypes, S5Error> {
    let mut search = 0;
    while let Some(name_at) = next_s5_name(aml, search) {
        search = name_at + 1;
        // A definition: NameOp, optionally a root prefix, then the name.
        let is_definition = match name_at {
            0 => false,
            1 => aml[0] == NAME_OP,
            _ => {
                aml[name_at - 1] == NAME_OP
                    || (aml[name_at - 1] == ROOT_CHAR && aml[name_at - 2] == NAME_OP)
            }
        };
        if !is_definition {
            continue;
        }
        let mut at = name_at + 4;
        if aml.get(at) != Some(&PACKAGE_OP) {
            return Err(S5Error::NotAPackage);
        }
        at += 1;
        // PkgLength: bits 7:6 of the lead byte count the bytes that follow it.
        let lead = *aml.get(at).ok_or(S5Error::Truncated)?;
        at += 1 + usize::from(lead >> 6);
        let count = *aml.get(at).ok_or(S5Error::Truncated)?;
        at += 1;
        if count == 0 {
            return Err(S5Error::Truncated);
        }
        let a = sleep_type(integer(aml, &mut at)?)?;
        let b = if count >= 2 {
            sleep_type(integer(aml, &mut at)?)?
        } else {
            0
        };
        return Ok(SleepTypes { a, b });
    }
    Err(S5Error::NotFound)
}
