//! The line editor of an HMP monitor, as QEMU 7.2's util/readline.c: bytes typed go into
//! a line that is echoed back redrawn with the same escape sequences QEMU writes (so a
//! terminal or a tool that reads QEMU's echo sees the same bytes), with backspace, the
//! cursor keys, home/end/delete, Ctrl-A/E/D/W and a history of QEMU's size. Enter (CR or
//! LF, each on its own) ends the line. Tab completion and Ctrl-L are not done: those
//! bytes are ignored.

use std::collections::VecDeque;

/// QEMU's READLINE_CMD_BUF_SIZE: a line holds one less.
const LINE_MAX: usize = 4096 - 1;
/// QEMU's READLINE_MAX_CMDS.
const HISTORY_MAX: usize = 64;

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Esc,
    /// After ESC [ (or 0x9b), with the number so far.
    Csi(u32),
    /// After ESC O.
    Ss3,
}

#[derive(Default)]
pub struct LineEditor {
    line: Vec<u8>,
    cursor: usize,
    /// What the terminal shows (QEMU's last_cmd_buf and its index).
    shown: Vec<u8>,
    shown_cursor: usize,
    escape: Escape,
    history: VecDeque<Vec<u8>>,
    /// The history entry shown, while going through it.
    recalled: Option<usize>,
}

impl LineEditor {
    /// Takes one byte; what to echo is appended to `echo`; a finished line is returned.
    pub fn feed(&mut self, byte: u8, echo: &mut Vec<u8>) -> Option<String> {
        let mut done = None;
        match self.escape {
            Escape::None => match byte {
                1 => self.cursor = 0,
                4 => self.delete(),
                5 => self.cursor = self.line.len(),
                10 | 13 => done = Some(self.enter(echo)),
                14 => self.history_down(),
                16 => self.history_up(),
                23 => self.delete_word(),
                27 => self.escape = Escape::Esc,
                8 | 127 => self.backspace(),
                155 => self.escape = Escape::Csi(0),
                b if b >= 32 => self.insert(b),
                _ => {}
            },
            Escape::Esc => {
                self.escape = match byte {
                    b'[' => Escape::Csi(0),
                    b'O' => Escape::Ss3,
                    _ => Escape::None,
                }
            }
            Escape::Csi(n) => {
                self.escape = Escape::None;
                match byte {
                    b'A' | b'F' => self.history_up(),
                    b'B' | b'E' => self.history_down(),
                    b'C' => self.cursor = (self.cursor + 1).min(self.line.len()),
                    b'D' => self.cursor = self.cursor.saturating_sub(1),
                    b'0'..=b'9' => {
                        let digit = u32::from(byte - b'0');
                        self.escape = Escape::Csi(n.saturating_mul(10).saturating_add(digit));
                    }
                    b'~' => match n {
                        1 => self.cursor = 0,
                        3 => self.delete(),
                        4 => self.cursor = self.line.len(),
                        _ => {}
                    },
                    _ => {}
                }
            }
            Escape::Ss3 => {
                self.escape = Escape::None;
                match byte {
                    b'F' => self.cursor = self.line.len(),
                    b'H' => self.cursor = 0,
                    _ => {}
                }
            }
        }
        self.redraw(echo);
        done
    }

    fn insert(&mut self, b: u8) {
        if self.line.len() < LINE_MAX {
            self.line.insert(self.cursor, b);
            self.cursor += 1;
        }
    }

    fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.line.remove(self.cursor);
        }
    }

    fn delete(&mut self) {
        if self.cursor < self.line.len() {
            self.line.remove(self.cursor);
        }
    }

    /// Ctrl-W, as QEMU's readline_backword: back over spaces, then to just after the
    /// space before the word (or the line's start).
    fn delete_word(&mut self) {
        if self.cursor == 0 {
            return;
        }
        let space = |b: u8| b.is_ascii_whitespace() || b == 0x0b;
        let mut start = self.cursor - 1;
        while start > 0 && space(self.line[start]) {
            start -= 1;
        }
        while start > 0 {
            if space(self.line[start]) {
                start += 1;
                break;
            }
            start -= 1;
        }
        self.line.drain(start..self.cursor);
        self.cursor = start;
    }

    fn history_up(&mut self) {
        let at = match self.recalled {
            None if self.history.is_empty() => return,
            None => self.history.len() - 1,
            Some(0) => return,
            Some(i) => i - 1,
        };
        self.recall(Some(at));
    }

    fn history_down(&mut self) {
        match self.recalled {
            None => {}
            Some(i) if i + 1 < self.history.len() => self.recall(Some(i + 1)),
            Some(_) => self.recall(None),
        }
    }

    fn recall(&mut self, at: Option<usize>) {
        self.recalled = at;
        self.line = at
            .and_then(|i| self.history.get(i).cloned())
            .unwrap_or_default();
        self.cursor = self.line.len();
    }

    /// The line ends: it joins the history (once: an older copy moves to the end) and
    /// the terminal goes to a new line.
    fn enter(&mut self, echo: &mut Vec<u8>) -> String {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.history.retain(|h| *h != line);
            if self.history.len() >= HISTORY_MAX {
                self.history.pop_front();
            }
            self.history.push_back(line.clone());
        }
        self.recalled = None;
        self.cursor = 0;
        self.shown.clear();
        self.shown_cursor = 0;
        echo.extend_from_slice(b"\r\n");
        String::from_utf8_lossy(&line).into_owned()
    }

    /// QEMU's readline_update: back to the start of what is shown, the whole line, clear
    /// to its end; then the cursor moved to its place.
    fn redraw(&mut self, echo: &mut Vec<u8>) {
        if self.line != self.shown {
            for _ in 0..self.shown_cursor {
                echo.extend_from_slice(b"\x1b[D");
            }
            echo.extend_from_slice(&self.line);
            echo.extend_from_slice(b"\x1b[K");
            self.shown.clone_from(&self.line);
            self.shown_cursor = self.line.len();
        }
        if self.cursor != self.shown_cursor {
            let step: &[u8] = if self.cursor > self.shown_cursor {
                b"\x1b[C"
            } else {
                b"\x1b[D"
            };
            for _ in 0..self.cursor.abs_diff(self.shown_cursor) {
                echo.extend_from_slice(step);
            }
            self.shown_cursor = self.cursor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(e: &mut LineEditor, bytes: &[u8]) -> (Vec<u8>, Vec<String>) {
        let mut echo = Vec::new();
        let lines = bytes.iter().filter_map(|b| e.feed(*b, &mut echo)).collect();
        (echo, lines)
    }

    #[test]
    fn echo_and_lines_are_qemus_bytes() {
        let mut e = LineEditor::default();
        // Bytes QEMU 7.2 wrote back for "in" and Enter.
        let (echo, lines) = typed(&mut e, b"in\n");
        assert_eq!(echo, b"i\x1b[K\x1b[Din\x1b[K\r\n");
        assert_eq!(lines, ["in"]);
        // A backspace redraws the line (QEMU's bytes for "infx", DEL, then the rest).
        let (echo, lines) = typed(&mut e, b"infx\x7fo name\r");
        let want = b"i\x1b[K\x1b[Din\x1b[K\x1b[D\x1b[Dinf\x1b[K\x1b[D\x1b[D\x1b[Dinfx\x1b[K\
\x1b[D\x1b[D\x1b[D\x1b[Dinf\x1b[K\x1b[D\x1b[D\x1b[Dinfo\x1b[K\x1b[D\x1b[D\x1b[D\x1b[Dinfo \x1b[K\
\x1b[D\x1b[D\x1b[D\x1b[D\x1b[Dinfo n\x1b[K\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[Dinfo na\x1b[K\
\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[Dinfo nam\x1b[K\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\
\x1b[Dinfo name\x1b[K\r\n";
        assert_eq!(
            String::from_utf8_lossy(&echo),
            String::from_utf8_lossy(want)
        );
        assert_eq!(lines, ["info name"]);
        // CR LF is two lines, the second empty (QEMU runs both).
        let (_, lines) = typed(&mut e, b"x\r\n");
        assert_eq!(lines, ["x", ""]);
    }

    #[test]
    fn cursor_keys_history_and_bounds() {
        let mut e = LineEditor::default();
        // Left twice, insert, Home, Delete, End, Ctrl-W (which takes a leading space
        // with the only word, as QEMU's).
        let (_, lines) = typed(&mut e, b"abcd\x1b[D\x1b[DX\x1b[1~\x1b[3~\x05 e\x17\n");
        assert_eq!(lines, ["bXcd "]);
        let (_, lines) = typed(&mut e, b" ab\x17\n");
        assert_eq!(lines, [""]);
        typed(&mut e, b"one\ntwo\n");
        // Up twice recalls "one", which moves to the history's end (as QEMU's);
        // then up twice is "two", down once "one"; Ctrl-P, Ctrl-N past the end is empty.
        let (_, lines) = typed(&mut e, b"\x1b[A\x1b[A\n\x1b[A\x1b[A\x1b[B\n\x10\x0e\x0e\n");
        assert_eq!(lines, ["one", "one", ""]);
        // A line holds at most QEMU's 4095 bytes; the history 64 lines.
        let long = vec![b'a'; 5000];
        let (_, lines) = typed(&mut e, &[&long[..], b"\n"].concat());
        assert_eq!(lines[0].len(), LINE_MAX);
        for i in 0..100 {
            typed(&mut e, format!("c{i}\n").as_bytes());
        }
        assert_eq!(e.history.len(), HISTORY_MAX);
        // Other control bytes and unknown escapes are ignored.
        let (_, lines) = typed(&mut e, b"\x09\x0c\x1bZ\x1b[Zok\n");
        assert_eq!(lines, ["ok"]);
    }
}
