//! QEMU's rule for the names clients give things (job ids, bitmap-migration node
//! aliases): its id_wellformed.

/// A letter first, then letters, digits, '-', '.', '_'.
pub fn well_formed(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
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
