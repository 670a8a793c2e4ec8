//! QEMU's rule for the names clients give things (job ids, bitmap-migration node
//! aliases): its id_wellformed; and its UUID syntax (-uuid).

/// A letter first, then letters, digits, '-', '.', '_'.
pub fn well_formed(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// QEMU's qemu_uuid_parse: 8-4-4-4-12 hex digits.
pub fn valid_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_rule() {
        for good in ["a", "a1", "a.b-c_d", "Z9"] {
            assert!(well_formed(good), "{good}");
        }
        for bad in ["", "1a", "_a", "a b", "é", "a/b"] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
