//! What the unit tests share: guest pages of known content.

use crate::stream::PAGE;

/// A page that does not deflate: xorshift bytes from `seed`.
pub fn noise(seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..PAGE)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}
