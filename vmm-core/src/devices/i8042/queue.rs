//! A PS/2 device's output toward the controller: a small buffer, as a real keyboard's or
//! mouse's, that drops what does not fit. The keyboard's command replies go ahead of the
//! scancodes waiting (a driver reads the answer to its command next) and a new command
//! drops the replies to the last one that were not read.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The bytes a PS/2 device holds (QEMU's PS2_QUEUE_SIZE, what the protocol asks for).
pub const CAPACITY: usize = 16;
/// Room kept beyond it for a keyboard command's replies (at most 3 bytes each).
const REPLY_ROOM: usize = 8;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ps2Queue {
    replies: VecDeque<u8>,
    data: VecDeque<u8>,
}

impl Ps2Queue {
    pub fn len(&self) -> usize {
        self.replies.len() + self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Room for `n` more data bytes.
    pub fn has_room(&self, n: usize) -> bool {
        self.len() + n <= CAPACITY
    }

    /// Queues `bytes` as data, all or none (a packet is never cut); false: dropped.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if !self.has_room(bytes.len()) {
            return false;
        }
        self.data.extend(bytes);
        true
    }

    /// The replies to a command, ahead of the data (those to an earlier command go).
    pub fn reply(&mut self, bytes: &[u8]) {
        self.replies.clear();
        if self.replies.len() + bytes.len() <= REPLY_ROOM {
            self.replies.extend(bytes);
        }
    }

    /// A command arrived: unread replies to the last one go.
    pub fn drop_replies(&mut self) {
        self.replies.clear();
    }

    pub fn pop(&mut self) -> Option<u8> {
        self.replies.pop_front().or_else(|| self.data.pop_front())
    }

    pub fn clear(&mut self) {
        self.replies.clear();
        self.data.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_go_first_and_data_is_bounded() {
        let mut q = Ps2Queue::default();
        assert!(q.push(&[1, 2]));
        q.reply(&[0xfa]);
        assert_eq!(q.pop(), Some(0xfa));
        assert_eq!(q.pop(), Some(1));
        assert!(q.push(&[0; 15]));
        // 16 held: a 3-byte packet does not fit, and is not cut.
        assert!(!q.push(&[7, 8, 9]));
        assert_eq!(q.len(), 16);
        q.reply(&[0xfa, 0xaa]);
        q.reply(&[0xfe]);
        assert_eq!(q.pop(), Some(0xfe));
        assert_eq!(q.pop(), Some(2));
    }
}
