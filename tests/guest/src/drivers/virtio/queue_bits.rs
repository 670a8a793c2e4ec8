//! One bit per queue entry (queues have at most 256 entries): which request slots are in
//! flight, which receive buffers are posted, which transmit slots are free.

#[derive(Clone, Copy, Default)]
pub struct QueueBits([u64; 4]);

impl QueueBits {
    pub fn get(&self, i: u16) -> bool {
        self.0[usize::from(i / 64)] & (1 << (i % 64)) != 0
    }

    pub fn set(&mut self, i: u16, on: bool) {
        let word = &mut self.0[usize::from(i / 64)];
        if on {
            *word |= 1 << (i % 64);
        } else {
            *word &= !(1 << (i % 64));
        }
    }

    /// The lowest set bit, if any.
    pub fn first(&self) -> Option<u16> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, &word)| word != 0)
            .map(|(i, &word)| i as u16 * 64 + word.trailing_zeros() as u16)
    }
}
